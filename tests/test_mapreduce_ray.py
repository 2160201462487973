"""End to end on a local Ray cluster: the tiny random Qwen2 on 2 CPU actors, a 10k-token document.

One Ray cluster for the module; small chunks and max_new_tokens keep it quick. The tiny
model writes gibberish, so these tests check the machinery (every chunk summarized, levels,
spans, streaming, faults), not summary quality.
"""

from __future__ import annotations

import json

import pytest
import ray

from core.config import load_config
from mapreduce.engine import MapReduceEngine
from mapreduce.pool import FAULT_ENV, WorkerPool

from conftest import LONGDOCS

pytestmark = pytest.mark.slow


def _doc(min_tokens: int, max_tokens: int) -> dict:
    with open(LONGDOCS) as f:
        for line in f:
            row = json.loads(line)
            if min_tokens <= row["qwen_tokens"] <= max_tokens:
                return row
    raise AssertionError(f"no document of {min_tokens}-{max_tokens} tokens")


@pytest.fixture(scope="module")
def ray_cluster():
    # 3 logical CPUs: the shared 2-actor pool holds 2, the fault-injection pool needs 1 more
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _cfg(model_dir, **overrides):
    values = {
        "base_model": str(model_dir),
        "chunk_size": 200,
        "chunk_overlap": 20,
        "max_length": 256,
        "max_new_tokens": 16,
        "generation_batch_size": 8,
        "num_cpus_per_worker": 1.0,
        "num_workers": 2,
    }
    values.update(overrides)
    return load_config(None, values)


@pytest.fixture(scope="module")
def pool(ray_cluster, tiny_model_dir):
    pool = WorkerPool(_cfg(tiny_model_dir))
    infos = pool.wait_ready()
    assert [i["threads"] for i in infos] == [1, 1] and all(i["device"] == "cpu" for i in infos)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def long_doc() -> dict:
    return _doc(9500, 10500)


def _check_complete(result, text, chunk_size):
    """A finished result: every chunk summarized, levels chained, spans covering the text."""
    assert result.ok, result.error
    tree = result.tree
    chunks = tree["chunks"]
    levels = tree["levels"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    covered = [False] * len(text)
    for c in chunks:
        assert c["tokens"] <= chunk_size
        covered[c["start"]:c["end"]] = [True] * (c["end"] - c["start"])
    assert "".join(ch for ch, cov in zip(text, covered) if not cov).strip() == ""
    assert levels[-1]["name"] == "final" and len(levels[-1]["outputs"]) == 1
    assert levels[-1]["outputs"][0]["text"] == result.summary
    if len(chunks) > 1:
        assert levels[0]["name"] == "map"
        assert [i["sources"] for i in levels[0]["inputs"]] == [[c["index"]] for c in chunks]
        assert len(levels[0]["outputs"]) == len(chunks)
    for prev, level in zip(levels, levels[1:]):
        # each level's inputs use every output of the level before, in order
        used = [s for i in level["inputs"] for s in i["sources"]]
        assert sorted(set(used)) == list(range(len(prev["outputs"]))) and used == sorted(used)
        assert all(i["tokens"] <= chunk_size for i in level["inputs"])
    json.dumps(result.to_dict())  # the tree is JSON-ready


def test_ten_k_token_document(pool, long_doc, tiny_model_dir):
    cfg = _cfg(tiny_model_dir)
    events = []
    engine = MapReduceEngine(cfg, pool, on_progress=events.append)
    result = engine.summarize(long_doc["document"], doc_id=long_doc["id"])
    _check_complete(result, long_doc["document"], 200)
    names = [lv["name"] for lv in result.tree["levels"]]
    assert names[0] == "map" and names[-1] == "final" and "collapse-1" in names  # 50+ partials do not fit 200
    assert result.tokens["chunks"] >= 50 and result.tokens["document"] > 9000
    assert result.timings["total_s"] > 0 and result.timings["map_s"] > 0
    map_items = [e for e in events if e.kind == "item" and e.level == "map"]
    assert len(map_items) == result.tokens["chunks"] and map_items[-1].done == map_items[-1].total


def test_stream_of_documents(pool, long_doc, tiny_model_dir):
    cfg = _cfg(tiny_model_dir, max_docs_in_flight=2)
    engine = MapReduceEngine(cfg, pool)
    medium = _doc(7000, 7300)
    docs = [
        ("long", long_doc["document"]),
        ("empty", "  \n\t "),
        ("short", "The council approved the budget on Tuesday after a long debate about schools."),
        ("medium", medium["document"][:12000]),
    ]
    results = list(engine.run(iter(docs)))
    assert sorted(r.doc_id for r in results) == ["empty", "long", "medium", "short"]
    # the empty document fails at once (before the long one is done) and does not stop the stream
    assert results[0].doc_id == "empty" and results[0].error == "document is empty" and results[0].summary is None
    by_id = {r.doc_id: r for r in results}
    _check_complete(by_id["long"], long_doc["document"], 200)
    _check_complete(by_id["medium"], medium["document"][:12000], 200)
    short = by_id["short"]
    _check_complete(short, docs[2][1], 200)
    assert [(lv["name"], lv["template"]) for lv in short.tree["levels"]] == [("final", "document")]


def test_actor_killed_mid_run_still_completes(pool, long_doc, tiny_model_dir):
    pids_before = [i["pid"] for i in pool.wait_ready()]
    killed = []

    def kill_once(event):
        if event.kind == "item" and not killed:  # calls are in flight on both actors now
            ray.kill(pool.actors[0], no_restart=False)
            killed.append(event.done)

    engine = MapReduceEngine(_cfg(tiny_model_dir), pool, on_progress=kill_once)
    result = engine.summarize(long_doc["document"], doc_id="killed")
    assert killed
    _check_complete(result, long_doc["document"], 200)
    pids_after = [i["pid"] for i in pool.wait_ready()]
    assert pids_after[0] != pids_before[0] and pids_after[1] == pids_before[1]  # restarted, not replaced


def test_crash_in_a_task_and_a_chunk_that_always_fails(ray_cluster, tiny_model_dir, tmp_path, long_doc):
    marker = tmp_path / "crashed"
    cfg = _cfg(tiny_model_dir, num_workers=1, max_task_retries=1)
    faulty = WorkerPool(cfg, env={FAULT_ENV: f"crash-once:{marker},fail-text:POISONWORD,empty-text:BLANKWORD"})
    try:
        faulty.wait_ready()
        engine = MapReduceEngine(cfg, faulty)
        clean = long_doc["document"][:6000]
        poisoned = long_doc["document"][6000:9000] + "\n\nThis line has a POISONWORD in it.\n\n" + long_doc["document"][9000:12000]
        blank = "A short note whose summary comes back empty: BLANKWORD."
        docs = [("poisoned", poisoned), ("clean", clean), ("blank", blank)]
        results = {r.doc_id: r for r in engine.run(docs)}
    finally:
        faulty.close()
    assert marker.exists()  # the actor process really died once, inside a call
    _check_complete(results["clean"], clean, 200)  # in flight with the poisoned doc, unaffected
    bad = results["poisoned"]
    assert bad.summary is None and "\n" not in bad.error
    assert bad.error.startswith("map input") and "failed after retries" in bad.error and "POISONWORD" in bad.error
    # an empty final summary is a failed document, never an empty success
    assert results["blank"].summary is None
    assert results["blank"].error.startswith("the model returned an empty summary at the final level")
    assert results["clean"].tokens["empty_summaries"] == 0
