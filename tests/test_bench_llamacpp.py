"""bench.llamacpp_backend / bench.bench_llamacpp without llama-cpp-python: its decoding loop over a
torch model must give what core.generation gives; the files it needs fail as one line."""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import bench.bench_llamacpp as blc
import bench.llamacpp_backend as backend
from core.config import load_config
from core.generation import summarize_texts, with_max_new_tokens

SETTINGS = dict(max_length=160, max_new_tokens=12, no_repeat_ngram_size=3, repetition_penalty=1.0,
                generation_batch_size=1, device="cpu", dtype="float32")
TEXTS = ["The council met on Monday and voted to close the old bridge for repairs.",
         "Fans waited for hours in the rain; the band played two encores and thanked the city."]


class TorchLlama:
    """What the backend uses of llama_cpp.Llama (reset, eval, n_vocab, _ctx.get_logits) over a torch model."""

    def __init__(self, model):
        self.model, self.tokens, self.evals = model, [], []
        self._logits = np.zeros(model.config.vocab_size, dtype=np.float32)
        self._ctx = SimpleNamespace(get_logits=lambda: self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))

    def n_vocab(self) -> int:
        return self.model.config.vocab_size

    def reset(self) -> None:
        self.tokens = []

    def eval(self, tokens) -> None:
        self.tokens += list(tokens)
        self.evals.append(len(tokens))
        with torch.inference_mode():
            self._logits[:] = self.model(torch.tensor([self.tokens])).logits[0, -1].float().numpy()


@pytest.fixture(scope="module")
def tiny(lively_model_dir):
    from core.models import load_for_inference

    cfg = load_config(None, dict(SETTINGS, base_model=str(lively_model_dir)))
    model, tokenizer = load_for_inference(cfg.model)
    return cfg, model, tokenizer


def test_llama_loop_writes_what_core_generation_writes(tiny, lively_model_dir, monkeypatch):
    cfg, model, tokenizer = tiny
    fake = TorchLlama(model)
    monkeypatch.setattr(backend, "open_llama", lambda files, threads, n_ctx: fake)
    files = backend.ModelFiles(Path("unused.gguf"), None, Path(lively_model_dir))
    summarize = backend.LlamaCppSummarize(cfg, tokenizer, files, processes=1, threads=1)
    ours = summarize(TEXTS, cfg.data.prompt_template, 10)
    theirs = summarize_texts(model, tokenizer, TEXTS, cfg.data.prompt_template, cfg.prompt_budget,
                             with_max_new_tokens(cfg.generation, 10))
    assert ours == theirs and all(ours)
    assert fake.evals.count(1) > 0 and max(fake.evals) > 20  # a prompt at once, then one token a step


class ScriptedLlama(TorchLlama):
    """Logits that put `first` on top at the first step, then token 7 for ever."""

    def __init__(self, vocab: int, first: int):
        super().__init__(SimpleNamespace(config=SimpleNamespace(vocab_size=vocab)))
        self.first = first

    def eval(self, tokens) -> None:
        self.tokens += list(tokens)
        self._logits[:] = 0.0
        self._logits[7] = 1.0
        if len(tokens) > 1:  # the prompt
            self._logits[self.first] = 2.0


def test_greedy_stops_bans_repeats_and_honours_a_minimum():
    stop = 2
    assert backend.greedy(ScriptedLlama(10, stop), [1, 1, 1], 5, [stop]) == []
    assert backend.greedy(ScriptedLlama(10, stop), [1, 1, 1], 5, [stop], min_new_tokens=3) == [7, 7, 7, 7, 7]
    # no_repeat_ngram_size 2: after 7 7, a third 7 would repeat the bigram (7, 7); the next best is token 0
    assert backend.greedy(ScriptedLlama(10, 5), [1, 1, 1], 5, [stop], no_repeat_ngram_size=2) == [5, 7, 7, 0, 7]


def test_an_empty_answer_is_retried_with_a_minimum_length():
    from core.generation import RETRY_MIN_NEW_TOKENS

    assert backend.greedy(ScriptedLlama(10, 2), [1, 1, 1], 12, [2]) == []  # EOS at once
    ids = backend._generate(ScriptedLlama(10, 2), ([2], 0, 12), ([1, 1, 1], None))  # None: the default cap, 12
    assert RETRY_MIN_NEW_TOKENS <= len(ids) <= 12 and set(ids) == {7}


def test_repetition_penalty_other_than_one_is_refused(tiny, lively_model_dir):
    cfg, _, tokenizer = tiny
    penalized = load_config(None, dict(SETTINGS, base_model=cfg.model.base_model, repetition_penalty=1.2))
    with pytest.raises(backend.LlamaCppError, match="repetition_penalty 1.0 only"):
        backend.LlamaCppSummarize(penalized, tokenizer, backend.ModelFiles(Path("x"), None, Path(lively_model_dir)))


def test_files_it_cannot_make_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SUMMARIZER_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, {"base_model": "Qwen/Qwen2.5-3B-Instruct"})
    with pytest.raises(backend.LlamaCppError, match="only the embedded models have"):
        backend.model_files(cfg, None)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(backend.LlamaCppError, match="holds no adapter_model.safetensors"):
        backend.convert_adapter(adapter, tmp_path, None)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(backend.LlamaCppError, match="pass --llama-cpp-src"):
        backend.convert_adapter(adapter, tmp_path, str(tmp_path / "no-sources"))


def test_dry_run_plans_the_three_document_runs_and_loads_no_model(embedded_model_dir, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr("core.models.load_base_model", no_model)
    assert blc.main(["--dry-run", "--config", "configs/smollm2_cpu.yaml", "--adapter", "adapters/smollm2-cnndm"]) == 0
    out = capsys.readouterr().out
    assert "document long_story: " in out and " chunks; probe prompt " in out
    assert [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("document run")] == [
        "engine (2 actors, 2 threads)", "llama.cpp, 1 process x 2 threads", "llama.cpp, 2 processes x 1 thread"]


def test_a_missing_document_is_one_line(capsys):
    assert blc.main(["--dry-run", "--document", "no/such/file.txt"]) == 1
    assert capsys.readouterr().err.strip() == "error: no document at no/such/file.txt"
