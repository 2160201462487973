"""Reduce settings side by side on the same map outputs: each model call is run once and cached.

A merge setting (fanin, final parts, words asked) changes only the reduce, but a full run
redoes the map, the costly part (10 chunk summaries of a 1.5B model: 2-9 minutes on 2
cores). Here every call goes through one in-process model (mapreduce.api.Summarizer, the
engine's own document steps) with a JSON cache keyed by template, token cap and text, so
the first variant pays for the map and the others only for their merges. For choosing
settings on dev documents (longdocs rows 30-99, or joined articles of
val_llm_references.jsonl.gz: `--joined N`), never on the report sets. Each summary is scored
beside the two no-model baselines at its length (lead-k, paragraph leads) and, for joined
documents, with the share of articles it covers (evaluation.coverage).

    python -m bench.reduce_variants --config configs/qwen25_15b_cpu.yaml --rows 84,85 \\
        --variant shipped= --variant fanin2x5=merge_fanin=2,merge_final_parts=5 --out outputs/reduce_variants
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from evaluation.longdocs import COVERAGE_THRESHOLD, DEFAULT_LONGDOCS, JOINED_TOKENS

REPO = Path(__file__).resolve().parents[1]
LONGDOCS = REPO / DEFAULT_LONGDOCS
JOINED_DEV = REPO.parent / "shared" / "data" / "cnndm" / "val_llm_references.jsonl.gz"


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


def load_docs(args, tokenizer) -> list:
    from evaluation.longdocs_data import load_joined, load_longdocs

    docs = [doc for row in args.rows or [] for doc in load_longdocs(LONGDOCS, 1, row)]
    if args.joined:
        docs += load_joined(JOINED_DEV, tokenizer, *JOINED_TOKENS, args.joined)
    return docs


def score(name: str, doc, summary: str) -> dict:
    """The summary's ROUGE F1 beside lead-k and paragraph leads at its length; coverage of a joined doc."""
    from core.rouge import rouge_scores, word_count
    from evaluation.coverage import aggregate_coverage, article_coverage, lead_k, paragraph_leads

    words = word_count(summary)
    row = {"variant": name, "id": doc.id, "words": words}
    for system, text in (("", summary), ("leadk_", lead_k(doc.text, words)), ("paralead_", paragraph_leads(doc.text, words))):
        scores = rouge_scores(text, doc.reference)
        row.update({f"{system}rouge1": scores["rouge1"], f"{system}rougeL": scores["rougeL"]})
    if doc.articles:
        row["covered"] = aggregate_coverage(article_coverage(doc, summary, COVERAGE_THRESHOLD))["covered"]
    return row


def summary_line(rows: list[dict]) -> str:
    """A variant's means: its ROUGE F1, the baselines' at its length, and coverage where there are joined docs."""
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k.endswith(("rouge1", "rougeL", "words"))}
    line = (f"R1 / RL F1 {mean['rouge1']:.3f} / {mean['rougeL']:.3f} at {mean['words']:.0f} words; at that length "
            f"lead-k {mean['leadk_rouge1']:.3f} / {mean['leadk_rougeL']:.3f}, "
            f"paragraph leads {mean['paralead_rouge1']:.3f} / {mean['paralead_rougeL']:.3f}")
    joined = [r["covered"] for r in rows if "covered" in r]
    if joined:
        line += f"; coverage {sum(joined) / len(joined):.1%} of joined docs' articles"
    return line


def main(argv=None) -> int:
    from core.config import replace_config
    from mapreduce.api import Summarizer, resolve_config
    from mapreduce.document import DocumentSteps

    p = argparse.ArgumentParser(prog="python -m bench.reduce_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--adapter", default=None)
    p.add_argument("--rows", type=row_numbers, help="longdocs.jsonl row numbers, comma-separated (dev rows: 30-99)")
    p.add_argument("--joined", type=int, default=0, help="also N documents of joined val_llm_references articles")
    p.add_argument("--variant", action="append", required=True, help="name=key=value,... (config keys); 'name=' is the config as it is")
    p.add_argument("--out", type=Path, default=Path("outputs/reduce_variants"))
    args = p.parse_args(argv)
    if not args.rows and not args.joined:
        p.error("give --rows, --joined N or both")
    args.out.mkdir(parents=True, exist_ok=True)
    base = resolve_config(args.config, **({"adapter": args.adapter} if args.adapter else {}))
    summarizer = Summarizer.from_config(base)
    docs = load_docs(args, summarizer.tokenizer)
    calls = CachedCalls(summarizer, args.out / "calls.json")
    results = []
    for name, overrides in map(parse_variant, args.variant):
        cfg = replace_config(base, overrides) if overrides else base
        steps = DocumentSteps(cfg, summarizer.chunker)
        for doc in docs:
            started, misses = time.perf_counter(), calls.misses
            result = steps.run(doc.id, doc.text, calls)
            row = {**score(name, doc, result.summary or ""), "new_calls": calls.misses - misses,
                   "seconds": round(time.perf_counter() - started, 1), "error": result.error, "summary": result.summary}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "summary"}), flush=True)
    (args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    for name in dict.fromkeys(r["variant"] for r in results):
        print(f"{name}: " + summary_line([r for r in results if r["variant"] == name]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
