"""The batch job never damages a file it should not touch, and never mixes two runs.

No Ray here: `mapreduce.engine.open_engine` is replaced by a fake engine that "summarizes"
at once, so the job's path checks, locking, setup fingerprint and resume logic are tested
on their own in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest

import mapreduce.engine as engine_module
from core.flags import config_from_args
from core.fingerprint import settings_hash
from mapreduce.batch import build_parser, main as batch_main
from mapreduce.corpus import CorpusError, Document, iter_rows, output_lock
from mapreduce.engine import DocumentResult

CORPUS = [{"id": "a", "document": "first text"}, {"id": "b", "document": "second text"}]


FAKE_RUNTIME = {"device": "cpu", "dtype": "float32"}


class _FakeEngine:
    runtime = FAKE_RUNTIME

    def run(self, docs, token_counts=None):
        for doc_id, text in docs:
            yield DocumentResult(doc_id, summary=f"summary of {doc_id}", tokens={"chunks": 1},
                                 timings={"total_s": 0.1})


@pytest.fixture
def engine_opens(monkeypatch) -> list:
    """Every open_engine call, served by a fake engine: no Ray, no model."""
    calls: list = []

    @contextmanager
    def fake_open_engine(cfg, on_progress=None, say=None, chunker=None):
        calls.append(cfg)
        yield _FakeEngine()

    monkeypatch.setattr(engine_module, "open_engine", fake_open_engine)
    return calls


def _argv(inp: Path, out: Path, *extra: str) -> list[str]:
    return ["--input", str(inp), "--output", str(out), "--no-progress", *extra]


def _setup(*extra: str) -> str:
    return settings_hash(config_from_args(build_parser().parse_args(_argv(Path("i"), Path("o"), *extra))))


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ok_row(doc_id: str, setup: str | None, runtime: dict = FAKE_RUNTIME) -> str:
    row = {"id": doc_id, "status": "ok", "summary": "s", "error": None, "line": 1, "runtime": runtime}
    if setup is not None:
        row["setup"] = setup
    return json.dumps(row) + "\n"


@contextmanager
def _deadline(seconds: int):
    """Fail, rather than hang, if the job opens a FIFO and blocks on it."""

    def expire(signum, frame):
        raise TimeoutError(f"blocked for {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _refused(code: int, capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: "), err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


# --- 1. --output is the input -------------------------------------------------------------


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused(tmp_path, capsys, engine_opens, how):
    inp = _corpus(tmp_path)
    before = inp.read_bytes()
    out = inp if how == "same path" else tmp_path / "out.jsonl"
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hard link":
        os.link(inp, out)
    _refused(batch_main(_argv(inp, out)), capsys, "same file as --input")
    assert inp.read_bytes() == before and engine_opens == []


def test_output_inside_an_input_directory_is_refused(tmp_path, capsys, engine_opens):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "one.txt").write_text("some text")
    _refused(batch_main(_argv(folder, folder / "out.txt")), capsys, "inside the input directory")
    assert sorted(p.name for p in folder.iterdir()) == ["one.txt"]


# --- 2. an existing file that is not a batch output ---------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "My notes.\nDo not lose them.\n",
        "one line of prose without a newline",
        "".join(json.dumps(r) + "\n" for r in CORPUS),  # an input corpus, not results
        _ok_row("a", "SETUP") + "prose after a result row\n",
        _ok_row("a", "SETUP") + '{"id": "b", "sta\n' + _ok_row("c", "SETUP"),  # a broken line in the middle
    ],
    ids=["prose", "prose-one-line", "input-rows", "rows-then-prose", "broken-middle-line"],
)
def test_existing_file_that_is_not_a_batch_output_is_refused(tmp_path, capsys, engine_opens, text):
    inp, out = _corpus(tmp_path), tmp_path / "notes.txt"
    text = text.replace("SETUP", _setup())  # rows this very setup made, bar the foreign line
    out.write_text(text)
    _refused(batch_main(_argv(inp, out)), capsys, str(out), "not a batch output")
    assert out.read_text() == text and engine_opens == []


def test_empty_output_and_a_cut_short_last_line_are_resumed(tmp_path, capsys, engine_opens):
    inp, out = _corpus(tmp_path), tmp_path / "out.jsonl"
    out.write_text("")
    assert batch_main(_argv(inp, out)) == 0
    assert [r["id"] for r in _rows(out)] == ["a", "b"]
    out.write_text(_ok_row("a", _setup()) + '{"id": "b", "status": "o')  # a crash mid-write
    assert batch_main(_argv(inp, out)) == 0
    assert sorted(r["id"] for r in _rows(out)) == ["a", "b"]
    assert "1 already done" in capsys.readouterr().err


# --- 3. devices, FIFOs, directories, symlinks ---------------------------------------------


def test_output_fifo_directory_and_device_are_refused(tmp_path, capsys, engine_opens):
    inp = _corpus(tmp_path)
    fifo, folder = tmp_path / "fifo", tmp_path / "dir"
    os.mkfifo(fifo)
    folder.mkdir()
    with _deadline(10):
        _refused(batch_main(_argv(inp, fifo)), capsys, "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    _refused(batch_main(_argv(inp, folder)), capsys, "directory")
    assert folder.is_dir() and list(folder.iterdir()) == []
    if os.geteuid() == 0:
        null = tmp_path / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        _refused(batch_main(_argv(inp, null)), capsys, "not a regular file")
        assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert engine_opens == []


def test_output_symlink_is_refused(tmp_path, capsys, engine_opens):
    inp, real, link = _corpus(tmp_path), tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text(_ok_row("a", _setup()))
    link.symlink_to(real)
    _refused(batch_main(_argv(inp, link)), capsys, "symlink", "real path", str(real))
    assert link.is_symlink() and real.read_text() == _ok_row("a", _setup())


# --- 4. two jobs on one output ------------------------------------------------------------


def test_second_job_on_the_same_output_is_refused(tmp_path, capsys, engine_opens):
    inp, out = _corpus(tmp_path), tmp_path / "out.jsonl"
    with output_lock(out):
        _refused(batch_main(_argv(inp, out)), capsys, "another job is writing", str(out))
        with pytest.raises(CorpusError, match="another job"):
            with output_lock(out):
                pass
    assert not out.exists() and engine_opens == []
    assert batch_main(_argv(inp, out)) == 0  # released once the first job ends
    assert [r["id"] for r in _rows(out)] == ["a", "b"]


# --- 5. setup fingerprint -----------------------------------------------------------------


def test_every_row_records_the_setup(tmp_path, engine_opens):
    inp, out = _corpus(tmp_path), tmp_path / "out.jsonl"
    with inp.open("a") as f:
        f.write('{"id": "broken", \n')
    assert batch_main(_argv(inp, out)) == 1  # one bad row
    rows = _rows(out)
    assert len(rows) == 3 and {r["setup"] for r in rows} == {_setup()}


def test_rerun_with_other_settings_is_refused(tmp_path, capsys, engine_opens):
    inp, out = _corpus(tmp_path), tmp_path / "out.jsonl"
    assert batch_main(_argv(inp, out)) == 0
    before = out.read_bytes()
    capsys.readouterr()
    for extra in (["--max-new-tokens", "7"], ["--chunk-size", "900"], ["--adapter", str(tmp_path)],
                  ["--summary-words", "77"], ["--min-support", "0.9"], ["--dtype", "bfloat16"]):
        _refused(batch_main(_argv(inp, out, *extra)), capsys, "other settings", "--output")
        assert out.read_bytes() == before
    # batching and scheduling do not change outputs: resumed, nothing left to do
    assert batch_main(_argv(inp, out, "--generation-batch-size", "3", "--num-workers", "4")) == 0
    assert "2 already done" in capsys.readouterr().err


def test_old_output_without_setup_is_refused(tmp_path, capsys, engine_opens):
    inp, out = _corpus(tmp_path), tmp_path / "out.jsonl"
    out.write_text(_ok_row("a", None))
    _refused(batch_main(_argv(inp, out)), capsys, "other settings")
    assert out.read_text() == _ok_row("a", None) and engine_opens == []


def test_rows_made_with_another_resolved_dtype_are_refused_once_the_workers_say(tmp_path, capsys, engine_opens):
    """dtype auto: bf16 rows from one machine, fp32 workers on this one; the config alone cannot tell."""
    inp, out = _corpus(tmp_path), tmp_path / "out.jsonl"
    out.write_text(_ok_row("a", _setup(), {"device": "cpu", "dtype": "bfloat16"}))
    before = out.read_bytes()
    line = _refused(batch_main(_argv(inp, out)), capsys, "made with bfloat16 on cpu", "resolves to float32 on cpu",
                    "pass --dtype bfloat16", "another --output")
    assert out.read_bytes() == before and len(engine_opens) == 1, line
    fresh = tmp_path / "fresh.jsonl"
    assert batch_main(_argv(inp, fresh)) == 0
    assert [r["runtime"] for r in _rows(fresh)] == [FAKE_RUNTIME, FAKE_RUNTIME]  # recorded on every row


def test_a_write_error_on_the_output_is_one_line_with_the_resume_hint(tmp_path, capsys, engine_opens, monkeypatch):
    import mapreduce.corpus as corpus

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    inp, out = _corpus(tmp_path), tmp_path / "out.jsonl"
    monkeypatch.setattr(corpus.os, "fsync", full_disk)
    line = _refused(batch_main(_argv(inp, out)), capsys, f"cannot write {out}: No space left on device",
                    "rerun the same command to resume")
    assert "Traceback" not in line


# --- 6. directory ids ---------------------------------------------------------------------


def test_directory_ids_keep_their_suffix(tmp_path, engine_opens):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.txt").write_text("text one")
    (folder / "x.md").write_text("text two")
    (folder / "sub" / "two.txt").write_text("text three")
    rows = list(iter_rows(folder))
    assert all(isinstance(r, Document) for r in rows)
    assert [r.id for r in rows] == ["sub/two.txt", "x.md", "x.txt"]
    out = tmp_path / "out.jsonl"
    assert batch_main(_argv(folder, out)) == 0
    assert sorted(r["id"] for r in _rows(out)) == ["sub/two.txt", "x.md", "x.txt"]


# --- 7. nothing left to do ----------------------------------------------------------------


def test_rerun_with_nothing_left_starts_no_engine(tmp_path, capsys, engine_opens, monkeypatch):
    inp, out = _corpus(tmp_path), tmp_path / "out.jsonl"
    assert batch_main(_argv(inp, out)) == 0 and len(engine_opens) == 1
    capsys.readouterr()

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine (Ray, the model) was started with nothing to do")

    monkeypatch.setattr(engine_module, "open_engine", no_engine)
    assert batch_main(_argv(inp, out)) == 0
    closing = capsys.readouterr().err.strip().splitlines()[-1]
    assert closing.startswith("done: 0 written") and "2 already done" in closing
    with inp.open("a") as f:  # only a bad row left: written as an error, still no engine
        f.write("not json\n")
    assert batch_main(_argv(inp, out)) == 1
    assert _rows(out)[-1]["status"] == "error" and _rows(out)[-1]["line"] == 3


# --- 8. a line that is not UTF-8 ----------------------------------------------------------


def test_one_line_of_invalid_utf8_is_an_error_row_and_the_job_goes_on(tmp_path, capsys, engine_opens):
    inp, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(b'{"id": "a", "document": "first text"}\n{"id": "b", "document": "caf\xe9"}\n'
                    b'{"id": "c", "document": "third text"}\n')
    assert batch_main(_argv(inp, out)) == 1  # one document failed
    rows = {r.get("id") or r["line"]: r for r in _rows(out)}
    assert rows["a"]["status"] == rows["c"]["status"] == "ok"
    assert rows[2]["status"] == "error" and rows[2]["line"] == 2 and "not UTF-8" in rows[2]["error"]
    assert "done: 3 written (2 ok, 1 errors)" in capsys.readouterr().err
