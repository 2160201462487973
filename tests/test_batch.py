"""The Ray batch job end to end, with the tiny random Qwen2 on a local cluster.

The tiny model writes gibberish: these tests check the job's bookkeeping (every id exactly
once, bad rows reported with their line, resume, crashes survived), not summary quality.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import CNNDM_TEST, REPO
from mapreduce.batch import main as batch_main
from mapreduce.corpus import BadRow, Document, compact_output, count_rows, iter_rows
from mapreduce.pool import FAULT_ENV

SMALL = [
    "--chunk-size", "120", "--chunk-overlap", "10", "--max-length", "200",
    "--max-new-tokens", "6", "--generation-batch-size", "8",
    "--num-cpus-per-worker", "1", "--no-progress",
]


def _articles(n: int) -> list[dict]:
    rows = []
    with open(CNNDM_TEST) as f:
        for line in f:
            row = json.loads(line)
            rows.append({"id": row["id"], "document": row["article"][:1500]})
            if len(rows) == n:
                return rows
    return rows


def _write_corpus(path: Path, n: int = 20, bad: bool = True) -> tuple[set[str], int]:
    """n good documents plus, if `bad`, 4 bad rows; returns (good ids, bad row count)."""
    rows = _articles(n)
    lines = [json.dumps(r) for r in rows]
    if bad:
        lines.insert(3, '{"id": "broken", "document": ')  # malformed JSON
        lines.insert(7, json.dumps({"id": "empty", "document": "   "}))
        lines.insert(11, json.dumps({"id": "no-text"}))
        lines.insert(15, json.dumps(rows[0]))  # duplicate id
    path.write_text("\n".join(lines) + "\n")
    return {r["id"] for r in rows}, 4 if bad else 0


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _args(model_dir, corpus, out, *extra) -> list[str]:
    return ["--input", str(corpus), "--output", str(out), "--base-model", str(model_dir), *SMALL, *extra]


# --- reading and resuming, no Ray ---------------------------------------------------------


def test_iter_rows_reports_bad_rows_with_line_numbers(tmp_path):
    corpus = tmp_path / "c.jsonl"
    ids, _ = _write_corpus(corpus, n=16)
    rows = list(iter_rows(corpus))
    bad = {r.line: r.error for r in rows if isinstance(r, BadRow)}
    assert sorted(bad) == [4, 8, 12, 16]
    assert "malformed JSON" in bad[4]
    assert "empty text" in bad[8] and "empty text" in bad[12]
    assert "duplicate id" in bad[16] and "line 1" in bad[16]
    docs = [r for r in rows if isinstance(r, Document)]
    assert {d.id for d in docs} == ids and len(docs) == len(ids)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_line_that_is_not_utf8_is_one_bad_row_and_the_rest_is_read(tmp_path, suffix):
    lines = [json.dumps({"id": "a", "document": "first text"}).encode(),
             b'{"id": "b", "document": "caf\xe9 in latin-1"}',
             json.dumps({"id": "c", "document": "third text"}).encode()]
    corpus = tmp_path / f"c{suffix}"
    data = b"\n".join(lines) + b"\n"
    corpus.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    assert count_rows(corpus) == 3
    rows = list(iter_rows(corpus))
    assert [type(r).__name__ for r in rows] == ["Document", "BadRow", "Document"]
    assert rows[1].line == 2 and rows[1].error == "not UTF-8 text (invalid byte at offset 28 of the line)"
    assert [r.id for r in rows if isinstance(r, Document)] == ["a", "c"]


def test_iter_rows_reads_gzip_and_text_dirs(tmp_path):
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"key": 7, "body": "some text"}) + "\n")
    (doc,) = list(iter_rows(gz, id_field="key", text_field="body"))
    assert (doc.id, doc.text, doc.line) == ("7", "some text", 1)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("first document")
    (folder / "b.md").write_text("   ")
    (folder / "c.txt").write_bytes(b"\xff\xfe\x00bin")
    rows = list(iter_rows(folder))
    assert isinstance(rows[0], Document) and rows[0].id == "a.txt"  # ids keep their suffix
    assert isinstance(rows[1], BadRow) and "empty" in rows[1].error
    assert isinstance(rows[2], BadRow) and "UTF-8" in rows[2].error


def test_compact_output_keeps_only_finished_lines(tmp_path):
    out = tmp_path / "out.jsonl"
    row = {"summary": None, "error": None, "line": 1, "setup": "s1"}
    out.write_text(
        json.dumps({"id": "a", **row, "status": "ok", "summary": "x"}) + "\n"
        + json.dumps({"id": "b", **row, "status": "error", "error": "boom"}) + "\n"
        + json.dumps({"id": None, **row, "line": 4, "status": "error"}) + "\n"
        + '{"id": "c", "status": "o'  # cut short by a crash
    )
    assert compact_output(out, "s1") == {"id:a"}
    assert [r["id"] for r in _read(out)] == ["a"]


# --- the job on a local Ray cluster -------------------------------------------------------


@pytest.mark.slow
def test_batch_job_writes_every_id_once_and_reports_bad_rows(tmp_path, tiny_model_dir, capsys):
    corpus, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    ids, n_bad = _write_corpus(corpus, n=20)
    code = batch_main(_args(tiny_model_dir, corpus, out, "--num-workers", "2"))
    assert code == 1  # bad rows are failures: non-zero exit
    records = _read(out)
    ok = [r for r in records if r["status"] == "ok"]
    assert Counter(r["id"] for r in ok) == Counter(ids)
    for r in ok:
        assert r["summary"] is not None and r["line"] >= 1
        assert r["tokens"]["chunks"] >= 1 and r["timings"]["total_s"] > 0
    errors = [r for r in records if r["status"] == "error"]
    assert sorted(r["line"] for r in errors) == [4, 8, 12, 16] and len(errors) == n_bad
    assert all(r["error"] for r in errors)
    closing = capsys.readouterr().err.strip().splitlines()[-1]
    assert closing.startswith("done:") and "20 ok" in closing and "4 errors" in closing

    # a rerun skips everything done and keeps every id exactly once
    assert batch_main(_args(tiny_model_dir, corpus, out)) == 1
    rerun = _read(out)
    assert Counter(r["id"] for r in rerun if r["status"] == "ok") == Counter(ids)
    assert len(rerun) == len(records)
    assert "20 already done" in capsys.readouterr().err


@pytest.mark.slow
def test_batch_job_survives_an_actor_crash(tmp_path, tiny_model_dir, monkeypatch):
    corpus, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    ids, _ = _write_corpus(corpus, n=6, bad=False)
    marker = tmp_path / "crashed"
    monkeypatch.setenv(FAULT_ENV, f"crash-once:{marker}")  # inherited by the local cluster's workers
    assert batch_main(_args(tiny_model_dir, corpus, out, "--num-workers", "1")) == 0
    assert marker.exists(), "the injected crash never happened"
    records = _read(out)
    assert Counter(r["id"] for r in records) == Counter(ids)
    assert all(r["status"] == "ok" for r in records)


@pytest.mark.slow
def test_killed_job_rerun_yields_every_id_exactly_once(tmp_path, tiny_model_dir):
    corpus, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    ids, _ = _write_corpus(corpus, n=20, bad=False)
    cmd = [sys.executable, "-m", "mapreduce.batch", *_args(tiny_model_dir, corpus, out, "--num-workers", "1",
                                                          "--max-docs-in-flight", "2")]
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(_read_lenient(out)) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "job ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, Ray workers included
    proc.wait()
    first = _read_lenient(out)
    assert 3 <= len(first) < len(ids)

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-1000:]
    records = _read(out)
    assert Counter(r["id"] for r in records) == Counter(ids)
    assert all(r["status"] == "ok" for r in records)
    assert f"{len(first)} already done" in rerun.stderr


def _read_lenient(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def test_batch_bad_input_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "mapreduce.batch", "--input", str(tmp_path / "missing.jsonl"),
           "--output", str(tmp_path / "o.jsonl")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: input not found: {tmp_path / 'missing.jsonl'}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_smoke(tmp_path, tiny_model_dir):
    """`ray start --head` + `ray job submit -- python -m mapreduce.batch ...` on this machine."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    assert ray_bin, "the ray CLI is missing"
    corpus, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    ids, _ = _write_corpus(corpus, n=3, bad=False)
    port, dash = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # unix socket paths must stay short
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    # --block: this head dies with its process, so the test never touches another Ray on the
    # machine (`ray stop --force` would stop every Ray cluster of this user)
    head_log = tmp_path / "ray_start.log"
    with open(head_log, "w") as log:
        head = subprocess.Popen(
            [ray_bin, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
             "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={ray_tmp}", "--block"],
            env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    try:
        for _ in range(180):
            if "block forever" in head_log.read_text() or head.poll() is not None:
                break
            time.sleep(1)
        assert head.poll() is None, head_log.read_text()[-2000:]
        cmd = [ray_bin, "job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={REPO}", "--",
               sys.executable, "-m", "mapreduce.batch", *_args(tiny_model_dir, corpus, out, "--num-workers", "1")]
        for _ in range(60):  # the head's job agent takes a while to come up after `ray start`
            submit = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in submit.stderr:
                break
            time.sleep(3)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-3000:]
        assert "succeeded" in submit.stdout
        records = _read(out)
        assert Counter(r["id"] for r in records) == Counter(ids)
        assert all(r["status"] == "ok" for r in records)
    finally:
        head.terminate()
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
