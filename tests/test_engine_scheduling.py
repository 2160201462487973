"""The engine's scheduler on a fake pool (ray.wait/get faked): batching, admission, solo retries.

No Ray and no model: the pool "summarizes" at submit time with a fake summarizer, and the
chunker counts words (tests/fakes.py). The slow tests run the same engine on Ray.
"""

from __future__ import annotations

import pytest

import mapreduce.engine as engine_module
from mapreduce.engine import MapReduceEngine
from fakes import FakePool, WordChunker, document, keep_markers, steps
from mapreduce.api import Summarizer


@pytest.fixture
def pool(monkeypatch) -> FakePool:
    pool = FakePool()

    def get(ref):
        answer = pool.answers[ref]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(engine_module.ray, "wait", lambda refs, num_returns, timeout: (refs[:1], refs[1:]))
    monkeypatch.setattr(engine_module.ray, "get", get)
    monkeypatch.setattr(engine_module.ray, "cancel", lambda ref: None)
    return pool


def _engine(pool, events=None, **overrides) -> MapReduceEngine:
    cfg = steps(**overrides).cfg
    return MapReduceEngine(cfg, pool, chunker=WordChunker(cfg.mapreduce.chunk_size),
                           on_progress=events.append if events is not None else None)


def test_many_documents_give_the_same_results_as_one_at_a_time(pool):
    docs = {"a": document(10), "b": document(3), "c": document(12), "d": "  "}
    engine = _engine(pool, generation_batch_size=4, max_docs_in_flight=2)
    results = {r.doc_id: r for r in engine.run(docs.items())}
    assert sorted(results) == sorted(docs)
    for doc_id, text in docs.items():
        alone = steps().run(doc_id, text, keep_markers)
        got = results[doc_id]
        assert (got.summary, got.error, got.tokens) == (alone.summary, alone.error, alone.tokens), doc_id
        assert _untimed(got.tree) == _untimed(alone.tree), doc_id
    assert all(len(texts) <= 4 for _, texts, _ in pool.calls)


def _untimed(tree):
    """A result tree without its level timings (the only part two executors may differ in)."""
    if tree is None:
        return None
    return {**tree, "levels": [{k: v for k, v in lv.items() if k != "seconds"} for lv in tree["levels"]]}


class _FakeModelSummarizer(Summarizer):
    """The in-process API with a fake model: its levels go through `keep_markers` in one call each."""

    def __init__(self, cfg, chunker):
        self.cfg, self.model, self.tokenizer = cfg, None, None
        super().__init__(cfg, None, None, chunker=chunker)

    def _generate(self, texts, template, max_new_tokens=None):
        return keep_markers(texts, template)


@pytest.mark.parametrize("overrides", [{}, {"summary_words": 1000}, {"chunk_size": 10}, {"max_document_tokens": 50}])
def test_the_api_and_the_engine_return_the_same_whole_result(pool, overrides):
    """One lifecycle, two executors: the in-process Summarizer and the engine give equal DocumentResults."""
    docs = {"a": document(10), "b": document(3), "c": document(12), "d": "  ", "e": " ".join(["w"] * 200)}
    engine = _engine(pool, generation_batch_size=3, max_docs_in_flight=2, **overrides)
    api = _FakeModelSummarizer(engine.cfg, WordChunker(engine.cfg.mapreduce.chunk_size))
    for got in engine.run(docs.items()):
        local = api.summarize(docs[got.doc_id], doc_id=got.doc_id)
        assert type(local) is type(got)
        assert (got.summary, got.error, got.tokens) == (local.summary, local.error, local.tokens), got.doc_id
        assert _untimed(got.tree) == _untimed(local.tree), got.doc_id
        assert set(got.timings) == set(local.timings)


def test_map_calls_carry_their_own_token_cap_and_never_share_a_batch_with_others(pool):
    docs = {"a": document(10), "b": document(12), "c": document(3)}  # c fits: one "final" pass
    engine = _engine(pool, generation_batch_size=8, map_max_new_tokens=3)
    results = {r.doc_id: r for r in engine.run(docs.items())}
    assert all(r.ok for r in results.values())
    chunks = {c.text for doc in ("a", "b") for c in WordChunker(20).split(docs[doc])}
    for (_, texts, _), cap in zip(pool.calls, pool.caps):
        assert cap == (3 if set(texts) <= chunks else None), texts  # a batch is all map texts or none
    assert 3 in pool.caps and None in pool.caps


def test_a_text_that_fails_alone_fails_only_its_document(pool):
    events: list = []
    poisoned = document(10).replace("M004 filler", "M004 poison")
    engine = _engine(pool, events, generation_batch_size=4)
    results = {r.doc_id: r for r in engine.run([("ok", document(10)), ("bad", poisoned)])}
    assert results["ok"].ok and results["ok"].summary == " ".join(f"M{i:03d}" for i in range(10))
    assert results["bad"].summary is None
    assert results["bad"].error == "map input 2 failed after retries: ValueError: injected failure"
    failed_batch = next(c for c in pool.calls if len(c[1]) > 1 and any("poison" in t for t in c[1]))
    solo = [c for c in pool.calls if len(c[1]) == 1 and "poison" in c[1][0]]
    assert len(solo) == 1 and solo[0][0] != failed_batch[0]  # retried alone, on the other worker
    finished = [(e.doc_id, e.error) for e in events if e.kind == "finished"]
    assert sorted(finished, key=str) == sorted([("ok", None), ("bad", results["bad"].error)], key=str)


def test_summarize_is_one_document_through_run(pool):
    result = _engine(pool).summarize(document(3), doc_id="x")
    assert result.doc_id == "x" and result.summary == "M000 M001 M002"
