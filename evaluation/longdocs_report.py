"""evaluation.longdocs' report: rows scored per (system, document), the summary, the CI, the files.

    score_record(doc, record, threshold)   one row: ROUGE recall/F1, words, seconds, coverage
    build_result(docs, rows, samples)      per-system means, the paired CI, the coverage shares
    write_reports(out_dir, ...)            per_document.jsonl, results.json, results.md (atomic)

Number format, mean and strict-JSON rule are evaluation.report's, shared with evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from core.rouge import ROUGE_TYPES, rouge_recall_f1, word_count
from evaluation.coverage import POSITIONS, aggregate_coverage, article_coverage
from evaluation.report import BOOTSTRAP_SEED, format_number, mean_or_nan, no_nan

if TYPE_CHECKING:
    from evaluation.longdocs_data import LongDoc

DISPLAY_NAMES = {"mapreduce": "Map-reduce", "whole": "Whole document (one call)", "truncate": "Truncate (one pass)",
                 "leadk": "Lead-k (length-matched)", "paralead": "Paragraph leads (length-matched)"}
CI_KEYS = ("rouge1_f1", "rougeL_f1")  # F1, not recall: recall grows with length whatever the content
SCORE_KEYS = tuple(f"{r}_{kind}" for kind in ("recall", "f1") for r in ROUGE_TYPES)

# --- scoring --------------------------------------------------------------------------


def score_record(doc: LongDoc, rec: Optional[dict], threshold: float) -> dict:
    """One (system, document) row for the report: scores and coverage, or its error."""
    if rec is None or rec.get("error") is not None:
        return {"error": rec["error"] if rec else "not generated"}
    summary = rec["summary"] or ""
    row = {"summary": summary, **rouge_recall_f1(summary, doc.reference), "words": word_count(summary),
           "seconds": rec.get("seconds")}
    if doc.articles:
        row["coverage"] = article_coverage(doc, summary, threshold)
    return row


def system_summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    summary = {k: mean_or_nan(r[k] for r in ok) for k in (*SCORE_KEYS, "words", "seconds")}
    summary["num_scored"], summary["num_failed"] = len(ok), len(rows) - len(ok)
    return summary


def paired_difference(a: list[dict], b: list[dict], key: str, samples: int) -> dict:
    """Mean and paired bootstrap 95% CI of a - b over documents both systems finished."""
    from evaluation.metrics import bootstrap_ci

    diffs = [x[key] - y[key] for x, y in zip(a, b) if "error" not in x and "error" not in y]
    return {"metric": key, "mean": mean_or_nan(diffs),
            "ci95": list(bootstrap_ci(diffs, samples, seed=BOOTSTRAP_SEED)), "num_paired": len(diffs)}


def build_result(docs: list[LongDoc], rows: dict[str, list[dict]], samples: int) -> dict:
    """The results.json body (config and settings are added by the caller)."""
    result: dict = {
        "num_documents": len(docs),
        "avg_document_tokens": mean_or_nan(d.tokens for d in docs),
        "avg_reference_words": mean_or_nan(word_count(d.reference) for d in docs if d.reference.strip()),
        "systems": {s: system_summary(r) for s, r in rows.items()},
        "comparison": {},
    }
    for other in (s for s in rows if s != "mapreduce" and "mapreduce" in rows):
        for key in CI_KEYS:
            result["comparison"][f"mapreduce_minus_{other}_{key}"] = dict(
                paired_difference(rows["mapreduce"], rows[other], key, samples), other=other)
    if any(d.articles for d in docs):
        result["coverage"] = {
            s: aggregate_coverage(c for r in rs if "error" not in r for c in r.get("coverage", []))
            for s, rs in rows.items()
        }
    return result


# --- reports --------------------------------------------------------------------------


def _pct(share: float, counts: dict) -> str:
    return f"{format_number(share * 100, digits=1)}% ({counts['covered']}/{counts['total']})" if counts["total"] else "n/a"


def markdown_report(result: dict) -> str:
    head = ["System", "R1 recall", "R2 recall", "RL recall", "R1 F1", "R2 F1", "RL F1", "Words", "s/doc", "Failures"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for system, v in result["systems"].items():
        cells = [format_number(v[k]) for k in SCORE_KEYS] + [format_number(v["words"], digits=1), format_number(v["seconds"], digits=2), str(v["num_failed"])]
        lines.append(f"| {DISPLAY_NAMES[system]} | " + " | ".join(cells) + " |")
    notes = [f"{result['num_documents']} documents ({result.get('data', '?')}: {result.get('source', '?')}); "
             f"{format_number(result['avg_document_tokens'], digits=0)} {result.get('token_unit', 'tokens')} and references of "
             f"{format_number(result['avg_reference_words'], digits=1)} words on average."]
    for diff in result["comparison"].values():
        lo, hi = diff["ci95"]
        notes.append(f"Map-reduce − {DISPLAY_NAMES[diff['other']]}: {diff['metric']} {format_number(diff['mean'], signed=True)}, "
                     f"95% paired bootstrap CI [{format_number(lo, signed=True)}, {format_number(hi, signed=True)}] "
                     f"over {diff['num_paired']} documents.")
    if {"leadk", "paralead"} & set(result["systems"]):
        notes.append("Lead-k: the document's first sentences; paragraph leads: the first sentence of paragraphs spread "
                     "evenly over the document; both cut to its map-reduce summary's length (the reference's where "
                     "map-reduce failed or has not run).")
    if "whole" in result["systems"]:
        notes.append("Whole document: the same model and adapter read the whole document in one call, asked for "
                     "summary_words words (the config's whole_template, else core.prompt.WHOLE_TEMPLATE).")
    if {"mapreduce", "truncate", "whole"} & set(result["systems"]):
        notes.append("s/doc: map-reduce = each document's own wall time, other documents in flight; truncate = "
                     "batch time / batch size; whole = its one call; model loading excluded.")
    notes.append("Failed documents are left out of the means and counted under Failures.")
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if "coverage" in result:
        text += "\n" + coverage_table(result) + "\n"
    return text


def coverage_table(result: dict) -> str:
    lines = ["| System | Covered | First | Middle | Last |", "|---|---|---|---|---|"]
    for system, cov in result["coverage"].items():
        cells = [_pct(cov["covered"], cov["counts"]["all"])] + [_pct(cov[p], cov["counts"][p]) for p in POSITIONS]
        lines.append(f"| {DISPLAY_NAMES[system]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"- An article is covered when the ROUGE-1 recall of its own highlights on content words "
                 f"(no stopwords, stemmed) is >= {result.get('coverage_threshold', '?')}; failed summaries excluded.")
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_reports(out_dir: Path, docs: list[LongDoc], rows: dict[str, list[dict]], result: dict) -> str:
    """per_document.jsonl, results.json and results.md; returns the Markdown."""
    per_doc = []
    for i, doc in enumerate(docs):
        entry = {"id": doc.id, "tokens": doc.tokens, "reference": doc.reference,
                 "articles": [a.id for a in doc.articles], "systems": {s: r[i] for s, r in rows.items()}}
        per_doc.append(json.dumps(no_nan(entry), ensure_ascii=False))
    _write_atomic(out_dir / "per_document.jsonl", "\n".join(per_doc) + "\n")
    _write_atomic(out_dir / "results.json", json.dumps(no_nan(result), indent=2, ensure_ascii=False) + "\n")
    report = markdown_report(result)
    _write_atomic(out_dir / "results.md", report)
    return report
