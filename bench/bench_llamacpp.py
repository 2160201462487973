"""Benchmark: llama.cpp beside the engine's transformers path, per chunk and per document.

    python -m bench.bench_llamacpp [--config configs/qwen25_cpu.yaml] [--adapter DIR]
        [--document examples/long_story.txt] [--probe-new-tokens 128] [--llama-cpp-src DIR]
        [--json PATH] [--dry-run] [config flags]

Needs llama-cpp-python, which is not a dependency of the project (a ~4 min build from its sdist):
    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-deps llama-cpp-python==0.3.36 diskcache
The model is the config's embedded GGUF as shipped (Q4_K_M for Qwen2.5-Coder-0.5B, kept by
core.embedded.fetch_gguf), the adapter (default adapters/qwen2.5-0.5b-cnndm) converted once by
llama.cpp's convert_lora_to_gguf.py (--llama-cpp-src: the sdist's vendor/llama.cpp).

Per chunk: the document's median-length chunk in the map prompt (core.prompt), then --probe-new-tokens
greedy tokens forced (stop tokens banned): prompt tok/s and new tok/s of llama.cpp at batch 1
on 1 and 2 threads, and of transformers (core.models.load_for_inference: the config's dtype, bf16
here, core/attention.py decode) on 1 and 2 threads at batch 1 and at the config's decode batch.

Per document: the whole map-reduce of --document, timed after start-up, with the same chunks,
prompts, caps, decoding and reduce (mapreduce.document.DocumentSteps): the engine on its Ray actors
(bench_longdocs.run_engine), llama.cpp in this process on 2 threads, and llama.cpp in two 1-thread
processes (a level's texts dealt one at a time). Each summary's words and, when the document has a
`.reference.txt` beside it, ROUGE-1/L F1 against it (one document: a sanity check, not a CI).
Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Optional

from bench.bench_longdocs import bench_main, load_baseline_model, run_engine, say, write_figures
from bench.limit import decode_batch, engine_threads, measure_decode, measure_prefill
from bench.llamacpp_backend import LlamaCppSummarize, ModelFiles, model_files, open_llama, require_llama_cpp
from core.config import Config
from core.errors import UserError
from core.flags import add_config_flags, config_from_args

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "qwen25_cpu.yaml"
DEFAULT_ADAPTER = REPO / "adapters" / "qwen2.5-0.5b-cnndm"
DEFAULT_DOCUMENT = REPO / "examples" / "long_story.txt"
LLAMA_PLANS = (("llama.cpp, 1 process x 2 threads", 1, 2), ("llama.cpp, 2 processes x 1 thread", 2, 1))


# --- per chunk -----------------------------------------------------------------------


def probe_prompt(cfg: Config, tokenizer, text: str) -> list[int]:
    """The map prompt of the document's median-length chunk, as the engine builds it."""
    from core.prompt import build_prompt_ids
    from mapreduce.document import DocumentSteps
    from mapreduce.chunking import Chunker

    chunks = DocumentSteps(cfg, Chunker.from_config(tokenizer, cfg)).chunk(text)
    prompts = sorted((build_prompt_ids(tokenizer, c.text, cfg.prompt_budget, cfg.data.prompt_template)
                      for c in chunks), key=len)
    return prompts[len(prompts) // 2]


def llama_rates(files: ModelFiles, prompt: list[int], new_tokens: int, threads: int) -> dict:
    """Prompt and new tok/s of one forced greedy generation, the better of two after loading."""
    llm = open_llama(files, threads, len(prompt) + new_tokens + 8)
    best = None
    for _ in range(2):
        started = time.perf_counter()
        llm.reset()
        llm.eval(prompt)
        prefilled = time.perf_counter()
        greedy_tail(llm, new_tokens)
        ended = time.perf_counter()
        if best is None or ended - started < best[0] + best[1]:
            best = (prefilled - started, ended - prefilled)
    del llm
    return {"backend": "llama.cpp", "threads": threads, "rows": 1,
            "prompt_tok_s": len(prompt) / best[0], "new_tok_s": new_tokens / best[1]}


def greedy_tail(llm, new_tokens: int) -> None:
    """new_tokens greedy steps after an evaluated prompt, no stop token honoured (a pure decode rate)."""
    import numpy as np

    from bench.llamacpp_backend import last_logits

    for _ in range(new_tokens):
        llm.eval([int(np.argmax(last_logits(llm)))])


def cpu_dtype_name(cfg: Config) -> str:
    """What `dtype: auto` becomes for CPU inference here (bfloat16 on native-bf16 CPUs)."""
    import torch

    from core.models import resolve_dtype

    return str(resolve_dtype(cfg.model.dtype, torch.device("cpu"))).replace("torch.", "")


def transformers_rates(cfg: Config, prompt: list[int], new_tokens: int) -> list[dict]:
    """The same probe on transformers, 2 then 1 thread, at batch 1 and at the config's decode batch."""
    import torch

    model, tokenizer = load_baseline_model(cfg, 2)
    dtype = cpu_dtype_name(cfg)
    rows_batched = decode_batch(cfg)
    rates = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        prefill = measure_prefill(model, tokenizer, prompt)
        for rows in (1, rows_batched):
            step_s, _ = measure_decode(model, tokenizer, prompt, rows, new_tokens)
            rates.append({"backend": f"transformers {dtype}", "threads": threads, "rows": rows,
                          "prompt_tok_s": prefill, "new_tok_s": rows / step_s})
    del model
    gc.collect()
    return rates


# --- per document --------------------------------------------------------------------


def run_llama_document(cfg: Config, tokenizer, files: ModelFiles, doc: tuple[str, str],
                       processes: int, threads: int, name: str) -> dict:
    """The whole map-reduce in this process tree on llama.cpp, timed once the model(s) loaded."""
    from mapreduce.chunking import Chunker
    from mapreduce.document import DocumentSteps

    say(f"{name}: loading ...")
    started = time.perf_counter()
    summarize = LlamaCppSummarize(cfg, tokenizer, files, processes=processes, threads=threads)
    loaded = time.perf_counter()
    try:
        result = DocumentSteps(cfg, Chunker.from_config(tokenizer, cfg)).run(doc[0], doc[1], summarize)
    finally:
        summarize.close()
    seconds = time.perf_counter() - loaded
    say(f"{name}: {seconds:.1f}s" + (f", failed: {result.error}" if not result.ok else ""))
    return {"run": name, "seconds": seconds, "start_s": loaded - started, "summary": result.summary or "",
            "error": result.error, "levels": [lv["name"] for lv in (result.tree or {}).get("levels", [])]}


def run_engine_document(cfg: Config, doc: tuple[str, str]) -> dict:
    run = run_engine(cfg, [doc])
    return {"run": f"engine, {cfg.mapreduce.num_workers} Ray actors ({cpu_dtype_name(cfg)})", "seconds": run.seconds,
            "summary": run.extra.get("summaries", [""])[0], "error": None if not run.failed else "failed"}


def score(row: dict, reference: Optional[str]) -> dict:
    from core.rouge import rouge_scores, word_count

    row["words"] = word_count(row["summary"])
    if reference:
        scores = rouge_scores(row["summary"], reference)
        row["rouge1_f1"], row["rougeL_f1"] = scores["rouge1"], scores["rougeL"]
    return row


# --- the report ----------------------------------------------------------------------


def print_report(rates: list[dict], documents: list[dict], prompt_tokens: int, new_tokens: int) -> None:
    print(f"per chunk: a {prompt_tokens}-token map prompt, then {new_tokens} forced greedy tokens")
    print(f"{'backend':<22} {'threads':>7} {'rows':>5} {'prompt tok/s':>13} {'new tok/s':>10}")
    for r in rates:
        print(f"{r['backend']:<22} {r['threads']:>7} {r['rows']:>5} {r['prompt_tok_s']:13.0f} {r['new_tok_s']:10.1f}")
    print("per document: the whole map-reduce, after start-up")
    engine = next((d for d in documents if d["run"].startswith("engine")), None)
    for d in documents:
        ratio = f"{d['seconds'] / engine['seconds']:.2f}x the engine's time" if engine else ""
        rouge = f"R1 F1 {d['rouge1_f1']:.3f}, RL F1 {d['rougeL_f1']:.3f}" if "rouge1_f1" in d else ""
        failed = f"  FAILED: {d['error']}" if d.get("error") else ""
        print(f"{d['run']:<38} {d['seconds']:7.1f} s  {ratio:<24} {d['words']:4d} words  {rouge}{failed}")


# --- main ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_llamacpp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--document", default=str(DEFAULT_DOCUMENT), help="a text file to summarize whole")
    parser.add_argument("--probe-new-tokens", type=int, default=128, help="forced greedy tokens of the per-chunk probe")
    parser.add_argument("--llama-cpp-src", help="llama.cpp's sources (convert_lora_to_gguf.py), to convert the adapter once")
    parser.add_argument("--skip-engine", action="store_true", help="no engine run (llama.cpp and the probes only)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--dry-run", action="store_true", help="config, files, chunks and the planned runs; no model")
    add_config_flags(parser, sections=("model", "data", "generation", "mapreduce"))
    return parser


def load_cfg(args: argparse.Namespace) -> Config:
    if args.config is None:
        args.config = str(DEFAULT_CONFIG)
    cfg = config_from_args(args)
    if "adapter" not in vars(args) and cfg.model.adapter is None:
        cfg.model.adapter = str(DEFAULT_ADAPTER)
    return cfg


def read_document(path: Path) -> tuple[tuple[str, str], Optional[str]]:
    if not path.is_file():
        raise UserError(f"no document at {path}")
    reference = path.with_name(path.stem + ".reference.txt")
    return (path.stem, path.read_text(encoding="utf-8")), (reference.read_text(encoding="utf-8")
                                                           if reference.is_file() else None)


def dry_run(cfg: Config, tokenizer, doc: tuple[str, str], prompt: list[int]) -> int:
    from mapreduce.chunking import Chunker
    from mapreduce.document import DocumentSteps

    chunks = DocumentSteps(cfg, Chunker.from_config(tokenizer, cfg)).chunk(doc[1])
    try:
        require_llama_cpp()
        have = "installed"
    except UserError as exc:
        have = f"missing ({exc})"
    print(f"document {doc[0]}: {len(chunks)} chunks; probe prompt {len(prompt)} tokens; llama-cpp-python {have}")
    print(f"model {cfg.model.base_model}, adapter {cfg.model.adapter}, dtype {cfg.model.dtype} ({cpu_dtype_name(cfg)}), "
          f"map cap {cfg.mapreduce.map_max_new_tokens}, summary_words {cfg.mapreduce.summary_words}")
    plans = [f"engine ({cfg.mapreduce.num_workers} actors, {engine_threads(cfg)} threads)"] + [p[0] for p in LLAMA_PLANS]
    for i, plan in enumerate(plans, 1):
        print(f"document run {i}: {plan}")
    return 0


def bench(args: argparse.Namespace) -> int:
    from core.models import load_tokenizer

    cfg = load_cfg(args)
    doc, reference = read_document(Path(args.document))
    tokenizer = load_tokenizer(cfg.model)
    prompt = probe_prompt(cfg, tokenizer, doc[1])
    if args.dry_run:
        return dry_run(cfg, tokenizer, doc, prompt)
    require_llama_cpp()
    files = model_files(cfg, args.llama_cpp_src)
    say(f"per chunk: {len(prompt)}-token prompt, {args.probe_new_tokens} new tokens")
    rates = [llama_rates(files, prompt, args.probe_new_tokens, threads) for threads in (2, 1)]
    rates += transformers_rates(cfg, prompt, args.probe_new_tokens)
    documents = [] if args.skip_engine else [run_engine_document(cfg, doc)]
    documents += [run_llama_document(cfg, tokenizer, files, doc, processes, threads, name)
                  for name, processes, threads in LLAMA_PLANS]
    documents = [score(d, reference) for d in documents]
    print_report(rates, documents, len(prompt), args.probe_new_tokens)
    write_figures(args.json, {"document": doc[0], "config": cfg.to_dict(), "probe_prompt_tokens": len(prompt),
                              "files": {k: str(v) for k, v in vars(files).items()},
                              "per_chunk": rates, "per_document": documents})
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return bench_main(build_parser(), bench, argv)


if __name__ == "__main__":
    sys.exit(main())
