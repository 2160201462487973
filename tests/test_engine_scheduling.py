"""The engine's scheduler on a fake pool (ray.wait/get faked): batching, admission, solo retries, timeouts.

No Ray and no model: the pool "summarizes" at submit time with a fake summarizer, and the
chunker counts words (tests/fakes.py). The slow tests run the same engine on Ray.
"""

from __future__ import annotations

import pytest

import mapreduce.engine as engine_module
from mapreduce.engine import MapReduceEngine
from mapreduce.pool import WorkerError
from fakes import FakePool, WordChunker, document, keep_markers, steps
from mapreduce.api import Summarizer


@pytest.fixture
def pool(monkeypatch) -> FakePool:
    pool = FakePool()
    monkeypatch.setattr(engine_module.ray, "wait", pool.wait)
    monkeypatch.setattr(engine_module.ray, "get", pool.get)
    monkeypatch.setattr(engine_module.ray, "cancel", pool.cancel)
    monkeypatch.setattr(engine_module, "clock", lambda: pool.clock)
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


# --- a hung or restarting worker (S-1, S-2) ---------------------------------------------


def test_a_call_past_call_timeout_is_retried_alone_on_another_worker(pool):
    """One hung actor among two: its calls time out one by one, the other worker redoes them."""
    pool.hung.add(0)
    engine = _engine(pool, generation_batch_size=2, call_timeout_s=30)
    results = {r.doc_id: r for r in engine.run([("a", document(10)), ("b", document(12))])}
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    assert results["a"].summary == " ".join(f"M{i:03d}" for i in range(10))
    hung_calls = [c for c in pool.calls if c[0] == 0]
    assert hung_calls and len(pool.cancelled) == len(hung_calls)  # each timed out and was cancelled
    retried = {t for c in hung_calls for t in c[1]}
    assert all(any(c[0] == 1 and c[1] == [t] for c in pool.calls) for t in retried)  # alone, on worker 1
    assert pool.clock == 30  # the first deadline; worker 1 kept working meanwhile
    assert not pool.usable(0) and pool.alive[0]  # still pinged, never retired


def test_a_text_that_times_out_alone_too_fails_only_its_document(pool):
    stalled = document(10).replace("M004 filler", "M004 stall")
    engine = _engine(pool, generation_batch_size=4, call_timeout_s=30)
    results = {r.doc_id: r for r in engine.run([("ok", document(10)), ("slow", stalled)])}
    assert results["ok"].ok and results["ok"].summary == " ".join(f"M{i:03d}" for i in range(10))
    assert results["slow"].summary is None
    assert results["slow"].error == ("map input 2 failed after retries: CallTimeout: no answer within 30s "
                                     "(call_timeout_s): a hung worker? raise --call-timeout-s for a slow model")
    first, solo = [c for c in pool.calls if any("stall" in t for t in c[1])]
    assert len(first[1]) > 1 and len(solo[1]) == 1 and solo[0] != first[0]  # retried alone, elsewhere
    assert pool.alive == [True, True]  # a slow text retires no worker


def test_a_slowly_restarting_worker_is_waited_for_and_used_again(pool):
    """check_alive never blocks: worker 0 is unusable while its ping is pending, then works again."""
    engine = _engine(pool, generation_batch_size=4)
    pool.hung.add(0)  # the ping waits behind a restart
    pool.check_alive(0)
    first = {r.doc_id: r for r in engine.run([("a", document(10))])}
    assert first["a"].ok and {c[0] for c in pool.calls} == {1}  # all on worker 1, nobody blocked
    pool.release(0)
    second = {r.doc_id: r for r in engine.run([("b", document(12)), ("c", document(10))])}
    assert all(r.ok for r in second.values()) and pool.usable(0) and pool.alive[0]
    assert 0 in {c[0] for c in pool.calls}


def test_only_a_worker_that_ray_reports_dead_is_retired(pool):
    pool.dead.add(0)
    pool.check_alive(0)
    pool.ping_answered(next(iter(pool.pings)))
    assert pool.alive == [False, True] and not pool.pings


def test_with_every_worker_pinged_and_silent_the_run_ends_after_start_timeout(pool):
    engine = _engine(pool, generation_batch_size=4, start_timeout_s=60)
    pool.hung |= {0, 1}
    for worker in (0, 1):
        pool.check_alive(worker)
    with pytest.raises(WorkerError, match="no worker came back within 60s .*worker"):
        list(engine.run([("a", document(10))]))


# --- keeping every actor busy on one document -------------------------------------------


def _map_texts_per_worker(pool, chunks: set) -> dict:
    counts = {}
    for worker, texts, _ in pool.calls:
        if set(texts) <= chunks:
            counts[worker] = counts.get(worker, 0) + len(texts)
    return counts


def test_one_documents_map_level_is_split_evenly_over_the_workers(pool):
    """12 chunks, 2 actors, batches of 8: 6 each in one call (not 6+2 on one and 3+1 on the other)."""
    doc = document(12, filler=19)
    chunks = {c.text for c in WordChunker(20).split(doc)}
    assert len(chunks) == 12
    assert _engine(pool, generation_batch_size=8).summarize(doc).ok
    map_calls = [(w, len(texts)) for w, texts, _ in pool.calls if set(texts) <= chunks]
    assert sorted(map_calls) == [(0, 6), (1, 6)]


def test_a_long_queue_goes_out_in_full_batches_and_its_tail_is_shared(pool):
    doc = document(40, filler=19)  # 40 chunks
    chunks = {c.text for c in WordChunker(20).split(doc)}
    _engine(pool, generation_batch_size=8).summarize(doc)  # only its map level matters here
    sizes = [len(texts) for _, texts, _ in pool.calls if set(texts) <= chunks]
    assert sizes[:4] == [8, 8, 8, 8] and sum(sizes) == 40
    per_worker = _map_texts_per_worker(pool, chunks)
    assert abs(per_worker[0] - per_worker[1]) <= 2, per_worker


def test_a_call_alone_on_the_pool_borrows_the_idle_actors_threads(pool):
    doc = document(12, filler=19)
    chunks = {c.text for c in WordChunker(20).split(doc)}
    assert _engine(pool, generation_batch_size=8).summarize(doc).ok
    for (_, texts, _), threads in zip(pool.calls, pool.threads):
        assert threads == (None if set(texts) <= chunks else 2), texts  # map calls run side by side
    assert 2 in pool.threads  # the reduce made at least one lone call
    assert pool.lone_threads(0) == 2
    pool.infos[1]["node"] = "n2"  # the other actor's cores are on another machine
    assert pool.lone_threads(0) is None
    pool.infos[1]["node"], pool.use_gpu = "n1", True
    assert pool.lone_threads(0) is None  # a GPU call's speed is not the CPU threads'
