"""llama.cpp (llama-cpp-python) as a summarizer with the engine's prompts and decoding: the bench's peer.

    files = model_files(cfg, llama_cpp_src)        # the GGUF (core.embedded.fetch_gguf), the adapter in GGUF
    summarize = LlamaCppSummarize(cfg, tokenizer, files, processes=1, threads=2)
    summarize(texts, template, max_new_tokens)     # -> one summary per text (DocumentSteps.run's callable)

Not a runtime backend: the README's throughput section says why (measured by bench.bench_llamacpp).
The same as the engine's transformers path: the prompts (core.prompt.build_prompt_ids with the
config's budget, token ids handed to llama.cpp as they are), greedy decoding, the stop tokens
(core.generation.stop_token_ids), no_repeat_ngram_size over the generated tokens only
(core.generation.banned_next_tokens), an empty answer retried with at least
RETRY_MIN_NEW_TOKENS, and the decoding of the ids (core.decoding.decode_generated).
repetition_penalty other than 1.0 is not reproduced (the CPU profiles use 1.0): BenchError.

llama.cpp's AMX weight buffers are switched off (`use_extra_bufts = False`): in the 0.3.36
build on the 2-core Xeon (AMX) their matmul segfaults on the first decode; the AVX-512 path runs.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

from core.errors import UserError


class LlamaCppError(UserError):
    """llama.cpp missing, or a file it needs that cannot be made: one line, exit 1."""


@dataclass(frozen=True)
class ModelFiles:
    gguf: Path  # the base model as shipped (quantized), what llama.cpp reads
    lora: Optional[Path]  # the adapter converted to llama.cpp's LoRA GGUF; None: base model
    model_dir: Path  # the converted safetensors dir: tokenizer and generation_config


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppError('llama-cpp-python is not installed: CMAKE_ARGS="-DGGML_NATIVE=ON" '
                            "pip install --no-deps llama-cpp-python==0.3.36 diskcache (a ~4 min build)") from None
    return llama_cpp


def model_files(cfg, llama_cpp_src: Optional[str]) -> ModelFiles:
    """The GGUF of the config's embedded base model and, if it names an adapter, that adapter as a GGUF."""
    from core.embedded import EMBEDDED_PREFIX, fetch_gguf, resolve_embedded

    base = cfg.model.base_model
    if not base.startswith(EMBEDDED_PREFIX):
        raise LlamaCppError(f"base_model {base!r}: llama.cpp needs a GGUF, which only the embedded models have")
    gguf = fetch_gguf(base[len(EMBEDDED_PREFIX):])
    model_dir = Path(resolve_embedded(base))
    lora = convert_adapter(Path(cfg.model.adapter), model_dir, llama_cpp_src) if cfg.model.adapter else None
    return ModelFiles(gguf, lora, model_dir)


