"""`python -m mapreduce.cli summarize`: bad input is one clear line, before Ray or a model starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import LONGDOCS, REPO

CLI = [sys.executable, "-m", "mapreduce.cli", "summarize"]


def run_cli(args, stdin: bytes | None = None, timeout: float = 120):
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        CLI + [str(a) for a in args], cwd=REPO, env=env, input=stdin, capture_output=True, timeout=timeout
    )


def assert_one_error_line(proc, *fragments):
    stderr = proc.stderr.decode()
    lines = stderr.strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == b""


@pytest.fixture()
def good_file(tmp_path):
    path = tmp_path / "good.txt"
    path.write_text("A short but perfectly fine document.\n")
    return path


def test_missing_file(tmp_path):
    assert_one_error_line(run_cli([tmp_path / "nope.txt"]), "nope.txt", "no such file")


def test_missing_file_among_good_ones(tmp_path, good_file):
    # the good file is not summarized first: all inputs are checked before any work
    assert_one_error_line(run_cli([good_file, tmp_path / "nope.md"]), "nope.md", "no such file")


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("empty.txt", b"", "is empty"),
        ("blank.md", b"  \n\n\t \r\n", "is empty"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("latin1.txt", "Caf\u00e9 cr\u00e8me".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_file_content(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    assert_one_error_line(run_cli([path]), name, fragment)


def test_directory_is_refused(tmp_path):
    assert_one_error_line(run_cli([tmp_path]), "directory")


def test_empty_stdin():
    assert_one_error_line(run_cli(["-"], stdin=b"   \n"), "<stdin>", "is empty")


def test_stdin_twice(good_file):
    assert_one_error_line(run_cli(["-", "-"], stdin=b"text"), "stdin")


def test_bad_config_value(good_file):
    assert_one_error_line(run_cli([good_file, "--chunk-overlap", "5000"]), "chunk_overlap")


def test_chunk_budget_too_big(good_file, tiny_model_dir):
    proc = run_cli([good_file, "--base-model", tiny_model_dir, "--chunk-size", "1990"])
    assert_one_error_line(proc, "chunk_size (1990)", "max_length - max_new_tokens")


def test_missing_base_model_and_adapter(good_file, tiny_model_dir, tmp_path):
    assert_one_error_line(run_cli([good_file, "--base-model", tmp_path / "no-model"]), "not found")
    proc = run_cli([good_file, "--base-model", tiny_model_dir, "--adapter", tmp_path / "no-adapter"])
    assert_one_error_line(proc, "adapter")


def test_help_lists_config_flags():
    proc = run_cli(["--help"])
    out = proc.stdout.decode()
    assert proc.returncode == 0
    for flag in ("--json", "--chunk-size", "--chunk-overlap", "--num-workers", "--num-gpus-per-worker",
                 "--max-new-tokens", "--ray-address", "--base-model", "--adapter", "--config"):
        assert flag in out


def test_summarizer_console_command_dispatches_here(tmp_path):
    from summarizer_cli import main

    with pytest.raises(SystemExit) as exc:
        main(["summarize", "--help"])
    assert exc.value.code == 0
    assert main(["summarize", str(tmp_path / "missing.txt")]) == 2


@pytest.mark.slow
def test_end_to_end_json(tmp_path, tiny_model_dir):
    with open(LONGDOCS) as f:
        text = json.loads(f.readline())["document"][:8000]  # ~2k tokens: a few chunks
    doc = tmp_path / "meeting.md"
    doc.write_text(text)
    proc = run_cli(
        [doc, "--json", "--base-model", tiny_model_dir, "--max-length", "256", "--max-new-tokens", "12",
         "--chunk-size", "200", "--chunk-overlap", "20", "--no-progress"],
        timeout=600,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    out = json.loads(proc.stdout)
    assert out["source"] == str(doc) and out["error"] is None and isinstance(out["summary"], str)
    tree = out["tree"]
    assert len(tree["chunks"]) >= 5 and tree["levels"][0]["name"] == "map"
    assert tree["levels"][-1]["name"] == "final"
    assert tree["chunks"][0]["start"] == 0 and tree["chunks"][-1]["end"] == len(text.rstrip())
    assert "Traceback" not in stderr and "total" in stderr.strip().splitlines()[-1]
    assert len(stderr.strip().splitlines()) <= 5, stderr  # Ray's own logs do not reach the terminal


@pytest.mark.slow
def test_json_stdout_stays_json_after_an_actor_crash(tmp_path, tiny_model_dir):
    """Ray prints `(raylet)` notices on stdout when an actor dies; they must not reach it."""
    from mapreduce.pool import FAULT_ENV

    with open(LONGDOCS) as f:
        text = json.loads(f.readline())["document"][:4000]
    doc = tmp_path / "meeting.md"
    doc.write_text(text)
    marker = tmp_path / "crashed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               **{FAULT_ENV: f"crash-once:{marker}"})
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        CLI + [str(doc), "--json", "--base-model", str(tiny_model_dir), "--max-length", "256", "--max-new-tokens", "8",
               "--chunk-size", "200", "--chunk-overlap", "20", "--no-progress", "--num-workers", "1"],
        cwd=REPO, env=env, capture_output=True, timeout=600,
    )
    assert marker.exists(), "the injected crash never happened"
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = json.loads(proc.stdout)  # nothing but the JSON on stdout
    assert out["error"] is None


def test_oversized_input_is_refused_before_ray(good_file, tiny_model_dir):
    proc = run_cli([good_file, "--base-model", tiny_model_dir, "--max-document-tokens", "3"])
    assert_one_error_line(proc, str(good_file), "above max_document_tokens (3)", "--max-document-tokens 0")


_FAKE_ENGINE = '''
import sys
from contextlib import contextmanager
import mapreduce.engine as engine
from mapreduce.document import DocumentResult

class Chunker:
    def count_tokens(self, text):
        return len(text.split())

class Engine:
    def run(self, docs, token_counts=None):
        for doc_id, text in docs:
            yield DocumentResult(doc_id, summary="A summary.", tokens={"chunks": 1})

@contextmanager
def open_engine(cfg, on_progress=None, say=None, chunker=None):
    yield Engine()

engine.prepare_engine = lambda cfg: Chunker()
engine.open_engine = open_engine
from mapreduce.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_a_full_disk_on_stdout_is_one_line_and_exit_1(good_file):
    """`summarize doc.txt > out.txt` on a full disk: /dev/full as stdout (no model: a fake engine)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", _FAKE_ENGINE, "summarize", str(good_file)], cwd=REPO, env=env,
                              stdout=full, stderr=subprocess.PIPE, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err and "Exception ignored" not in err, err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        "error: cannot write the summaries to stdout: No space left on device"]


