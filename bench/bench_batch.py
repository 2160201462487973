"""Benchmark: the batch job's throughput against one-document-at-a-time, and 1 vs 2 actors.

    python -m bench.bench_batch --adapter adapters/smollm2-cnndm [--num-docs 12] [--config configs/smollm2_cpu.yaml] [config flags]

All three runs summarize the same documents with the same model in one process, timed
after the workers have loaded their models:
  sequential  1 actor, documents one at a time (engine.summarize per document)
  batch x1    1 actor, the batch job's streaming engine (chunks of many documents batched)
  batch x2    2 actors, the same streaming engine
Each actor gets num_cpus_per_worker threads (default 1), so "batch x2" also uses twice
the cores: on a 2-core machine that is the whole machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

from core.flags import add_config_flags, config_from_args
from mapreduce.engine import open_engine

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm" / "test.jsonl"


def load_docs(path: Path, n: int) -> list[tuple[str, str]]:
    docs = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            docs.append((row["id"], row["article"]))
            if len(docs) == n:
                break
    return docs


def timed(cfg, docs, one_at_a_time: bool) -> tuple[float, int]:
    with open_engine(cfg) as engine:
        started = time.perf_counter()
        if one_at_a_time:
            results = [engine.summarize(text, doc_id) for doc_id, text in docs]
        else:
            results = list(engine.run(docs))
        elapsed = time.perf_counter() - started
    errors = [r.error for r in results if not r.ok]
    if errors:
        print(f"  first error: {errors[0]}", flush=True)
    return elapsed, len(errors)


def main() -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-docs", type=int, default=12)
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="JSONL with id and article fields")
    add_config_flags(parser, sections=("model", "data", "generation", "mapreduce", "batch"))
    args = parser.parse_args()
    if args.config is None:
        args.config = "configs/smollm2_cpu.yaml"
    cfg = config_from_args(args)
    docs = load_docs(Path(args.corpus), args.num_docs)

    runs = {}
    for name, workers, sequential in (("sequential", 1, True), ("batch x1", 1, False), ("batch x2", 2, False)):
        run_cfg = copy.deepcopy(cfg)
        run_cfg.mapreduce.num_workers = workers
        elapsed, failed = timed(run_cfg, docs, sequential)
        runs[name] = elapsed
        print(f"{name:<11} {len(docs)} docs in {elapsed:7.1f}s = {60 * len(docs) / elapsed:6.2f} docs/min"
              f"{f'  ({failed} failed)' if failed else ''}", flush=True)
    print(f"batch x1 / sequential : {runs['sequential'] / runs['batch x1']:.2f}x docs/min")
    print(f"batch x2 / batch x1   : {runs['batch x1'] / runs['batch x2']:.2f}x docs/min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
