"""Throughput of length-sorted vs unsorted generation batches, side by side.

Same model, same CNN/DM test articles, same batch size and greedy settings; the only
difference is whether batches are formed from prompts sorted by length (little left
padding) or in dataset order (each batch padded to its longest prompt). Prints articles/s
of both and their ratio. Not a test: the figure depends on the machine.

    python -m bench.bench_generation                       # embedded:smollm2 on CPU
    python -m bench.bench_generation --base-model Qwen/Qwen2.5-3B-Instruct --max-length 2048 \
        --max-new-tokens 100 --num-articles 256 --batch-size 16      # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.config import load_config
from core.data import load_rows
from core.errors import UserError

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm" / "test.jsonl")


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Fraction of prompt positions in the batches that are padding."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / total


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (model/data keys); flags below override it")
    parser.add_argument("--base-model", default="embedded:smollm2")
    parser.add_argument("--dataset", default=DEFAULT_DATA, help="CNN/DM test rows (hub name or local jsonl)")
    parser.add_argument("--num-articles", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024, help="prompt budget = max_length - max_new_tokens")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, alternating which side runs first")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (1 is best on a busy box)")
    return parser


def load(args: argparse.Namespace):
    """(cfg, rows, tokenizer, model) for the flags; UserError if any cannot be loaded."""
    from core.models import load_base_model, load_tokenizer

    cfg = load_config(
        args.config,
        {
            "base_model": args.base_model,
            "dataset": args.dataset,
            "max_new_tokens": args.max_new_tokens,
            "max_length": args.max_length,
            "generation_batch_size": args.batch_size,
            "num_threads": args.num_threads,
        },
    )
    rows = load_rows(cfg.data.dataset, f"{cfg.data.test_split}[:{args.num_articles}]", cfg.data.dataset_config)
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    return cfg, rows, tokenizer, load_base_model(cfg.model)


def race(model, tokenizer, prompts: list, cfg, repeats: int) -> None:
    """Time unsorted and sorted batches; prints each round and the throughput ratio.

    Rounds alternate which strategy goes first, and the best time of each counts, so a
    load change on a shared machine hurts both sides alike.
    """
    from core.generation import generate_summaries

    bs = cfg.generation.generation_batch_size
    best: dict[str, float] = {}
    outputs = {}
    for round_ in range(repeats):
        order = (("unsorted", False), ("sorted", True))
        for name, sort in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            outputs[name] = generate_summaries(model, tokenizer, prompts, cfg.generation, batch_size=bs, sort_by_length=sort)
            seconds = time.perf_counter() - start
            best[name] = min(seconds, best.get(name, float("inf")))
            print(f"round {round_ + 1} {name:>9}: {seconds:7.1f} s  {len(prompts) / seconds:6.2f} articles/s")
    speeds = {name: len(prompts) / seconds for name, seconds in best.items()}
    same = sum(a == b for a, b in zip(outputs["unsorted"], outputs["sorted"]))
    print(f"sorted / unsorted throughput: {speeds['sorted'] / speeds['unsorted']:.2f}x  "
          f"({same}/{len(prompts)} outputs identical)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import torch

    from core.generation import generate_summaries, length_sorted_batches
    from core.prompt import build_prompt_ids

    try:
        cfg, rows, tokenizer, model = load(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    prompts = [build_prompt_ids(tokenizer, r[cfg.data.article_field], cfg.prompt_budget, cfg.data.prompt_template) for r in rows]
    lengths = [len(p) for p in prompts]
    bs = cfg.generation.generation_batch_size
    unsorted_batches = [list(range(i, min(i + bs, len(prompts)))) for i in range(0, len(prompts), bs)]
    print(
        f"{cfg.model.base_model} on {next(model.parameters()).device} ({torch.get_num_threads()} threads): "
        f"{len(prompts)} articles, prompt tokens {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}), "
        f"batch {bs}, max_new_tokens {cfg.generation.max_new_tokens}"
    )
    print(
        f"padding share of prompt positions: unsorted {padding_share(lengths, unsorted_batches):.1%}, "
        f"sorted {padding_share(lengths, length_sorted_batches(lengths, bs)):.1%}"
    )
    generate_summaries(model, tokenizer, prompts[:2], cfg.generation, batch_size=2)  # warm-up
    race(model, tokenizer, prompts, cfg, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
