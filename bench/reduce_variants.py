"""Reduce settings side by side on the same map outputs: each model call is run once and cached.

A merge setting (fanin, final parts, words asked) changes only the reduce, but a full run
redoes the map, the costly part (10 chunk summaries of a 1.5B model: 2-9 minutes on 2
cores). Here every call goes through one in-process model (mapreduce.api.Summarizer, the
engine's own document steps) with a JSON cache keyed by template, token cap and text, so
the first variant pays for the map and the others only for their merges. For choosing
settings on dev documents (longdocs rows 30-99), never on the report rows 0-29.

    python -m bench.reduce_variants --config configs/qwen25_15b_cpu.yaml --rows 84,85 \\
        --variant shipped= --variant fanin2x5=merge_fanin=2,merge_final_parts=5 --out outputs/reduce_variants
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LONGDOCS = REPO.parent / "shared" / "data" / "longdocs" / "longdocs.jsonl"


def parse_variant(spec: str) -> tuple[str, dict]:
    """'name=key=value,key=value' -> (name, {key: value}) with YAML-typed values."""
    import yaml

    name, _, rest = spec.partition("=")
    pairs = [p.split("=", 1) for p in rest.split(",") if p]
    return name, {k: yaml.safe_load(v) for k, v in pairs}


class CachedCalls:
    """summarize(texts, template, max_new_tokens) of a Summarizer, each distinct call run once."""

    def __init__(self, summarizer, path: Path):
        self.summarizer, self.path = summarizer, path
        self.cache = json.loads(path.read_text()) if path.exists() else {}
        self.misses = 0

    @staticmethod
    def key(text: str, template: str, max_new_tokens) -> str:
        return hashlib.sha256(json.dumps([template, max_new_tokens, text]).encode()).hexdigest()

    def __call__(self, texts, template, max_new_tokens=None):
        keys = [self.key(t, template, max_new_tokens) for t in texts]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            self.misses += len(todo)
            outs = self.summarizer._generate([texts[i] for i in todo], template, max_new_tokens)
            self.cache.update({keys[i]: o for i, o in zip(todo, outs)})
            self.path.write_text(json.dumps(self.cache))
        return [self.cache[k] for k in keys]


def row_numbers(text: str) -> list[int]:
    try:
        return [int(r) for r in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated row numbers: {text!r}") from None


def main(argv=None) -> int:
    from core.config import replace_config
    from core.rouge import rouge_scores, word_count
    from mapreduce.api import Summarizer, resolve_config
    from mapreduce.document import DocumentSteps

    p = argparse.ArgumentParser(prog="python -m bench.reduce_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--adapter", default=None)
    p.add_argument("--rows", required=True, type=row_numbers, help="longdocs.jsonl row numbers, comma-separated (dev rows: 30-99)")
    p.add_argument("--variant", action="append", required=True, help="name=key=value,... (config keys); 'name=' is the config as it is")
    p.add_argument("--out", type=Path, default=Path("outputs/reduce_variants"))
    args = p.parse_args(argv)
    rows = args.rows
    docs = [json.loads(line) for i, line in enumerate(LONGDOCS.open()) if i in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    base = resolve_config(args.config, **({"adapter": args.adapter} if args.adapter else {}))
    summarizer = Summarizer.from_config(base)
    calls = CachedCalls(summarizer, args.out / "calls.json")
    results = []
    for name, overrides in map(parse_variant, args.variant):
        cfg = replace_config(base, overrides) if overrides else base
        steps = DocumentSteps(cfg, summarizer.chunker)
        for doc in docs:
            started, misses = time.perf_counter(), calls.misses
            result = steps.run(doc["id"], doc["document"], calls)
            scores = rouge_scores(result.summary or "", doc["summary"])
            row = {"variant": name, "id": doc["id"], "words": word_count(result.summary or ""),
                   "rouge1": scores["rouge1"], "rougeL": scores["rougeL"], "new_calls": calls.misses - misses,
                   "seconds": round(time.perf_counter() - started, 1), "error": result.error, "summary": result.summary}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "summary"}), flush=True)
    (args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    for name in dict.fromkeys(r["variant"] for r in results):
        mine = [r for r in results if r["variant"] == name]
        mean = {k: sum(r[k] for r in mine) / len(mine) for k in ("rouge1", "rougeL", "words")}
        print(f"{name}: R1 F1 {mean['rouge1']:.3f}  RL F1 {mean['rougeL']:.3f}  {mean['words']:.0f} words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
