"""evaluation.evaluate end to end on the tiny model: files, table, resume, failures, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import core.generation
import core.models
from evaluation.evaluate import main
from tests.conftest import CNNDM_TEST, save_lora_adapter


@pytest.fixture(scope="module")
def test_file(tmp_path_factory) -> Path:
    """5 real test rows (articles cut short to keep prompts small), the third one emptied."""
    rows = [json.loads(line) for _, line in zip(range(5), CNNDM_TEST.open())]
    rows[2]["article"] = "   "
    path = tmp_path_factory.mktemp("data") / "test.jsonl"
    path.write_text("".join(json.dumps({**r, "article": r["article"][:1500]}) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def adapter_dir(lively_model_dir, tmp_path_factory) -> Path:
    """An untrained LoRA adapter with random (non-zero) B, so it visibly changes outputs."""
    return save_lora_adapter(lively_model_dir, tmp_path_factory.mktemp("adapter"), seed=0, r=4, lora_alpha=8,
                             target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def _argv(model_dir, data, out, *extra) -> list[str]:
    return [
        "--base-model", str(model_dir), "--test-dataset", str(data), "--eval-output-dir", str(out),
        "--device", "cpu", "--dtype", "float32", "--max-length", "160", "--max-new-tokens", "8",
        "--generation-batch-size", "2", "--bertscore-model", "embedded:minilm", "--bertscore-num-layers", "6",
        "--bootstrap-samples", "200", *extra,
    ]  # fmt: skip


def _count_calls(monkeypatch, module, name) -> list:
    calls: list = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_lead3_base_chat_and_adapter(lively_model_dir, adapter_dir, test_file, tmp_path, monkeypatch, capsys):
    loads = _count_calls(monkeypatch, core.models, "load_base_model")
    attaches = _count_calls(monkeypatch, core.models, "attach_adapter")
    out = tmp_path / "eval"
    argv = _argv(lively_model_dir, test_file, out, "--systems", "lead3,base,base_chat,adapter", "--adapter", str(adapter_dir))
    assert main(argv) == 0
    assert len(loads) == 1 and len(attaches) == 1  # the base model is loaded once, the adapter merged into it

    printed = capsys.readouterr().out
    table = (out / "results.md").read_text()
    assert "| Model | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | BERTScore F1 | Avg Gen Length |" in table
    for name in ("| LEAD-3 |", "| Base |", "| Base (chat template) |", "| Base + adapter |", "| Improvement (adapter − base) |"):
        assert name in table and name in printed

    result = json.loads((out / "results.json").read_text())
    assert result["bertscore_encoder"] == "embedded:minilm" and result["num_examples"] == 5
    for system, s in result["systems"].items():
        assert s["num_scored"] == 4 and s["num_failed"] == 1, system
        assert all(0.0 <= s[m] <= 1.0 for m in ("rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_f1"))
        assert s["rougeL_ci95"][0] <= s["rougeL"] <= s["rougeL_ci95"][1]
        assert s["words"] > 0
    lead, base = result["systems"]["lead3"], result["systems"]["base"]
    assert lead["rougeL"] > 0.1 > base["rougeL"]  # real lead sentences vs a random model's tokens
    delta = result["improvements"]["adapter_minus_base"]
    assert delta["rougeL"] == pytest.approx(result["systems"]["adapter"]["rougeL"] - base["rougeL"])
    assert delta["num_paired"] == 4

    per_example = _read_jsonl(out / "per_example.jsonl")
    assert [e["id"] for e in per_example] == [json.loads(line)["id"] for _, line in zip(range(5), CNNDM_TEST.open())]
    assert all(s == {"error": "empty article"} for s in per_example[2]["systems"].values())
    ok = [e for i, e in enumerate(per_example) if i != 2]
    assert all(set(e["systems"]) == {"lead3", "base", "base_chat", "adapter"} for e in ok)
    assert all("rougeL" in s and "bertscore_f1" in s and s["output"] is not None for e in ok for s in e["systems"].values())
    assert any(e["systems"]["adapter"]["output"] != e["systems"]["base"]["output"] for e in ok)
    assert any(e["systems"]["base_chat"]["output"] != e["systems"]["base"]["output"] for e in ok)
    assert ok[0]["systems"]["lead3"]["output"].count("\n") == 2


def test_resume_generates_only_what_is_missing(lively_model_dir, test_file, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    argv = _argv(lively_model_dir, test_file, out, "--systems", "base")
    calls = _count_calls(monkeypatch, core.generation, "generate_batch")

    def prompts_generated() -> int:
        n = sum(len(c[2]) for c in calls)
        calls.clear()
        return n

    assert main(argv + ["--num-examples", "3"]) == 0
    assert prompts_generated() == 2  # the empty article is recorded, not generated
    first = json.loads((out / "results.json").read_text())["systems"]["base"]

    assert main(argv + ["--num-examples", "3"]) == 0
    assert prompts_generated() == 0
    assert json.loads((out / "results.json").read_text())["systems"]["base"] == first

    # an interruption: the last record lost, the one before cut mid-line
    log = out / "generations.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    good = [line for line in lines if json.loads(line)["error"] is None]
    log.write_text(good[0][:25])
    assert main(argv + ["--num-examples", "5"]) == 0
    assert prompts_generated() == 4

    assert main(argv + ["--num-examples", "5", "--max-new-tokens", "6"]) == 0  # other settings: no reuse
    assert prompts_generated() == 4
    assert len(_read_jsonl(out / "per_example.jsonl")) == 5


def test_a_failing_batch_is_retried_alone_and_its_example_recorded(lively_model_dir, test_file, tmp_path, monkeypatch, capsys):
    real = core.generation.generate_batch
    poison = {}

    def flaky(model, tokenizer, prompts, gen):
        if any(list(p) == poison["ids"] for p in prompts):
            raise RuntimeError("CUDA out of memory (simulated)\nmore detail")
        return real(model, tokenizer, prompts, gen)

    from core.prompt import build_prompt_ids
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lively_model_dir))
    first = json.loads(test_file.read_text().splitlines()[0])
    poison["ids"] = build_prompt_ids(tok, first["article"], 160 - 8)
    monkeypatch.setattr(core.generation, "generate_batch", flaky)
    out = tmp_path / "eval"
    assert main(_argv(lively_model_dir, test_file, out, "--systems", "base")) == 0
    per_example = _read_jsonl(out / "per_example.jsonl")
    assert per_example[0]["systems"]["base"] == {"error": "generation failed: RuntimeError: CUDA out of memory (simulated)"}
    assert sum("output" in e["systems"]["base"] for e in per_example) == 3
    result = json.loads((out / "results.json").read_text())["systems"]["base"]
    assert (result["num_scored"], result["num_failed"]) == (3, 2)
    assert "2 failed (excluded)" in capsys.readouterr().out


def test_a_sigterm_whose_raise_was_lost_stops_after_that_batch_and_resumes(lively_model_dir, test_file, tmp_path, monkeypatch, capsys):
    """It happened once on a real run: the first SIGTERM was dropped and three more batches ran."""
    import signal

    from fakes import lose_a_sigterm

    real, calls = core.generation.generate_batch, []

    def signalled(model, tokenizer, prompts, gen):
        calls.append(len(prompts))
        if len(calls) == 1:
            lose_a_sigterm()
        return real(model, tokenizer, prompts, gen)

    monkeypatch.setattr(core.generation, "generate_batch", signalled)
    out, before = tmp_path / "eval", signal.getsignal(signal.SIGTERM)
    try:
        assert main(_argv(lively_model_dir, test_file, out, "--systems", "base")) == 130
    finally:
        signal.signal(signal.SIGTERM, before)
    assert calls == [2] and "interrupted: finished batches are saved" in capsys.readouterr().err
    saved = [r for r in _read_jsonl(out / "generations.jsonl") if r["output"] is not None]
    assert len(saved) == 2  # the batch that got the signal is kept, nothing after it ran
    monkeypatch.setattr(core.generation, "generate_batch", real)
    assert main(_argv(lively_model_dir, test_file, out, "--systems", "base")) == 0
    assert sum("output" in e["systems"]["base"] for e in _read_jsonl(out / "per_example.jsonl")) == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--systems", "base,adapter"], "system 'adapter' needs config key 'adapter'"),
        (["--systems", "adapter", "--adapter", "/nonexistent/adapter"], "adapter dir not found"),
        (["--systems", "lead3,gpt"], "unknown system 'gpt'"),
        (["--bertscore-num-layers", "12"], "has 6 layers"),
        (["--test-dataset", "/nonexistent/test.jsonl"], "dataset path not found"),
        (["--article-field", "text"], "field 'text' not in"),
        (["--base-model", "./no/such/model"], "base model dir not found"),
        (["--num-examples", "0"], "must be positive"),
    ],
)
def test_bad_input_is_one_line_error(lively_model_dir, test_file, tmp_path, capsys, extra, message):
    assert main(_argv(lively_model_dir, test_file, tmp_path / "eval", "--systems", "lead3,base", *extra)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_local_dataset_without_test_dataset_is_not_read_as_a_test_split(test_file, tmp_path, capsys):
    """`--dataset` is the training table: its 'test' split would be its training rows (D-1)."""
    argv = _argv("unused", test_file, tmp_path / "eval", "--systems", "lead3", "--test-dataset", "null")
    assert main([*argv, "--dataset", str(test_file)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "config key 'test_split' is 'test'" in err[-1] and "--test-dataset FILE" in err[-1]
    assert main([*argv, "--dataset", str(test_file), "--test-split", "train[:2]"]) == 0  # a slice of it, asked for


def test_nothing_scorable_still_reports(tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text(json.dumps({"id": "a", "article": "", "highlights": "x ."}) + "\n")
    out = tmp_path / "eval"
    argv = _argv("unused", data, out, "--systems", "lead3")
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())  # strict JSON: no NaN
    assert result["systems"]["lead3"]["rougeL"] is None and result["systems"]["lead3"]["num_failed"] == 1
    assert "| LEAD-3 | n/a |" in capsys.readouterr().out


def test_improvement_interval_is_paired_over_the_examples_both_systems_scored():
    """Per-example scores spread widely but the adapter gains 0.02 on each: only pairing shows it.

    Unpaired, the two systems' intervals overlap almost entirely; the paired difference
    must be a narrow interval around +0.02, over the 40 examples both systems scored
    (the adapter failed on a 41st, which the base scored 0.95: it must not count).
    """
    import random

    from core.config import load_config
    from evaluation.examples import Example
    from evaluation.report import METRICS, aggregate_scores

    rng = random.Random(0)
    examples = [Example(str(i), "article", "reference") for i in range(41)]
    base = [rng.uniform(0.05, 0.65) for _ in range(40)] + [0.95]
    adapter = [b + 0.02 + rng.uniform(-0.004, 0.004) for b in base[:40]]
    scores = {("base", e.id): dict.fromkeys(METRICS, b) for e, b in zip(examples, base)}
    scores.update({("adapter", e.id): dict.fromkeys(METRICS, a) for e, a in zip(examples, adapter)})
    errors = {("adapter", "40"): "generation failed: RuntimeError"}
    cfg = load_config(None, {"bootstrap_samples": 1000})
    result = aggregate_scores(cfg, examples, ["base", "adapter"], scores, errors)

    delta = result["improvements"]["adapter_minus_base"]
    assert delta["num_paired"] == 40
    assert delta["rougeL"] == pytest.approx(sum(a - b for a, b in zip(adapter, base)) / 40)
    unpaired = result["systems"]["adapter"]["rougeL"] - result["systems"]["base"]["rougeL"]
    assert abs(unpaired - delta["rougeL"]) > 0.01  # the unscored 0.95 would drag an unpaired difference
    low, high = delta["rougeL_ci95"]
    assert 0.015 < low < delta["rougeL"] < high < 0.025
    base_ci, adapter_ci = result["systems"]["base"]["rougeL_ci95"], result["systems"]["adapter"]["rougeL_ci95"]
    assert adapter_ci[0] < base_ci[1]  # unpaired, the intervals overlap: no visible gain
