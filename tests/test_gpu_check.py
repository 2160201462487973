"""bench/gpu_check: its dry run parses every argv and config the GPU checks use, on any machine."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import CNNDM_TRAIN, QWEN_TOKENIZER, REPO

CHECKS = ("bf16-lora", "qlora-4bit", "generate", "ray-half-gpu", "mapreduce-cli")


def test_dry_run_parses_every_check_and_exits_0():
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--tokenizer", str(QWEN_TOKENIZER),
                           "--data", str(CNNDM_TRAIN)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    for name in CHECKS:
        assert [ln for ln in lines if ln.startswith(f"DRY {name} ")], (name, proc.stdout)
    assert not [ln for ln in lines if ln.startswith("FAIL")]
    assert lines[-1] == f"{len(CHECKS)} parsed, 0 failed"
    assert "training.train argv parsed" in proc.stdout and "mapreduce.cli argv parsed" in proc.stdout


def test_a_check_that_exits_is_reported_and_the_rest_still_run(monkeypatch, capsys):
    """argparse's SystemExit is no Exception: it must not end the run (G-1)."""
    from bench import gpu_check

    real = gpu_check.train_args
    monkeypatch.setattr(gpu_check, "train_args", lambda *a: real(*a) + ["--max-new-tokens", "32"])
    code = gpu_check.main(["--dry-run", "--tokenizer", str(QWEN_TOKENIZER), "--data", str(CNNDM_TRAIN)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    fails = [ln for ln in out if ln.startswith("FAIL")]
    assert [ln.split()[1] for ln in fails] == ["bf16-lora", "qlora-4bit"]
    assert all("unrecognized arguments: --max-new-tokens 32" in ln for ln in fails)
    assert [ln.split()[1] for ln in out if ln.startswith("DRY ") and "cuda" not in ln.split()[1]] == list(CHECKS[2:])
    assert out[-1] == "3 parsed, 2 failed"

    def boom(ctx):
        raise SystemExit(3)

    monkeypatch.setattr(gpu_check, "CHECKS", (gpu_check.check("exits")(boom), *gpu_check.CHECKS[2:3]))
    assert gpu_check.main(["--dry-run", "--tokenizer", str(QWEN_TOKENIZER), "--data", str(CNNDM_TRAIN)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith("FAIL exits SystemExit: 3") and out[-2].startswith("DRY generate ")


def test_a_missing_tokenizer_is_one_line(tmp_path, capsys):
    from bench import gpu_check

    assert gpu_check.main(["--dry-run", "--tokenizer", str(tmp_path / "none"), "--data", str(CNNDM_TRAIN)]) == 1
    assert capsys.readouterr().out.strip() == f"FAIL inputs --tokenizer not found: {tmp_path / 'none'}"