def test_each_document_is_counted_once_and_the_count_reaches_the_engine(tmp_path, monkeypatch, capsys):
    from contextlib import contextmanager

    import mapreduce.engine as engine_module
    from mapreduce.cli import main
    from mapreduce.document import DocumentResult

    counted, prepared, seen = [], [], {}

    class Chunker:
        def count_tokens(self, text):
            counted.append(text)
            return len(text.split())

    class Engine:
        def run(self, docs, token_counts=None):
            seen.update(token_counts)
            for doc_id, _ in docs:
                yield DocumentResult(doc_id, summary="s", tokens={"chunks": 1})

    @contextmanager
    def fake_open_engine(cfg, on_progress=None, say=None, chunker=None):
        seen["chunker"] = chunker
        yield Engine()

    monkeypatch.setattr(engine_module, "prepare_engine", lambda cfg: prepared.append(cfg) or Chunker())
    monkeypatch.setattr(engine_module, "open_engine", fake_open_engine)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one two three")
    b.write_text("four five")
    assert main(["summarize", str(a), str(b), "--no-progress"]) == 0
    assert len(prepared) == 1 and isinstance(seen.pop("chunker"), Chunker)  # the engine gets the same chunker
    assert sorted(counted) == ["four five", "one two three"]
    assert seen == {str(a): 3, str(b): 2}
    assert capsys.readouterr().out == f"==> {a} <==\ns\n\n==> {b} <==\ns\n\n"
