"""bench.bench_longdocs: the baseline's one-call-at-a-time run, the token counts, the limit.

Tiny random model only; the engine runs in this process on a fake pool (no Ray).
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest

import bench.bench_longdocs as bl
import bench.limit as lim
import mapreduce.engine as engine_module
from conftest import CNNDM_TEST
from core.config import load_config
from core.data import DataError
from core.generation import summarize_texts
from mapreduce.engine import MapReduceEngine

SETTINGS = dict(max_length=160, max_new_tokens=12, chunk_size=100, chunk_overlap=10,
                generation_batch_size=4, num_workers=1, num_cpus_per_worker=1.0, device="cpu")


def _document(articles: int = 2) -> str:
    rows = [json.loads(line) for _, line in zip(range(articles), CNNDM_TEST.open())]
    return "\n\n".join(" ".join(r["article"].split()[:150]) for r in rows)


@pytest.fixture(scope="module")
def cfg(lively_model_dir):
    return load_config(None, dict(SETTINGS, base_model=str(lively_model_dir)))


@pytest.fixture(scope="module")
def loaded(cfg):
    return bl.load_baseline_model(cfg, lim.engine_threads(cfg))


@pytest.fixture(scope="module")
def baseline(cfg, loaded):
    model, tokenizer = loaded
    return bl.run_baseline(cfg, model, tokenizer, [("a", _document()), ("b", "The council met on Monday.")])


def test_baseline_generates_every_text_alone_and_counts_its_tokens(baseline, loaded):
    run, meter = baseline
    metered = run.extra["metered"]
    assert run.failed == 0 and run.docs == 2 and run.seconds > 0
    assert metered["rows"] == metered["calls"] == run.tally.texts > 3  # batch 1: one call per text
    assert metered["prompt_tokens"] == run.tally.prompt_tokens  # the levels' count is the prompts' real length
    # generated: the levels' estimate (re-tokenized summaries + EOS) is near what generate did
    assert abs(run.tally.generated_tokens - metered["generated_tokens"]) <= 0.2 * metered["generated_tokens"]
    assert len(meter.prompts) == run.tally.texts and meter.median_prompt() in meter.prompts
    assert "generate" not in loaded[0].__dict__  # the meter is detached
    assert run.peak_rss_mib[0] > 0 and run.rss_note == "this process"


class InProcessPool:
    """The engine's pool interface, answered at once by a model in this process."""

    def __init__(self, cfg, model, tokenizer):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.alive, self.answers, self.sizes, self.pings, self.threads = [True], {}, [], {}, []

    def __len__(self):
        return 1

    def usable(self, index):
        return self.alive[index]

    def lone_threads(self, index):
        return None  # no idle actors to borrow threads from: the process's own count

    def submit(self, worker, texts, template, max_new_tokens=None, threads=None):
        ref = object()
        self.sizes.append(len(texts))
        self.threads.append(threads)
        self.answers[ref] = summarize_texts(self.model, self.tokenizer, texts, template,
                                            self.cfg.prompt_budget, self.cfg.generation)
        return ref


def test_engine_tree_counts_match_the_baseline(cfg, loaded, baseline, monkeypatch):
    model, tokenizer = loaded
    one = load_config(None, dict(SETTINGS, base_model=cfg.model.base_model, generation_batch_size=1))
    pool = InProcessPool(one, model, tokenizer)
    monkeypatch.setattr(engine_module.ray, "wait", lambda refs, num_returns, timeout: (refs[:1], refs[1:]))
    monkeypatch.setattr(engine_module.ray, "get", lambda ref: pool.answers.pop(ref))

    @contextmanager
    def opener(run_cfg, on_progress, say):
        yield MapReduceEngine(run_cfg, pool, tokenizer=tokenizer, on_progress=on_progress)

    run = bl.run_engine(one, [("a", _document()), ("b", "The council met on Monday.")], opener=opener)
    assert run.failed == 0 and set(pool.sizes) == {1} and set(pool.threads) == {None}
    assert run.tally == baseline[0].tally  # same texts, same outputs at batch 1: the same counts
    assert run.peak_rss_mib == [] and run.rss_note == "n/a"


