"""Limits users see before a long wait: a hung worker ends in an error, a huge input is refused."""

from __future__ import annotations

import pytest

import mapreduce.engine as engine_module
from core.config import load_config
from mapreduce.engine import MapReduceEngine, check_document_size
from mapreduce.pool import WorkerError

from fakes import FakePool


def test_a_worker_that_never_answers_ends_in_an_error(qwen_tokenizer, monkeypatch):
    """Its call times out and is retried; its ping never answers either: the run ends, it does not hang."""
    pool = FakePool(workers=1)
    pool.hung.add(0)
    monkeypatch.setattr(engine_module.ray, "wait", pool.wait)
    monkeypatch.setattr(engine_module.ray, "cancel", pool.cancel)
    monkeypatch.setattr(engine_module, "clock", lambda: pool.clock)
    cfg = load_config(None, {"max_length": 256, "max_new_tokens": 16, "chunk_size": 200, "chunk_overlap": 20,
                             "call_timeout_s": 7, "start_timeout_s": 60})
    engine = MapReduceEngine(cfg, pool, tokenizer=qwen_tokenizer)
    with pytest.raises(WorkerError, match="no worker came back within 60s"):
        list(engine.run([("doc", "The council met on Monday. " * 20)]))
    assert pool.clock == 7 + 60 and len(pool.calls) == 1 and pool.cancelled


def test_document_size_limit_is_configurable():
    cfg = load_config(None, {"max_document_tokens": 1000})
    check_document_size(1000, cfg)
    with pytest.raises(ValueError, match="1,001 tokens, above max_document_tokens .*--max-document-tokens 0"):
        check_document_size(1001, cfg)
    check_document_size(10**9, load_config(None, {"max_document_tokens": 0}))  # 0: no limit
