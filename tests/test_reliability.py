"""Hostile-but-realistic inputs from the reliability review: each ends in one line, never a traceback.

Bad config bytes, empty datasets, impossible Ray resources, SIGTERM, resuming a finished
run or with another plan, a torn generations.jsonl, dtype auto on old GPUs, several GPUs
without torchrun. Nothing here starts Ray or trains; the CLI runs stop before any model.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CNNDM_TEST, REPO
from fakes import lose_a_sigterm, run_args

from core.config import ConfigError, load_config
from core.data import DataError, load_rows
from core.errors import first_line
from core.signals import keep_sigterm_handler, sigterm_as_interrupt


@pytest.fixture(autouse=True)
def restore_sigterm():
    """The CLIs' main() installs a SIGTERM handler in this process: put the old one back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- 1. a config file that is not UTF-8 -------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "model:\n  device: cpu  # caf\u00e9\n".encode("latin-1"),  # a latin-1 comment
        bytes(range(256)) * 12,  # 3 kB of binary
    ],
    ids=["latin1", "binary"],
)
def test_config_that_is_not_utf8_is_one_config_error(tmp_path, data):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "not UTF-8" in str(info.value)
    assert "\n" not in str(info.value)


def test_summarize_cli_with_a_binary_config_says_one_line(tmp_path, capsys):
    from mapreduce.cli import main

    config = tmp_path / "bin.yaml"
    config.write_bytes(bytes(range(128, 256)) * 20)
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text to summarize.\n")
    assert main(["summarize", "--config", str(config), str(doc)]) == 1
    assert "not UTF-8" in error_line(capsys)


# --- 2. empty dataset files -------------------------------------------------------------


def test_first_line_of_an_empty_or_blank_message():
    assert first_line(StopIteration()) == "StopIteration"
    assert first_line(ValueError("\n  \nsecond line\nthird")) == "second line"
    assert first_line(OSError("disk full\nmore")) == "disk full"


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"], ids=["empty", "blank-lines"])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_empty_dataset_file_has_no_rows(tmp_path, content, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(gzip.compress(content) if suffix.endswith(".gz") else content)
    with pytest.raises(DataError, match="has no rows"):
        load_rows(str(path), "train")


def test_training_on_an_empty_dataset_is_one_error_line(tiny_model_dir, tmp_path, capsys):
    from training.train import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(run_args(tiny_model_dir, tmp_path / "out", dataset=str(empty))) == 1
    assert "has no rows" in error_line(capsys)


def test_evaluation_on_an_empty_test_file_is_one_error_line(tmp_path, capsys):
    from evaluation.evaluate import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    argv = ["--test-dataset", str(empty), "--systems", "lead3", "--eval-output-dir", str(tmp_path / "eval"),
            "--bertscore-model", "embedded:minilm", "--bertscore-num-layers", "6"]
    assert main(argv) == 1
    assert "has no rows" in error_line(capsys)


# --- 3. Ray resources that Ray would refuse with a traceback ----------------------------


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"num_cpus_per_worker": -1.0}, "num_cpus_per_worker"),
        ({"num_cpus_per_worker": 0.0, "device": "cpu"}, "num_cpus_per_worker"),
        ({"num_gpus_per_worker": -0.5}, "num_gpus_per_worker"),
        ({"num_gpus_per_worker": 1.5}, "num_gpus_per_worker"),
        ({"max_task_retries": -1}, "max_task_retries"),
    ],
)
def test_impossible_worker_resources_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert f"'{key}'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("gpus", [0.0, 0.25, 1.0, 2.0])
def test_possible_worker_resources_are_accepted(gpus):
    cfg = load_config(None, {"num_gpus_per_worker": gpus, "num_cpus_per_worker": 0.0, "device": "auto"})
    assert cfg.mapreduce.num_gpus_per_worker == gpus


def test_summarize_cli_with_negative_cpus_says_one_line(tmp_path, capsys):
    from mapreduce.cli import main

    doc = tmp_path / "doc.txt"
    doc.write_text("Some text to summarize.\n")
    assert main(["summarize", "--num-cpus-per-worker", "-1", str(doc)]) == 1
    assert "num_cpus_per_worker" in error_line(capsys)


def test_worker_resources_for_fractions_and_cpu_device():
    from mapreduce.pool import worker_resources

    cfg = load_config(None, {"num_gpus_per_worker": 0.1})
    assert worker_resources(cfg, {"GPU": 1.0, "CPU": 16.0})[:2] == (10, 0.1)  # 1.0 // 0.1 would give 9
    assert worker_resources(load_config(None), {"GPU": 4.0, "CPU": 16.0})[:2] == (4, 1.0)
    cpu = load_config(None, {"device": "cpu"})  # runs on CPU: must not hold GPUs others could use
    assert worker_resources(cpu, {"GPU": 4.0, "CPU": 16.0}) == (1, 0.0, 1.0)