def test_limit_arithmetic():
    tally = lim.Tally(texts=10, prompt_tokens=1000, generated_tokens=250)
    # 1000 / 500 s of prefill; the first token of each text comes with it: 240 tokens / 4 rows = 60 steps
    assert lim.limit_seconds(tally, 500.0, 0.1, 4) == pytest.approx(2.0 + 6.0)
    limit = lim.Limit(2, 4, 100, 500.0, 400.0, 500.0, 0.1)
    assert limit.seconds(tally) == pytest.approx(8.0)
    assert lim.limit_seconds(lim.Tally(3, 30, 3), 10.0, 1.0, 4) == pytest.approx(3.0)  # one token each: no steps


def test_count_levels_adds_templates_and_eos_capped():
    levels = [
        {"name": "map", "template": "document", "inputs": [{"tokens": 90}, {"tokens": 50}],
         "outputs": [{"text": "x", "tokens": 20}, {"text": "y", "tokens": 12}]},
        {"name": "final", "template": "reduce", "inputs": [{"tokens": 32}], "outputs": None},  # unfinished level
    ]
    tally = lim.count_levels(levels, {"document": 7, "reduce": 5}, load_config(None, {"max_new_tokens": 12}))
    assert tally == lim.Tally(texts=3, prompt_tokens=97 + 57 + 37, generated_tokens=12 + 12)
    levels[1]["outputs"] = [{"text": "z", "tokens": 30}]
    capped = load_config(None, {"max_new_tokens": 12, "map_max_new_tokens": 10})
    tally = lim.count_levels(levels, {"document": 7, "reduce": 5}, capped)  # map outputs at 10, the final at 12
    assert tally.generated_tokens == 10 + 10 + 12


def test_measure_limit_on_the_tiny_model(cfg, loaded, baseline):
    model, tokenizer = loaded
    limit = lim.measure_limit(model, tokenizer, baseline[1].median_prompt(), cfg, threads=1)
    assert limit.decode_batch == 4 and limit.decode_step_s > 0
    assert limit.prefill_tokens_per_s == max(limit.prefill_batch1_tokens_per_s, limit.prefill_decode_batch_tokens_per_s)
    rows = [bl.run_row(baseline[0], limit), bl.limit_row(baseline[0], limit)]
    assert rows[0]["share_of_limit"] == pytest.approx(limit.seconds(baseline[0].tally) / baseline[0].seconds)
    assert rows[1]["share_of_limit"] == 1.0 and rows[1]["seconds"] == pytest.approx(rows[0]["limit_seconds"])


def test_table_prints_every_run_and_the_ratio(baseline, capsys):
    run = baseline[0]
    limit = lim.Limit(1, 4, 100, 1000.0, 1000.0, 900.0, 0.01)
    engine = bl.Run("engine", run.seconds / 2, run.docs, 0, run.tally, [300.0, None], "each of 2 actor(s)")
    bl.print_table([bl.run_row(run, limit), bl.run_row(engine, limit), bl.limit_row(engine, limit)], limit, run)
    out = capsys.readouterr().out
    assert "engine / baseline: 2.00x docs/min" in out
    assert "max 300 MiB (each of 2 actor(s))" in out and "(this process)" in out
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["baseline", "engine", "limit"]


def test_threads_and_decode_batch_follow_the_engine(monkeypatch):
    monkeypatch.setattr(lim.os, "cpu_count", lambda: 4)
    cfg = load_config(None, {"num_workers": 3, "num_cpus_per_worker": 2.0, "generation_batch_size": 8})
    assert lim.engine_threads(cfg) == 4 and lim.decode_batch(cfg) == 24
    assert lim.engine_threads(load_config(None, {"num_cpus_per_worker": 1.0})) == 1


def test_inputs_fail_in_one_line(tmp_path, capsys):
    assert bl.main(["--longdocs-file", str(tmp_path / "missing.jsonl")]) == 1
    assert capsys.readouterr().err.strip() == f"error: file not found: {tmp_path / 'missing.jsonl'}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl line 1: missing field"):
        bl.first_documents(bad, 3)
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"id": i, "document": f"d{i}", "summary": "s"}) + "\n" for i in range(5)))
    assert bl.first_documents(good, 2) == [("0", "d0"), ("1", "d1")]
