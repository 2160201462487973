"""The Python API: in-process map-reduce, and the same summary from the Ray engine."""

from __future__ import annotations

import json

import pytest

from conftest import CNNDM_TEST
from mapreduce.api import RaySummarizer, Summarizer, resolve_config

SETTINGS = dict(max_length=160, max_new_tokens=12, chunk_size=100, chunk_overlap=10,
                generation_batch_size=4, num_workers=1, num_cpus_per_worker=1.0, dtype="float32")


def _document(articles: int = 2) -> str:
    rows = [json.loads(line) for _, line in zip(range(articles), CNNDM_TEST.open())]
    return "\n\n".join(" ".join(r["article"].split()[:150]) for r in rows)


@pytest.fixture(scope="module")
def summarizer(lively_model_dir):
    return Summarizer.from_config(None, base_model=str(lively_model_dir), **SETTINGS)


def _names(result) -> list[str]:
    return [lv["name"] for lv in result.tree["levels"]]


def test_in_process_map_reduce_runs_every_level(summarizer):
    text = _document()
    result = summarizer.summarize(text)
    assert result.ok and result.summary.strip()
    chunks, levels = result.tree["chunks"], result.tree["levels"]
    assert len(chunks) > 2 and levels[0]["name"] == "map"
    assert len(levels[0]["outputs"]) == len(chunks) == result.tokens["chunks"]
    assert levels[-1]["name"] == "final" and [o["text"] for o in levels[-1]["outputs"]] == [result.summary]
    assert all(text[c["start"]:c["end"]].strip() for c in chunks)
    assert result.timings["map_s"] > 0 and result.timings["total_s"] >= result.timings["map_s"]


def test_a_short_document_is_one_pass(summarizer):
    result = summarizer.summarize("The council approved the new budget on Monday after a long debate.")
    assert _names(result) == ["final"] and result.tokens["chunks"] == 1


def test_length_target_keeps_one_summary_per_part(lively_model_dir):
    summarizer = Summarizer.from_config(None, base_model=str(lively_model_dir), summary_words=10_000, **SETTINGS)
    result = summarizer.summarize(_document())
    assert _names(result) == ["map"]  # the map summaries already fit the target


def test_map_calls_stop_at_their_own_cap(lively_model_dir):
    summarizer = Summarizer.from_config(None, base_model=str(lively_model_dir), map_max_new_tokens=2, **SETTINGS)
    caps, generate = [], summarizer.model.generate

    def recording(*args, **kwargs):
        out = generate(*args, **kwargs)
        cap = kwargs["generation_config"].max_new_tokens  # the whole decoding travels as one config
        caps.append((cap, out.shape[1] - kwargs["input_ids"].shape[1]))
        return out

    summarizer.model.generate = recording
    result = summarizer.summarize(_document())
    names = _names(result)
    assert names[0] == "map" and names[-1] == "final"
    assert caps[0][0] == 2 and caps[0][1] <= 2  # the map batch
    assert caps[-1][0] == 12  # the final call keeps max_new_tokens


def test_config_overrides_and_errors():
    cfg = resolve_config(None, chunk_size=123, chunk_overlap=5)
    assert (cfg.mapreduce.chunk_size, resolve_config(cfg, max_new_tokens=7).generation.max_new_tokens) == (123, 7)
    bare = object.__new__(Summarizer)
    with pytest.raises(TypeError, match="must be text .*got int"):
        Summarizer.summarize(bare, 123)
    with pytest.raises(ValueError, match="map_max_new_tokens"):
        resolve_config(None, max_new_tokens=8, map_max_new_tokens=9)


@pytest.mark.slow
def test_ray_engine_gives_the_same_summary(summarizer, lively_model_dir):
    text = _document()
    local = summarizer.summarize(text)
    with RaySummarizer.from_config(None, base_model=str(lively_model_dir), **SETTINGS) as remote:
        (result,) = list(remote.summarize_many({"doc": text}))
    assert result.ok, result.error
    assert result.summary == local.summary
    assert result.tree["levels"][-1]["outputs"] == local.tree["levels"][-1]["outputs"]
    assert _names(result) == _names(local)


def test_an_empty_or_emoji_only_document_is_an_error_result(summarizer):
    assert summarizer.summarize("  ").error == "document is empty"
    assert "no words to summarize" in summarizer.summarize("\U0001F600" * 400).error
    assert summarizer.summarize("The council approved the budget.".encode()).ok


def test_a_config_object_keeps_its_file_values_unforced():
    from pathlib import Path

    cpu = resolve_config(Path(__file__).resolve().parents[1] / "configs" / "smollm2_cpu.yaml")  # map 40
    assert resolve_config(cpu, max_new_tokens=24).map_token_cap == 24  # only max_new_tokens was asked for