# --- 4. SIGTERM behaves like Ctrl-C -----------------------------------------------------


def test_sigterm_raises_keyboard_interrupt_and_survives_ray_init_style_overrides():
    assert sigterm_as_interrupt()
    with keep_sigterm_handler():
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))  # what ray.init does
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def test_init_ray_keeps_the_clis_sigterm_handler(monkeypatch):
    """ray.init installs SIGTERM handlers (sys.exit; the node's kill-all): the CLI's must win."""
    import ray

    from mapreduce.pool import init_ray

    def fake_init(**kwargs):
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sigterm_as_interrupt()
    ours = signal.getsignal(signal.SIGTERM)
    assert init_ray(load_config(None)) is True
    assert signal.getsignal(signal.SIGTERM) is ours


def test_keep_sigterm_handler_leaves_the_default_alone():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    replaced = lambda *a: None  # noqa: E731
    with keep_sigterm_handler():
        signal.signal(signal.SIGTERM, replaced)
    assert signal.getsignal(signal.SIGTERM) is replaced


def test_a_sigterm_whose_raise_was_lost_stops_generation_after_that_batch(monkeypatch):
    import core.generation

    calls = []

    def fake_batch(model, tokenizer, prompts, gen):
        calls.append(len(prompts))
        if len(calls) == 1:
            lose_a_sigterm()
        return ["a summary."] * len(prompts)

    monkeypatch.setattr(core.generation, "generate_batch", fake_batch)
    assert sigterm_as_interrupt()
    gen = load_config(None, {"generation_batch_size": 1}).generation
    for run in (core.generation.generate_summaries, core.generation.generate_isolated):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            run(None, None, [[1, 2], [3, 4], [5, 6]], gen)
        assert calls == [1], run.__name__  # stopped after the batch that got the signal
    assert run(None, None, [[1, 2]], gen) == [("a summary.", None)]  # once per signal: the next run goes on


def _sigterm_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    raise AssertionError("SIGTERM did not interrupt")


def test_evaluate_on_sigterm_says_interrupted_and_exits_130(tmp_path, monkeypatch, capsys):
    import evaluation.evaluate as ev

    data = tmp_path / "test.jsonl"
    data.write_text("".join(line for _, line in zip(range(2), CNNDM_TEST.open())))
    monkeypatch.setattr(ev, "generate_all", _sigterm_self)
    argv = ["--test-dataset", str(data), "--systems", "lead3", "--eval-output-dir", str(tmp_path / "eval"),
            "--bertscore-model", "embedded:minilm", "--bertscore-num-layers", "6"]
    assert ev.main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted: finished batches are saved" in err and "Traceback" not in err


