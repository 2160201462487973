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
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bench.level_bound import level_shapes
from bench.limit import Limit, Tally, count_levels, engine_threads, level_caps, measure_limit, template_tokens
from core.config import Config
from core.errors import UserError, first_line
from core.flags import add_config_flags, config_from_args
from evaluation.longdocs_data import load_longdocs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LONGDOCS = REPO.parent / "shared" / "data" / "longdocs" / "longdocs.jsonl"
DEFAULT_ADAPTER = "adapters/smollm2-cnndm"


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
