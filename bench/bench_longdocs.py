"""Benchmark: long documents through the Ray engine against one call at a time, and against the limit.

    python -m bench.bench_longdocs [--config configs/smollm2_cpu.yaml] [--adapter adapters/smollm2-cnndm]
        [--num-docs 3] [--longdocs-file ../shared/data/longdocs/longdocs.jsonl] [--json PATH] [config flags]

One process, the first N documents of the long-document file, three figures:
  baseline  the same model + adapter loaded here (core.models.load_for_inference), the same
            chunker, templates and reduce (mapreduce.api.Summarizer), but every text generated
            alone: batch size 1, one chunk after another, then the reduce calls.
  engine    open_engine(cfg) then list(engine.run(docs)), timed once the workers are ready.
  limit     what this machine's model speed allows for the work the run did, measured here
            on a real prompt of the baseline's median length: the prefill rate (prompt tokens/s
            of model.generate for one new token: best of 3 at batch 1, or the prefill of the
            decode measurement at D rows if faster) and the decode cost (seconds per step: the
            median gap between the steps of one max_new_tokens generation forced to full
            length, min_new_tokens = max_new_tokens, at D rows).

Both runs get the same cores: this process uses torch.set_num_threads(T), T = the threads the
engine's actors use together (num_workers x num_cpus_per_worker, capped at os.cpu_count()).
D, the decode batch of the limit, is what the engine decodes at once over all its actors:
generation_batch_size x num_workers rows, measured in one process with those T threads.

Tokens each run processed come from its levels (the engine's DocumentResult.tree, the
baseline's ReduceLevels, same counting for both): a prompt is its input's tokens plus its
template's tokens (exact when prompt_template == reduce template, the default); a summary
generated min(max_new_tokens, its tokens + 1) tokens (+1: the EOS step). The baseline also
meters model.generate directly, and the report prints how far the estimate is from it.

    limit_seconds = prompt_tokens / prefill_rate + (generated_tokens - texts) / D * decode_step_s

The first token of every text comes out of its prefill pass (timed with it); every further
token is one row of a decode step, and a step at batch D yields D tokens: full batches, no
padding, no row idling after its EOS, no Python logits processors (the repetition
processor's cost counts against the runs). It is a limit for one process with T threads;
W single-thread actors can beat it a little (no thread sync), so a share just above 1 can
happen. Each run's share is its own limit_seconds / its seconds.

Peak memory: ru_maxrss of this process after the baseline (model, tokenizer, Python); for
the engine, each actor's VmHWM read from /proc (local actors only; n/a otherwise).
Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bench.level_bound import level_shapes
from core.config import Config
from core.errors import UserError, first_line
from core.flags import add_config_flags, config_from_args
from evaluation.longdocs_data import load_longdocs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LONGDOCS = REPO.parent / "shared" / "data" / "longdocs" / "longdocs.jsonl"
DEFAULT_ADAPTER = "adapters/smollm2-cnndm"
PREFILL_REPEATS = 3


class BenchError(UserError):
    """A bad input to the benchmark (missing file, no documents); one line."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_figures(path: Optional[str], figures: dict) -> None:
    """--json: the run's figures for later tables (nothing written without a path)."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")
        say(f"wrote {path}")


def bench_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
               argv: Optional[list[str]] = None) -> int:
    """A bench's entry point: local-cluster environment, its flags, a bad input as one error line."""
    for key, value in (("RAY_AUTH_MODE", "disabled"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1


# --- inputs --------------------------------------------------------------------------


def first_documents(path: Path, n: int) -> list[tuple[str, str]]:
    """The first n (id, document) rows, read by evaluation's loader: the same checks and messages."""
    if n <= 0:
        raise BenchError(f"--num-docs must be positive, got {n}")
    return [(doc.id, doc.text) for doc in load_longdocs(path, n)]


def engine_threads(cfg: Config) -> int:
    """Threads the engine's actors use together (the pool gives each round(num_cpus_per_worker), >= 1)."""
    workers = cfg.mapreduce.num_workers or 1
    per_worker = max(1, round(cfg.mapreduce.num_cpus_per_worker))
    return max(1, min(os.cpu_count() or 1, workers * per_worker))


def decode_batch(cfg: Config) -> int:
    """Rows the engine decodes at once over all its actors: the limit's decode batch."""
    return cfg.generation.generation_batch_size * (cfg.mapreduce.num_workers or 1)


# --- counting ------------------------------------------------------------------------


@dataclass
class Tally:
    texts: int = 0  # texts summarized (one generation each)
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def __add__(self, other: "Tally") -> "Tally":
        return Tally(self.texts + other.texts, self.prompt_tokens + other.prompt_tokens,
                     self.generated_tokens + other.generated_tokens)


def count_levels(levels: list[dict], template_tokens: dict[str, int], cfg: Config) -> Tally:
    """Tokens a document's levels cost (dicts as in DocumentResult.tree["levels"]).

    A level the run did not finish (outputs None) counts its prompts only. A map output
    is capped at `map_max_new_tokens` (at most `max_new_tokens`) when it is set, every other at `max_new_tokens`.
    """
    tally = Tally()
    for shape in level_shapes(levels, template_tokens, level_caps(levels, cfg)):
        tally += Tally(shape["texts"], shape["prompt_tokens"], sum(shape["output_tokens"]))
    return tally


def level_caps(levels: list[dict], cfg: Config) -> dict[str, int]:
    from mapreduce.document import level_max_new_tokens

    return {lv["name"]: level_max_new_tokens(cfg, lv["name"]) or cfg.generation.max_new_tokens for lv in levels}


def template_tokens(tokenizer, cfg: Config) -> dict[str, int]:
    """Tokens each template adds around its text, keyed by the tree's template kind."""
    from core.prompt import template_token_count
    from mapreduce.chunking import reduce_template

    return {"document": template_token_count(tokenizer, cfg.data.prompt_template),
            "reduce": template_token_count(tokenizer, reduce_template(cfg))}


class GenerateMeter:
    """Counts what model.generate really did: calls, rows, prompt tokens (unpadded), decode steps."""

    def __init__(self):
        self.calls = self.rows = self.prompt_tokens = self.steps = self.generated_tokens = 0
        self.prompts: list[list[int]] = []  # the unpadded prompts, for the limit's probe prompt
        self._lock = threading.Lock()  # bench_langgraph's recipe calls generate from several threads at once

    @contextmanager
    def attach(self, model):
        original = model.generate

        def generate(*args, **kwargs):
            out = original(*args, **kwargs)
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            steps = out.shape[1] - ids.shape[1]
            prompts = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
            with self._lock:
                self.calls += 1
                self.rows += ids.shape[0]
                self.prompt_tokens += sum(len(p) for p in prompts)
                self.steps += steps
                self.generated_tokens += steps * ids.shape[0]  # exact at batch 1 (the baseline)
                self.prompts.extend(prompts)
            return out

        model.generate = generate
        try:
            yield self
        finally:
            del model.generate

    def median_prompt(self) -> list[int]:
        """A real prompt of the run's median length: the limit's prompt."""
        if not self.prompts:
            raise BenchError("the baseline generated nothing (every document failed): no prompt to measure the limit on")
        ordered = sorted(self.prompts, key=len)
        return ordered[len(ordered) // 2]


# --- the runs ------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    seconds: float
    docs: int
    failed: int
    tally: Tally
    peak_rss_mib: list[Optional[float]] = field(default_factory=list)
    rss_note: str = ""
    extra: dict = field(default_factory=dict)


def self_peak_rss_mib() -> float:
    """This process's RSS high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_baseline_model(cfg: Config, threads: int):
    """(model, tokenizer) in this process with the engine's total threads."""
    import torch

    from core.models import check_adapter_dir, load_for_inference

    if cfg.model.adapter:
        check_adapter_dir(cfg.model.adapter)  # one line now, before the base model loads
    cfg = copy.deepcopy(cfg)
    cfg.model.num_threads = threads
    model, tokenizer = load_for_inference(cfg.model)
    torch.set_num_threads(threads)
    return model, tokenizer


def run_baseline(cfg: Config, model, tokenizer, docs: list[tuple[str, str]]) -> tuple[Run, GenerateMeter]:
    """Summarizer's chunk -> map -> reduce with batch size 1: every text its own generate call."""
    from mapreduce.api import Summarizer

    one = copy.deepcopy(cfg)
    one.generation.generation_batch_size = 1
    summarizer = Summarizer(one, model, tokenizer)
    costs, tally, failed = template_tokens(tokenizer, cfg), Tally(), 0
    with GenerateMeter().attach(model) as meter:
        started = time.perf_counter()
        for i, (doc_id, text) in enumerate(docs, 1):
            t0 = time.perf_counter()
            result = summarizer.summarize(text, doc_id)
            if not result.ok:
                failed += 1
                say(f"baseline {i}/{len(docs)} {doc_id}: failed: {result.error}")
                continue
            levels = result.tree["levels"]
            tally += count_levels(levels, costs, cfg)
            say(f"baseline {i}/{len(docs)} {doc_id}: {result.tokens['chunks']} chunks, "
                f"{'/'.join(lv['name'] for lv in levels)} in {time.perf_counter() - t0:.1f}s")
        seconds = time.perf_counter() - started
    metered = {k: getattr(meter, k) for k in ("calls", "rows", "prompt_tokens", "steps", "generated_tokens")}
    run = Run("baseline", seconds, len(docs), failed, tally, [self_peak_rss_mib()], "this process",
              {"batch_size": 1, "metered": metered})
    return run, meter


def actor_peak_rss_mib(pool) -> tuple[list[Optional[float]], list[dict]]:
    """Each actor's VmHWM from /proc (same machine only), and the actors' info() dicts."""
    import ray

    try:
        infos = ray.get([actor.info.remote() for actor in getattr(pool, "actors", [])], timeout=60)
    except Exception:
        return [], []
    return [_vm_hwm_mib(info["pid"]) for info in infos], infos


def _vm_hwm_mib(pid: int) -> Optional[float]:
    """A local Ray worker's high-water RSS; None when the pid is not one here (remote actor)."""
    try:
        if b"ray" not in Path(f"/proc/{pid}/cmdline").read_bytes().lower():
            return None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_engine(cfg: Config, docs: list[tuple[str, str]], opener: Optional[Callable] = None) -> Run:
    """open_engine(cfg), then every document through engine.run, timed once the workers are ready."""
    from mapreduce.engine import open_engine

    def progress(event) -> None:
        if event.kind == "finished":
            say(f"engine: {event.doc_id} finished" + (f" with error: {event.error}" if event.error else ""))

    opener = opener or open_engine
    with opener(cfg, on_progress=progress, say=say) as engine:
        started = time.perf_counter()
        results = list(engine.run(docs))
        seconds = time.perf_counter() - started
        peaks, infos = actor_peak_rss_mib(engine.pool)
        costs = template_tokens(engine.chunker.tokenizer, cfg)
    tally, shapes = Tally(), []
    for result in results:
        levels = (result.tree or {}).get("levels", [])
        tally += count_levels(levels, costs, cfg)
        shapes.append(level_shapes(levels, costs, level_caps(levels, cfg)))
    failed = [r for r in results if not r.ok]
    if failed:
        say(f"engine: {len(failed)} failed, first: {failed[0].error}")
    workers = len(infos) or (cfg.mapreduce.num_workers or 1)
    return Run("engine", seconds, len(docs), len(failed), tally, peaks,
               f"each of {workers} actor(s)" if peaks else "n/a",
               {"batch_size": cfg.generation.generation_batch_size, "workers": infos,
                "summaries": [r.summary or "" for r in results], "level_shapes": shapes})


# --- the limit -----------------------------------------------------------------------


@dataclass
class Limit:
    threads: int
    decode_batch: int
    probe_prompt_tokens: int
    prefill_tokens_per_s: float  # the faster of the two prefill figures below
    prefill_batch1_tokens_per_s: float
    prefill_decode_batch_tokens_per_s: float
    decode_step_s: float  # one step at decode_batch rows
    decode_step_1row_s: float = 0.0  # one step at 1 row (bench.level_bound); 0: not measured

    def seconds(self, tally: Tally) -> float:
        """Prefill every prompt at the best rate, then full decode batches for the other tokens."""
        return limit_seconds(tally, self.prefill_tokens_per_s, self.decode_step_s, self.decode_batch)


def limit_seconds(tally: Tally, prefill_tokens_per_s: float, decode_step_s: float, batch: int) -> float:
    """prompt_tokens / prefill rate + (generated - texts) / batch steps x seconds per step."""
    decode_steps = max(0, tally.generated_tokens - tally.texts) / batch
    return tally.prompt_tokens / prefill_tokens_per_s + decode_steps * decode_step_s


def step_clock():
    """A stopping criterion that never stops: `.stamps` gets the time after every generated token."""
    import torch
    from transformers import StoppingCriteria

    class StepClock(StoppingCriteria):
        def __init__(self):
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            self.stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StepClock()


def _forced_generate(model, tokenizer, prompt: list[int], rows: int, new_tokens: int, clock=None) -> float:
    """Seconds for model.generate of exactly new_tokens on `rows` copies of a prompt (no padding)."""
    import torch
    from transformers import StoppingCriteriaList

    from core.generation import stop_token_ids

    device = next(model.parameters()).device
    ids = torch.tensor([prompt] * rows, dtype=torch.long, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stopping = StoppingCriteriaList([clock]) if clock is not None else None
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
                       eos_token_id=stop_token_ids(model, tokenizer), use_cache=True, stopping_criteria=stopping)
    return time.perf_counter() - started


def measure_prefill(model, tokenizer, prompt: list[int], repeats: int = PREFILL_REPEATS) -> float:
    """Prompt tokens/s of a one-token generation on one prompt, best of `repeats` after a warm-up."""
    _forced_generate(model, tokenizer, prompt, 1, 1)
    best = min(_forced_generate(model, tokenizer, prompt, 1, 1) for _ in range(repeats))
    return len(prompt) / best


def measure_decode(model, tokenizer, prompt: list[int], rows: int, steps: int) -> tuple[float, float]:
    """(median seconds per decode step, prefill tokens/s) of one forced generation at `rows` rows.

    One generation, stamped at every step, rather than two timed ones differenced: the
    prefill of rows x prompt tokens dwarfs the steps, and its noise would swamp them.
    """
    clock = step_clock()
    started = time.perf_counter()
    _forced_generate(model, tokenizer, prompt, rows, max(2, steps), clock)
    gaps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    return statistics.median(gaps), rows * len(prompt) / (clock.stamps[0] - started)


def decode_steps(cfg: Config) -> int:
    """Steps the decode cost is measured over: a map call's cap, as most calls are map calls."""
    from mapreduce.document import level_max_new_tokens

    return level_max_new_tokens(cfg, "map") or cfg.generation.max_new_tokens


def measure_limit(model, tokenizer, prompt: list[int], cfg: Config, threads: int) -> Limit:
    """The model's own speed on this machine with the engine's threads and decode batch."""
    rows = decode_batch(cfg)
    say(f"limit: prefill of a {len(prompt)}-token prompt, then {decode_steps(cfg)} decode steps "
        f"at {rows} rows ({threads} threads) ...")
    batch1 = measure_prefill(model, tokenizer, prompt)
    step_s, batched = measure_decode(model, tokenizer, prompt, rows, decode_steps(cfg))
    step_1row_s, _ = measure_decode(model, tokenizer, prompt, 1, decode_steps(cfg))
    return Limit(threads, rows, len(prompt), max(batch1, batched), batch1, batched, step_s, step_1row_s)


# --- the report ----------------------------------------------------------------------


def run_row(run: Run, limit: Limit) -> dict:
    """One table row's figures; share = this run's own limit_seconds / its seconds."""
    own_limit = limit.seconds(run.tally)
    return {
        "run": run.name, "seconds": run.seconds, "docs": run.docs, "failed": run.failed,
        "docs_per_min": 60 * run.docs / run.seconds,
        "prompt_tokens_per_s": run.tally.prompt_tokens / run.seconds,
        "generated_tokens_per_s": run.tally.generated_tokens / run.seconds,
        "peak_rss_mib": run.peak_rss_mib, "rss_note": run.rss_note,
        "limit_seconds": own_limit, "share_of_limit": own_limit / run.seconds,
        "tokens": asdict(run.tally), **run.extra,
    }


def limit_row(engine: Run, limit: Limit) -> dict:
    seconds = limit.seconds(engine.tally)
    return {"run": "limit", "seconds": seconds, "docs": engine.docs, "docs_per_min": 60 * engine.docs / seconds,
            "prompt_tokens_per_s": engine.tally.prompt_tokens / seconds,
            "generated_tokens_per_s": engine.tally.generated_tokens / seconds,
            "peak_rss_mib": [], "rss_note": "", "share_of_limit": 1.0, **asdict(limit)}


def _rss_cell(row: dict) -> str:
    known = [m for m in row["peak_rss_mib"] if m is not None]
    if not known:
        return row["rss_note"] or "-"
    if len(row["peak_rss_mib"]) == 1:
        return f"{known[0]:.0f} MiB ({row['rss_note']})"
    return f"max {max(known):.0f} MiB ({row['rss_note']})"


def print_table(rows: list[dict], limit: Limit, baseline: Run) -> None:
    print(f"{'run':<9} {'seconds':>9} {'docs/min':>9} {'prompt tok/s':>13} {'gen tok/s':>10} "
          f"{'share of limit':>15}  peak RSS per process")
    for row in rows:
        failed = f"  ({row['failed']} failed)" if row.get("failed") else ""
        print(f"{row['run']:<9} {row['seconds']:9.1f} {row['docs_per_min']:9.3f} {row['prompt_tokens_per_s']:13.1f} "
              f"{row['generated_tokens_per_s']:10.2f} {row['share_of_limit']:15.2f}  {_rss_cell(row)}{failed}")
    by_name = {row["run"]: row for row in rows}
    print(f"engine / baseline: {by_name['baseline']['seconds'] / by_name['engine']['seconds']:.2f}x docs/min")
    print(f"limit: prefill {limit.prefill_tokens_per_s:.0f} prompt tok/s (batch 1 {limit.prefill_batch1_tokens_per_s:.0f},"
          f" batch {limit.decode_batch} {limit.prefill_decode_batch_tokens_per_s:.0f}), decode "
          f"{1000 * limit.decode_step_s:.1f} ms/step at {limit.decode_batch} rows "
          f"= {limit.decode_batch / limit.decode_step_s:.0f} tok/s, {limit.threads} threads, "
          f"{limit.probe_prompt_tokens}-token prompt")
    metered = baseline.extra["metered"]
    estimate = baseline.tally
    print(f"token counts, estimated from levels vs metered (baseline): prompt {estimate.prompt_tokens} vs "
          f"{metered['prompt_tokens']}, generated {estimate.generated_tokens} vs {metered['generated_tokens']}, "
          f"texts {estimate.texts} vs {metered['calls']} generate calls")


# --- main ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_longdocs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-docs", type=int, default=3)
    parser.add_argument("--longdocs-file", default=str(DEFAULT_LONGDOCS), help="JSONL with id, document and summary fields")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    add_config_flags(parser, sections=("model", "data", "generation", "mapreduce", "batch"))
    return parser


def load_cfg(args: argparse.Namespace) -> Config:
    """The config (default configs/smollm2_cpu.yaml) with the news adapter unless --adapter says otherwise."""
    if args.config is None:
        args.config = str(REPO / "configs" / "smollm2_cpu.yaml")
    cfg = config_from_args(args)
    if "adapter" not in vars(args) and cfg.model.adapter is None:
        cfg.model.adapter = str(REPO / DEFAULT_ADAPTER)
    return cfg


def bench(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    docs = first_documents(Path(args.longdocs_file), args.num_docs)
    threads = engine_threads(cfg)
    say(f"{len(docs)} documents; baseline and limit with {threads} threads (the engine's actors together)")
    model, tokenizer = load_baseline_model(cfg, threads)
    baseline, meter = run_baseline(cfg, model, tokenizer, docs)
    limit = measure_limit(model, tokenizer, meter.median_prompt(), cfg, threads)
    del model, meter
    gc.collect()
    engine = run_engine(cfg, docs)
    rows = [run_row(baseline, limit), run_row(engine, limit), limit_row(engine, limit)]
    print_table(rows, limit, baseline)
    write_figures(args.json, {"docs": [doc_id for doc_id, _ in docs], "threads": threads, "config": cfg.to_dict(),
                              "runs": rows, "engine_over_baseline": baseline.seconds / engine.seconds})
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return bench_main(build_parser(), bench, argv)


if __name__ == "__main__":
    sys.exit(main())