def test_train_on_sigterm_outside_the_trainer_says_interrupted(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import training.train as tr

    monkeypatch.setattr(tr, "prepare_data", _sigterm_self)
    assert tr.main(run_args(tiny_model_dir, tmp_path / "out")) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_summarize_cli_on_sigterm_says_interrupted_and_exits_130():
    """The real CLI, blocked reading stdin (before Ray): SIGTERM once its handler is in."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mapreduce.cli", "summarize", "-"], cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _catches_sigterm(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err


# --- 5. resuming a finished run, or with another plan -----------------------------------


def fake_checkpoint(out: Path, step: int, max_steps: int) -> Path:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    return ckpt


def training_config(**values):
    return load_config(None, values).training


def test_resume_of_a_finished_run_trains_nothing(tiny_model_dir, tmp_path, capsys):
    from training.train import main

    out = tmp_path / "run"
    fake_checkpoint(out, 8, 8)
    assert main(run_args(tiny_model_dir, out, max_steps=8, resume=True)) == 0
    err = capsys.readouterr().err
    assert "already finished at step 8: raise --max-steps to train more, or use another --output-dir" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-8"]  # nothing trained or written


def test_resume_with_another_plan_is_refused_for_a_decaying_schedule(tiny_model_dir, tmp_path, capsys):
    from training.train import main

    out = tmp_path / "run"
    fake_checkpoint(out, 4, 8)
    assert main(run_args(tiny_model_dir, out, max_steps=12, lr_scheduler_type="cosine", resume=True)) == 1
    line = error_line(capsys)
    assert "planned for 8 steps" in line and "keep --max-steps 8" in line and "--output-dir" in line


def test_resume_plan_rules(tmp_path):
    from training.resume import RunFinished, TrainError, check_resume_plan

    ckpt = fake_checkpoint(tmp_path / "run", 4, 8)
    cosine, constant = training_config(lr_scheduler_type="cosine"), training_config(lr_scheduler_type="constant")
    check_resume_plan(ckpt, cosine, 8)  # same plan, not finished: go on
    check_resume_plan(ckpt, constant, 12)  # a flat schedule may be extended
    with pytest.raises(TrainError, match="cosine learning-rate schedule"):
        check_resume_plan(ckpt, cosine, 6)
    with pytest.raises(RunFinished, match="already finished at step 4"):
        check_resume_plan(ckpt, constant, 3)
    # an early-stopped run ended (and saved its adapter) at step 6, after its last checkpoint
    (tmp_path / "run" / "train_log.json").write_text(json.dumps([{"step": 6, "finished": True}]))
    with pytest.raises(RunFinished, match="already finished at step 6: a cosine schedule cannot be extended"):
        check_resume_plan(ckpt, cosine, 8)


def test_resume_plan_of_an_epoch_run_is_checked_when_the_trainer_knows_it(tmp_path):
    from training.resume import TrainError, _resume_plan_callback

    ckpt = fake_checkpoint(tmp_path / "run", 4, 8)
    callback = _resume_plan_callback(ckpt, training_config(max_steps=-1, lr_scheduler_type="linear"))
    callback.on_train_begin(None, SimpleNamespace(max_steps=8), None)
    with pytest.raises(TrainError, match="planned for 8 steps, this one would run 16"):
        callback.on_train_begin(None, SimpleNamespace(max_steps=16), None)


def test_unreadable_trainer_state_is_one_line(tiny_model_dir, tmp_path, capsys):
    from training.train import main

    out = tmp_path / "run"
    (out / "checkpoint-4").mkdir(parents=True)  # a save cut short
    assert main(run_args(tiny_model_dir, out, resume=True)) == 1
    assert "bad trainer_state.json" in error_line(capsys)


# --- 6. generations.jsonl torn by a crash -----------------------------------------------


def test_a_record_appended_after_a_torn_line_is_kept(tmp_path):
    from evaluation.examples import Example
    from evaluation.generations_log import GenerationsLog, read_generations

    path = tmp_path / "generations.jsonl"
    whole = json.dumps({"system": "lead3", "id": "a", "setup": "s", "output": "A.", "error": None})
    path.write_text(whole + "\n" + whole[:25])  # the crash cut the second record
    out = GenerationsLog(path, {"lead3": "s"})
    out.add("lead3", Example("b", "article", "reference"), output="B.")
    out.close()
    assert sorted(read_generations(path, {"lead3": "s"})) == [("lead3", "a"), ("lead3", "b")]
    assert path.read_text().endswith("\n")
    GenerationsLog(path, {"lead3": "s"}).close()  # a whole file gets no blank line
    assert path.read_text().count("\n") == 3


# --- 7. dtype auto on a GPU without bf16 ------------------------------------------------


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_dtype_auto_on_cuda_follows_bf16_support(monkeypatch, caplog, bf16, expected):
    from core import models

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation) or bf16)
    models._auto_cuda_dtype.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="core.models"):
            assert models.resolve_dtype("auto", torch.device("cuda")) == expected
            assert models.resolve_dtype("auto", torch.device("cuda")) == expected
        assert asked == [False]  # native support only: emulated bf16 is what T4/V100 have
        assert len([r for r in caplog.records if "bfloat16" in r.message]) == (0 if bf16 else 1)
        assert models.resolve_dtype("auto", torch.device("cpu"), for_training=True) == torch.float32
        assert models.resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
    finally:
        models._auto_cuda_dtype.cache_clear()


# --- 8. several GPUs without torchrun ---------------------------------------------------


def test_several_gpus_without_torchrun_are_refused(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from training.train import main

    import transformers.trainer_utils  # noqa: F401  imported before CUDA is faked: nothing caches the fake

    for name in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert main(run_args(tiny_model_dir, tmp_path / "out", device="cuda")) == 1
    line = error_line(capsys)
    assert "torchrun --nproc-per-node 4 -m training.train" in line and "CUDA_VISIBLE_DEVICES=0" in line


def test_several_gpus_under_torchrun_are_fine(monkeypatch):
    from training.train import check_single_process_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "0")
    check_single_process_gpus()
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_single_process_gpus()
