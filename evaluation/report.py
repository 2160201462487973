"""Evaluation reports: scores aggregated per system, the Markdown table, results.json, per_example.jsonl.

    aggregate_scores(...)   means, 95% bootstrap intervals, failures, paired adapter - baseline deltas
    markdown_report(result) the table plus notes (results.md, also printed)
    write_reports(...)      per_example.jsonl, results.json (strict JSON: NaN as null), results.md
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import Config

if TYPE_CHECKING:
    from evaluation.examples import Example

DISPLAY_NAMES = {
    "lead3": "LEAD-3",
    "base": "Base",
    "base_chat": "Base (chat template)",
    "adapter": "Base + adapter",
}
METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_f1", "words")
TABLE_COLUMNS = ("ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "BERTScore F1", "Avg Gen Length")
BOOTSTRAP_SEED = 0


def mean_or_nan(values) -> float:
    """Mean of the values that are not None; NaN when none (a system with nothing scored)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def aggregate_scores(cfg: Config, examples: list["Example"], systems: list[str], scores: dict, errors: dict) -> dict:
    """Per-example scores -> the results dict: per-system means and intervals, adapter - baseline deltas."""
    from core.rouge import sentence_splitter_name, word_count
    from evaluation.metrics import bootstrap_ci

    samples = cfg.evaluation.bootstrap_samples
    result: dict = {
        "num_examples": len(examples),
        "dataset": cfg.data.test_dataset or ", ".join(cfg.data.dataset),
        "split": cfg.data.test_split,
        "bertscore_encoder": cfg.evaluation.bertscore_model,
        "bertscore_num_layers": cfg.evaluation.bertscore_num_layers,
        "sentence_splitter": sentence_splitter_name(),
        "avg_reference_words": mean_or_nan(word_count(e.reference) for e in examples if e.reference.strip()),
        "systems": {},
        "improvements": {},
    }
    for system in systems:
        rows = [scores[(system, e.id)] for e in examples if (system, e.id) in scores]
        summary = {m: mean_or_nan(r[m] for r in rows) for m in METRICS}
        summary["rougeL_ci95"] = list(bootstrap_ci([r["rougeL"] for r in rows], samples, seed=BOOTSTRAP_SEED))
        summary["num_scored"] = len(rows)
        summary["num_failed"] = sum(1 for e in examples if (system, e.id) in errors)
        result["systems"][system] = summary
    for baseline in ("base", "base_chat"):
        if "adapter" in systems and baseline in systems:
            ids = [e.id for e in examples if ("adapter", e.id) in scores and (baseline, e.id) in scores]
            diffs = {m: [scores[("adapter", i)][m] - scores[(baseline, i)][m] for i in ids] for m in METRICS}
            delta = {m: mean_or_nan(v) for m, v in diffs.items()}
            delta["rougeL_ci95"] = list(bootstrap_ci(diffs["rougeL"], samples, seed=BOOTSTRAP_SEED))
            delta["num_paired"] = len(ids)
            result["improvements"][f"adapter_minus_{baseline}"] = delta
    return result


def format_number(value: float, signed: bool = False, digits: int = 4) -> str:
    """The one number format of both evaluation reports; None and NaN as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_table(result: dict) -> str:
    lines = ["| Model | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]

    def row(name: str, values: dict, signed: bool = False) -> str:
        cells = [format_number(values[m], signed) for m in METRICS[:-1]] + [format_number(values["words"], signed, 1)]
        return f"| {name} | " + " | ".join(cells) + " |"

    for system, values in result["systems"].items():
        lines.append(row(DISPLAY_NAMES[system], values))
    for key, delta in result["improvements"].items():
        baseline = key.removeprefix("adapter_minus_")
        lines.append(row(f"Improvement (adapter − {baseline.replace('_', ' ')})", delta, signed=True))
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    notes = [
        f"{result['num_examples']} examples from {result['dataset']} ({result['split']}); "
        f"references average {format_number(result['avg_reference_words'], digits=1)} words.",
        f"BERTScore F1: encoder {result['bertscore_encoder']}, layer {result['bertscore_num_layers']}, "
        f"no baseline rescaling. ROUGE: rouge_score with stemming; Lsum on sentences split by {result['sentence_splitter']}.",
    ]
    for system, values in result["systems"].items():
        lo, hi = values["rougeL_ci95"]
        failed = f"; {values['num_failed']} failed (excluded)" if values["num_failed"] else ""
        notes.append(f"{DISPLAY_NAMES[system]}: ROUGE-L 95% CI [{format_number(lo)}, {format_number(hi)}], {values['num_scored']} scored{failed}.")
    for key, delta in result["improvements"].items():
        lo, hi = delta["rougeL_ci95"]
        notes.append(
            f"Adapter − {key.removeprefix('adapter_minus_')}: ROUGE-L difference 95% paired bootstrap CI "
            f"[{format_number(lo, True)}, {format_number(hi, True)}] over {delta['num_paired']} examples."
        )
    return markdown_table(result) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def no_nan(value):
    """NaN (a system with nothing scored) as null: results.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    return value


def write_per_example(path: Path, examples, systems, records, scores, errors) -> None:
    tmp = path.with_suffix(".jsonl.partial")
    with tmp.open("w") as f:
        for ex in examples:
            entry: dict = {"id": ex.id, "reference": ex.reference, "systems": {}}
            for system in systems:
                key = (system, ex.id)
                if key in errors:
                    entry["systems"][system] = {"error": errors[key]}
                else:
                    entry["systems"][system] = {"output": records[key]["output"], **scores[key]}
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_reports(out_dir: Path, examples, systems, records, scores, errors, result: dict) -> str:
    """per_example.jsonl, results.json and results.md in out_dir; returns the Markdown."""
    write_per_example(out_dir / "per_example.jsonl", examples, systems, records, scores, errors)
    (out_dir / "results.json").write_text(json.dumps(no_nan(result), indent=2, ensure_ascii=False) + "\n")
    report = markdown_report(result)
    (out_dir / "results.md").write_text(report)
    return report
