"""training.train end to end on the tiny random Qwen2 and real CNN/DM rows (CPU, fp32).

One short run (8 full-batch steps on 4 rows, a high constant learning rate, so the loss
must fall) is shared by the tests that inspect its outputs; resume works on a copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from fakes import CPU_CONFIG, run_args

from core.config import load_config
from training.train import build_lora_model, main, pick_optimizer


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "adapter"
    assert main(run_args(tiny_model_dir, out)) == 0
    return out


def read_log(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "train_log.json").read_text())


def test_run_writes_adapter_logs_plot_and_config(trained, tiny_model_dir):
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml",
                 "train_log.json", "loss.png", "checkpoint-4", "checkpoint-8"):
        assert (trained / name).exists(), name
    assert not list(trained.glob("*.bin")) and not list(trained.glob("*.pt"))  # safetensors only
    assert (trained / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (trained / "loss.png").stat().st_size > 10_000
    saved = load_config(trained / "config.yaml")  # the resolved config, overrides included
    assert saved.model.base_model == str(tiny_model_dir)
    assert (saved.data.max_length, saved.training.learning_rate, saved.lora.lora_dropout) == (128, 3e-2, 0.0)
    adapter_config = json.loads((trained / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj", "up_proj", "down_proj"}
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (16, 32)


def test_training_loss_goes_down_and_validation_is_logged(trained):
    log = read_log(trained)
    losses = [e["loss"] for e in log if "loss" in e]
    assert [e["step"] for e in log if "loss" in e] == list(range(1, 9))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    assert losses[-1] < losses[0] - 0.2, losses
    assert [e["step"] for e in log if "eval_loss" in e] == [4, 8]


def test_rouge_is_logged_at_each_evaluation_and_picks_the_kept_checkpoint(trained):
    log = read_log(trained)
    rouge = {e["step"]: e["eval_rougeL"] for e in log if "eval_rougeL" in e}
    assert sorted(rouge) == [4, 8] and all(0.0 <= v <= 1.0 for v in rouge.values())
    (best,) = [e for e in log if "best_checkpoint" in e]
    assert best["best_metric"] == "eval_rougeL"
    assert best["best_value"] == max(rouge.values())
    # ties go to the first: the Trainer only replaces the best on a strict improvement
    best_step = min(step for step, value in rouge.items() if value == best["best_value"])
    assert best["best_checkpoint"] == f"checkpoint-{best_step}"


def test_the_adapter_card_tells_its_recipe_and_validation_curve_not_peft_template(trained, tiny_model_dir):
    card = (trained / "README.md").read_text()
    assert "More Information Needed" not in card
    assert card.startswith(f"# adapter: a LoRA summarization adapter for {tiny_model_dir}")
    assert "| LoRA | r 16, alpha 32, dropout 0.0 on q_proj, v_proj, up_proj, down_proj |" in card
    assert "cut to 128 tokens" in card and "| schedule | 8 steps x 4 rows, adamw_torch lr 0.03 constant" in card
    assert "training rows `train[:4]`, validation rows `train[1049:1051]`" in card
    (best,) = [e for e in read_log(trained) if "best_checkpoint" in e]
    assert f"| weights here | {best['best_checkpoint']} (eval_rougeL {best['best_value']:.4f})" in card
    assert "| step | 4 | 8 |" in card
    rouge = [f"{e['eval_rougeL']:.4f}" for e in read_log(trained) if "eval_rougeL" in e]
    assert f"| validation ROUGE-L | {rouge[0]} | {rouge[1]} |" in card


def test_summary_only_loss_equals_the_full_logits_loss(tiny_model_dir, qwen_tokenizer):
    from transformers import AutoModelForCausalLM

    from core.collator import SummaryCollator
    from core.prompt import build_training_example
    from training.trainer import summary_loss

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    rows = [("The council approved the budget on Monday after a long debate.", "Budget approved ."),
            ("Rain fell.", "It rained all day in the north of the country .")]
    features = [vars(build_training_example(qwen_tokenizer, a, s, 64)) for a, s in rows]
    batch = SummaryCollator(qwen_tokenizer.pad_token_id)([{k: f[k] for k in ("input_ids", "labels")} for f in features])
    full = model(**batch).loss  # transformers' own shifted cross-entropy over every position
    ours, outputs = summary_loss(model, batch)
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
    summary_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert outputs.logits.shape[0] == summary_tokens  # the LM head ran on those positions only
    ours.backward()  # and gradients flow through the sliced head


def test_gradient_accumulation_2_matches_one_batch_of_twice_the_rows(tiny_model_dir, tmp_path):
    """2 micro-batches of 2 rows = 1 batch of 4: the same losses (normalised over all summary tokens) and steps."""
    def losses(out, batch, accumulation):
        argv = run_args(tiny_model_dir, out, max_steps=2, eval_split="null", rouge_eval_examples=0, save_steps=10,
                        per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
        assert main(argv) == 0
        log = read_log(out)
        assert log[-1]["finished"] and log[-1]["step"] == 2  # optimizer steps, not micro-batches
        return [e["loss"] for e in log if "loss" in e]

    one, accumulated = losses(tmp_path / "ga1", 4, 1), losses(tmp_path / "ga2", 2, 2)
    assert len(one) == len(accumulated) == 2
    assert one == pytest.approx(accumulated, rel=1e-4)
    assert accumulated[1] < accumulated[0]  # the second step saw the first one's update


def test_tokenized_rows_carry_their_length_for_the_sampler(qwen_tokenizer):
    import datasets

    from training.train import tokenize_rows, training_arguments

    cfg = load_config(None, {"max_length": 64, "max_new_tokens": 16, "dataset": "x.jsonl"})
    rows = datasets.Dataset.from_list([{"article": "The council met on Monday. " * k, "highlights": "It met ."}
                                       for k in (1, 4, 30)])
    encoded = tokenize_rows(rows, qwen_tokenizer, cfg, "train")
    assert encoded["length"] == [len(ids) for ids in encoded["input_ids"]] and max(encoded["length"]) == 64
    args = training_arguments(cfg, on_cuda=False, dtype=torch.float32, has_eval=False)
    assert args.length_column_name == "length" and args.train_sampling_strategy == "group_by_length"


def test_adapter_config_names_the_hub_base(tmp_path):
    from core.models import name_adapter_base

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/root/.cache/x", "r": 16}))
    name_adapter_base(tmp_path, "embedded:smollm2")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 16}
    shipped = json.loads((REPO / "adapters" / "smollm2-cnndm" / "adapter_config.json").read_text())
    assert shipped["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_adapter_reloads_and_merged_logits_match(trained, tiny_model_dir, qwen_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(trained)).eval()
    ids = qwen_tokenizer("The council approved the new budget on Monday.", return_tensors="pt")
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(**ids).logits
        adapted = model(**ids).logits
        merged = model.merge_and_unload()(**ids).logits
    assert (adapted - base_logits).abs().max() > 1e-3  # the adapter learned something
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_resume_continues_from_the_last_checkpoint(trained, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "adapter"
    shutil.copytree(trained, out)
    # without --resume an existing run is not silently overwritten
    assert main(run_args(tiny_model_dir, out, max_steps=10)) == 1
    assert "pass --resume" in capsys.readouterr().err
    # every checkpoint kept: rotation would otherwise keep only the ROUGE-best and the latest
    assert main(run_args(tiny_model_dir, out, max_steps=10, resume=True, save_total_limit="null")) == 0
    steps = [e["step"] for e in read_log(out) if "loss" in e]
    assert steps == list(range(1, 11))  # the old history kept, steps 9-10 added, nothing redone
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8


def test_early_stopping_stops_and_keeps_the_best_checkpoint(tiny_model_dir, tmp_path):
    """A learning rate far too high makes validation loss rise: patience 1 must stop the run."""
    from safetensors.torch import load_file

    out = tmp_path / "adapter"
    args = run_args(tiny_model_dir, out, max_steps=12, eval_steps=1, save_steps=1, early_stopping_patience=1,
                    rouge_eval_examples=0, learning_rate=1.0, save_total_limit="null")
    assert main(args) == 0
    log = read_log(out)
    evals = {e["step"]: e["eval_loss"] for e in log if "eval_loss" in e}
    (end,) = [e for e in log if e.get("finished")]
    assert end["step"] < 12 and max(evals) == end["step"]  # stopped early, at its last evaluation
    best_step = min(evals, key=evals.get)
    assert end["step"] == best_step + 1  # the first evaluation after the best, with patience 1
    assert evals[end["step"]] > evals[best_step]
    assert (end["best_checkpoint"], end["best_value"]) == (f"checkpoint-{best_step}", pytest.approx(evals[best_step]))
    final = load_file(str(out / "adapter_model.safetensors"))
    best = load_file(str(out / f"checkpoint-{best_step}" / "adapter_model.safetensors"))
    last = load_file(str(out / f"checkpoint-{end['step']}" / "adapter_model.safetensors"))
    assert final.keys() == best.keys()
    assert all(torch.equal(final[k], best[k]) for k in final)  # the best weights, not the last
    assert any(not torch.equal(final[k], last[k]) for k in final)


def test_resume_of_the_finished_run_trains_nothing(trained, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "adapter"
    shutil.copytree(trained, out)
    adapter = (out / "adapter_model.safetensors").read_bytes()
    assert main(run_args(tiny_model_dir, out, resume=True)) == 0
    assert "already finished at step 8" in capsys.readouterr().err
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_sigterm_mid_training_writes_logs_and_says_resume(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """What docker stop or a timeout sends: the Ctrl-C path, not a silent death."""
    import os
    import signal

    from training.trainer import SummaryTrainer

    real = SummaryTrainer.training_step

    def step(self, *args, **kwargs):
        if self.state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SummaryTrainer, "training_step", step)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        out = tmp_path / "adapter"
        assert main(run_args(tiny_model_dir, out, save_steps=2, eval_steps=2, rouge_eval_examples=0)) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "interrupted: logs in" in err and "--resume" in err and "Traceback" not in err
    assert [e["step"] for e in read_log(out) if "loss" in e] == [1, 2]
    assert not (out / "adapter_model.safetensors").exists()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_one_line_errors(tiny_model_dir, tmp_path, capsys):
    missing_data = tmp_path / "missing.jsonl"
    assert main(run_args(tiny_model_dir, tmp_path / "a", dataset=str(missing_data))) == 1
    assert str(missing_data) in _error_line(capsys)

    missing_model = tmp_path / "no-model-here"
    assert main(run_args(missing_model, tmp_path / "b")) == 1
    assert "base model dir not found" in _error_line(capsys)

    assert main(run_args("no-such-org/no-such-model", tmp_path / "c")) == 1  # offline hub id
    assert "no-such-org/no-such-model" in _error_line(capsys)

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(run_args(tiny_model_dir, blocker / "out")) == 1
    assert "output dir not writable" in _error_line(capsys)

    assert main(run_args(tiny_model_dir, tmp_path / "d", lr_scheduler_type="sideways")) == 1
    assert "invalid training settings" in _error_line(capsys)

    assert main(run_args(tiny_model_dir, tmp_path / "e", eval_split="null", early_stopping_patience=2)) == 1
    assert "early_stopping_patience" in _error_line(capsys)

    assert main(run_args(tiny_model_dir, tmp_path / "f", lora_target_modules="no_such_proj")) == 1
    assert "lora_target_modules" in _error_line(capsys)

    # a local table has no validation split: its first rows would be training rows (D-1)
    assert main(run_args(tiny_model_dir, tmp_path / "g", eval_split="validation[:2]")) == 1
    assert "'eval_split' is 'validation[:2]'" in _error_line(capsys) and not (tmp_path / "g").exists()
    assert main(run_args(tiny_model_dir, tmp_path / "h", eval_split="train[3:5]")) == 1
    assert "share rows 3..3" in _error_line(capsys)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    cmd = [sys.executable, "-m", "training.train", "--config", CPU_CONFIG,
           "--dataset", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: dataset path not found")
    assert "Traceback" not in proc.stderr


def test_help_lists_config_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--learning-rate", "--lora-r", "--resume", "--output-dir", "--max-length"):
        assert flag in out


def test_bitsandbytes_optimizers_fall_back_on_cpu():
    assert pick_optimizer("paged_adamw_8bit", on_cuda=False) == "adamw_torch"
    assert pick_optimizer("adamw_bnb_8bit", on_cuda=False) == "adamw_torch"
    assert pick_optimizer("paged_adamw_8bit", on_cuda=True) == "paged_adamw_8bit"
    assert pick_optimizer("adamw_torch_fused", on_cuda=False) == "adamw_torch_fused"


def test_reference_recipe_trains_18_7m_parameters_of_qwen25_3b():
    """peft reports 18,726,912 trainable params for Qwen2.5-3B with param.yaml's LoRA."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(  # Qwen/Qwen2.5-3B-Instruct's config.json, the fields that set sizes
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    cfg = load_config(REPO / "configs" / "param.yaml")
    peft_model = build_lora_model(model, cfg)
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert trainable == 18_726_912
    assert total - trainable == 3_085_938_688  # Qwen2.5-3B's own parameter count
