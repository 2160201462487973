"""training.resume's settings record: a --resume with settings that would change the adapter is one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import REPO
from core.config import load_config
from training.resume import SETTINGS_FILE, TrainError, check_run_settings

CPU = {"device": "cpu", "dtype": "float32"}


def _cfg(**values):
    return load_config(None, {"output_dir": "ignored", **values})


def test_a_fresh_run_records_its_settings_and_a_resume_with_the_same_ones_goes_on(tmp_path):
    check_run_settings(tmp_path, _cfg(), CPU, resuming=False)
    record = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert record["settings"]["learning_rate"] == 1e-5 and record["settings"]["resolved"] == CPU
    check_run_settings(tmp_path, _cfg(), CPU, resuming=True)
    # scheduling keys and the plan (check_resume_plan's) may change on a resume
    check_run_settings(tmp_path, _cfg(logging_steps=1, save_total_limit=1, max_steps=50, output_dir="x"), CPU,
                       resuming=True)


@pytest.mark.parametrize("changed, key", [
    ({"learning_rate": 3e-4}, "learning_rate"),
    ({"lora_r": 8}, "lora_r"),
    ({"max_length": 256}, "max_length"),
    ({"seed": 1}, "seed"),
])
def test_a_resume_with_changed_settings_is_refused_naming_them(tmp_path, changed, key):
    check_run_settings(tmp_path, _cfg(), CPU, resuming=False)
    with pytest.raises(TrainError, match=rf"--resume: .* was trained with other settings \({key} .* -> .*\); "
                                         "resume with the same settings, or start fresh in another --output-dir"):
        check_run_settings(tmp_path, _cfg(**changed), CPU, resuming=True)


def test_a_resume_on_a_machine_that_resolves_dtype_auto_otherwise_is_refused(tmp_path):
    check_run_settings(tmp_path, _cfg(), {"device": "cuda", "dtype": "bfloat16"}, resuming=False)
    with pytest.raises(TrainError, match="resolved"):
        check_run_settings(tmp_path, _cfg(), CPU, resuming=True)


def test_an_older_run_without_a_record_resumes_with_a_warning_and_is_recorded(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.train"):
        check_run_settings(tmp_path, _cfg(), CPU, resuming=True)
    assert "no record of its run's settings" in caplog.text
    assert (tmp_path / SETTINGS_FILE).exists()


def test_train_main_refuses_the_resume_in_one_line_before_loading_anything(tmp_path, capsys):
    from training.train import main

    out = tmp_path / "run"
    ckpt = out / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "max_steps": 8}))
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"article": "a", "highlights": "h"}) + "\n")
    argv = ["--config", str(Path(REPO) / "configs/smollm2_cpu.yaml"), "--dataset", str(data),
            "--train-split", "train[:1]", "--eval-split", "null", "--rouge-eval-examples", "0",
            "--output-dir", str(out), "--max-steps", "8", "--device", "cpu", "--resume"]
    cfg = load_config(Path(REPO) / "configs/smollm2_cpu.yaml", {"dataset": [str(data)], "train_split": "train[:1]",
                      "eval_split": None, "rouge_eval_examples": 0, "output_dir": str(out), "max_steps": 8,
                      "device": "cpu", "resume": True})
    from core.fingerprint import resolved_runtime

    check_run_settings(out, cfg, resolved_runtime(cfg.model, for_training=True), resuming=False)
    assert main(argv + ["--learning-rate", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "trained with other settings (learning_rate 0.0003 -> 0.5)" in line