def convert_adapter(adapter_dir: Path, model_dir: Path, llama_cpp_src: Optional[str]) -> Path:
    """llama.cpp's convert_lora_to_gguf.py over a PEFT adapter, once: cached by the weights' sha256."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise LlamaCppError(f"{adapter_dir} holds no adapter_model.safetensors")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    target = gguf_cache() / f"lora-{adapter_dir.name}-{digest}.gguf"
    if target.exists():
        return target
    script = Path(llama_cpp_src or "") / "convert_lora_to_gguf.py"
    if not llama_cpp_src or not script.is_file():
        raise LlamaCppError(f"the adapter is not converted yet: pass --llama-cpp-src DIR, llama.cpp's sources "
                            f"(the sdist's vendor/llama.cpp) with convert_lora_to_gguf.py; it goes to {target}")
    partial = target.with_suffix(".partial")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(script.parent / "gguf-py"), str(script.parent)]))
    proc = subprocess.run([sys.executable, str(script), "--base", str(model_dir), "--outfile", str(partial),
                           "--outtype", "f32", str(adapter_dir)], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not partial.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LlamaCppError(f"convert_lora_to_gguf.py failed on {adapter_dir}: {last}")
    partial.rename(target)
    return target


def gguf_cache() -> Path:
    from core.embedded import cache_dir

    path = cache_dir() / "gguf"
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_llama(files: ModelFiles, threads: int, n_ctx: int):
    """A llama.cpp model on `threads` threads, the adapter applied, without the AMX buffers (see above)."""
    llama_cpp = require_llama_cpp()
    module = llama_cpp.llama_cpp
    default = getattr(module, "_bench_default_model_params", module.llama_model_default_params)

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    module._bench_default_model_params = default
    module.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(str(files.gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                               n_batch=512, lora_path=str(files.lora) if files.lora else None, verbose=False)
    finally:
        module.llama_model_default_params = default


def last_logits(llm):
    import numpy as np

    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def greedy(llm, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int],
           no_repeat_ngram_size: int = 0, min_new_tokens: int = 0) -> list[int]:
    """The generated ids of a greedy continuation (stop token excluded), as core.generation decodes."""
    import numpy as np

    from core.generation import banned_next_tokens

    llm.reset()
    llm.eval(list(prompt))
    out: list[int] = []
    while len(out) < max_new_tokens:
        logits = last_logits(llm).copy()
        banned = banned_next_tokens(out, no_repeat_ngram_size) + (list(stop_ids) if len(out) < min_new_tokens else [])
        logits[banned] = -np.inf
        token = int(np.argmax(logits))
        if token in stop_ids:
            break
        out.append(token)
        llm.eval([token])
    return out


class LlamaCppSummarize:
    """summarize(texts, template, max_new_tokens) on llama.cpp: in this process, or dealt over processes."""

    def __init__(self, cfg, tokenizer, files: ModelFiles, processes: int = 1, threads: int = 2):
        from transformers import GenerationConfig

        from core.generation import stop_token_ids

        if cfg.generation.repetition_penalty != 1.0:
            raise LlamaCppError("the llama.cpp peer reproduces repetition_penalty 1.0 only")
        self.cfg, self.tokenizer, self.files = cfg, tokenizer, files
        config = GenerationConfig.from_pretrained(str(files.model_dir))
        self.stop_ids = stop_token_ids(SimpleNamespace(generation_config=config), tokenizer)
        n_ctx = cfg.prompt_budget + max(cfg.generation.max_new_tokens, cfg.mapreduce.map_max_new_tokens or 0) + 8
        self.settings = (self.stop_ids, cfg.generation.no_repeat_ngram_size, cfg.generation.max_new_tokens)
        self.processes = processes
        if processes == 1:
            self.llm, self.pool = open_llama(files, threads, n_ctx), None
        else:
            # an executor, not multiprocessing.Pool: a worker that dies (a crash in llama.cpp) fails the
            # call with BrokenProcessPool instead of being replaced for ever
            self.llm, self.pool = None, ProcessPoolExecutor(processes, multiprocessing.get_context("spawn"),
                                                            _start_worker, (files, threads, n_ctx, self.settings))
            pids = set(self.pool.map(_ping, range(processes)))  # every worker loaded before anything is timed
            if len(pids) != processes:
                raise LlamaCppError(f"{len(pids)} of {processes} llama.cpp processes started")

    def __call__(self, texts: list[str], template: str, max_new_tokens: Optional[int] = None) -> list[str]:
        from core.decoding import decode_generated
        from core.prompt import build_prompt_ids

        prompts = [build_prompt_ids(self.tokenizer, t, self.cfg.prompt_budget, template) for t in texts]
        jobs = [(p, max_new_tokens) for p in prompts]
        if self.pool is None:
            generated = [_generate(self.llm, self.settings, job) for job in jobs]
        else:
            generated = list(self.pool.map(_worker_generate, jobs))  # one prompt at a time: even load
        return [decode_generated(self.tokenizer, ids) for ids in generated]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _generate(llm, settings, job) -> list[int]:
    from core.generation import RETRY_MIN_NEW_TOKENS

    stop_ids, no_repeat, default_cap = settings
    prompt, cap = job
    cap = cap or default_cap
    ids = greedy(llm, prompt, cap, stop_ids, no_repeat)
    if not ids:  # as generate_summaries(retry_empty=True): a part of the document is not lost
        ids = greedy(llm, prompt, cap, stop_ids, no_repeat, min_new_tokens=min(cap, RETRY_MIN_NEW_TOKENS))
    return ids


_WORKER: dict = {}


def _start_worker(files: ModelFiles, threads: int, n_ctx: int, settings) -> None:
    _WORKER["llm"], _WORKER["settings"] = open_llama(files, threads, n_ctx), settings


def _ping(_):
    time.sleep(1.0)  # held long enough that each of the first calls lands on its own new worker
    return os.getpid()


def _worker_generate(job) -> list[int]:
    return _generate(_WORKER["llm"], _WORKER["settings"], job)
