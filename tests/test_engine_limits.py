"""Limits users see before a long wait: a hung worker ends in an error, a huge input is refused."""

from __future__ import annotations

import pytest

import mapreduce.engine as engine_module
from core.config import load_config
from mapreduce.engine import MapReduceEngine, check_document_size
from mapreduce.pool import WorkerError


class HungPool:
    """Accepts every call and never answers."""

    def __init__(self):
        self.alive = [True]
        self.calls = 0

    def __len__(self):
        return 1

    def submit(self, worker, texts, template, max_new_tokens=None):
        self.calls += 1
        return object()


def test_a_worker_that_never_answers_ends_in_an_error(qwen_tokenizer, monkeypatch):
    waited = {}

    def fake_wait(refs, num_returns, timeout):
        waited["timeout"] = timeout
        return [], refs  # nothing finished within the timeout

    monkeypatch.setattr(engine_module.ray, "wait", fake_wait)
    monkeypatch.setattr(engine_module.ray, "cancel", lambda ref: None)
    cfg = load_config(None, {"max_length": 256, "max_new_tokens": 16, "chunk_size": 200, "chunk_overlap": 20,
                             "call_timeout_s": 7})
    pool = HungPool()
    engine = MapReduceEngine(cfg, pool, tokenizer=qwen_tokenizer)
    with pytest.raises(WorkerError, match="no worker answered within 7s"):
        list(engine.run([("doc", "The council met on Monday. " * 20)]))
    assert waited["timeout"] == 7 and pool.calls == 1


def test_document_size_limit_is_configurable():
    cfg = load_config(None, {"max_document_tokens": 1000})
    check_document_size(1000, cfg)
    with pytest.raises(ValueError, match="1,001 tokens, above max_document_tokens .*--max-document-tokens 0"):
        check_document_size(1001, cfg)
    check_document_size(10**9, load_config(None, {"max_document_tokens": 0}))  # 0: no limit
