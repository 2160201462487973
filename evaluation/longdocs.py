"""Long documents: map-reduce vs one truncated pass vs a length-matched lead, same model.

    python -m evaluation.longdocs --config configs/smollm2_cpu.yaml --adapter adapters/smollm2-cnndm
    python -m evaluation.longdocs ... --data joined --limit 30 --min-tokens 6000 --max-tokens 12000
    python -m evaluation.longdocs ... --systems truncate,leadk --limit 10

Why: the news adapter was trained on 512-2,048-token prompts; the question is whether
map-reduce over chunks (mapreduce.engine) beats simply cutting the document to the prompt
budget, and whether either beats copying the document's opening.

Systems (all with the model and adapter of the config):
    mapreduce  open_engine + engine.run over every document at once (chunks of several
               documents share batches on the Ray actors).
    truncate   one pass in this process: core.prompt.build_prompt_ids cuts the document to
               max_length - max_new_tokens, core.generation.generate_summaries generates.
    leadk      the document's first sentences (evaluation.metrics.split_sentences), cut to
               exactly as many words as its map-reduce summary (the reference's length
               when map-reduce failed or has not run): a baseline of the same length.

Data (`--data`):
    longdocs   the first --limit rows of --longdocs-file; reference = its `summary` field.
    joined     coverage documents: consecutive cnndm test articles (--test-file) joined by
               blank lines until the text has >= --min-tokens model tokens (never more than
               --max-tokens; a group that would overshoot restarts at the next article),
               --limit of them, non-overlapping and in file order. Reference = all their
               highlights. Per article, ROUGE-1 recall of its own highlights in the summary
               on content words (lowercased, no punctuation, no stopwords, Porter stems);
               >= --coverage-threshold counts the article as covered, reported overall and
               for the first, middle and last articles (does the summary forget the end?).

Metrics: ROUGE-1/2/L recall and F1 (rouge_score, stemmer on), words, seconds per document
(mapreduce: the document's timings['total_s'], overlapping other documents in flight;
truncate: batch time / batch size, model loading excluded), failures (left out of the
means), and a paired bootstrap 95% CI of mapreduce - truncate ROUGE-1 recall.

Files in --out-dir (alias --eval-output-dir; default outputs/longdocs, or
outputs/longdocs_joined; the config's eval_output_dir is evaluate's and is not used here):
    longdoc_generations.jsonl  one line per (system, document), flushed as each finishes.
                               A rerun redoes only documents missing, failed, or made with
                               other settings (model, adapter + weights mtime, templates,
                               max_length, generation, chunking) or other document text.
    per_document.jsonl         each document's summaries, scores and article coverage.
    results.json, results.md   per system: ROUGE recall/F1, words, s/doc, failures; the CI
                               of the difference; in joined mode the coverage table. The
                               Markdown is also printed to stdout; progress goes to stderr.

Errors (a missing file, a bad flag or config value) are one `error: ...` line and exit 1;
Ctrl-C exits 130 with a resume hint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional

from core.config import Config, ConfigError
from core.flags import add_config_flags, config_from_args
from core.data import DataError
from core.errors import UserError, typed_line
from core.text import content_words
from evaluation.generations_log import AppendLog, read_records
from evaluation.report import _fmt, _no_nan  # one number format and strict-JSON rule for both reports

log = logging.getLogger("longdocs")

SYSTEMS = ("mapreduce", "truncate", "leadk")  # run order: leadk's length needs mapreduce
DISPLAY_NAMES = {"mapreduce": "Map-reduce", "truncate": "Truncate (one pass)", "leadk": "Lead-k (length-matched)"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
SCORE_KEYS = tuple(f"{r}_{kind}" for kind in ("recall", "f1") for r in ROUGE_TYPES)
POSITIONS = ("first", "middle", "last")
LOG_FILE = "longdoc_generations.jsonl"
JOINER = "\n\n"
DEFAULT_LONGDOCS = "../shared/data/longdocs/longdocs.jsonl"
DEFAULT_TEST_FILE = "../shared/data/cnndm/test.jsonl"
DEFAULT_OUT_DIRS = {"longdocs": "outputs/longdocs", "joined": "outputs/longdocs_joined"}


@dataclass
class Article:
    """One news article inside a joined document: its own highlights judge coverage."""

    id: str
    highlights: str


@dataclass
class LongDoc:
    id: str
    text: str
    reference: str
    tokens: Optional[int] = None
    articles: list[Article] = field(default_factory=list)  # joined mode only, in order

    @property
    def sha(self) -> str:
        """Text fingerprint: a record is reused only for the very same document."""
        return hashlib.sha1(self.text.encode()).hexdigest()[:12]


# --- data -----------------------------------------------------------------------------


def read_jsonl(path: Path, fields: tuple[str, ...]) -> Iterable[dict]:
    """Rows of a JSONL file; a missing file, bad line or missing field is one DataError."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path} line {number}: not valid JSON") from None
            missing = [k for k in fields if not isinstance(row, dict) or k not in row]
            if missing:
                raise DataError(f"{path} line {number}: missing field(s) {', '.join(missing)}")
            yield row


def load_longdocs(path: Path, limit: int) -> list[LongDoc]:
    """The first `limit` rows; empty documents are kept and fail as documents, not the run."""
    docs = []
    for row in read_jsonl(path, ("id", "document", "summary")):
        if len(docs) == limit:
            break
        text, ref = row["document"], row["summary"]
        docs.append(LongDoc(str(row["id"]), text if isinstance(text, str) else "",
                            ref if isinstance(ref, str) else "", row.get("qwen_tokens")))
    if not docs:
        raise DataError(f"no documents in {path}")
    if len({d.id for d in docs}) != len(docs):
        raise DataError(f"duplicate ids in {path} (resume keys on them)")
    return docs


def _joined_doc(number: int, rows: list[dict], tokens: int) -> LongDoc:
    ids = [str(r["id"]) for r in rows]
    digest = hashlib.sha1("|".join(ids).encode()).hexdigest()[:8]
    return LongDoc(
        id=f"joined-{number:03d}-{digest}",
        text=JOINER.join(r["article"].strip() for r in rows),
        reference="\n".join(r["highlights"].strip() for r in rows),
        tokens=tokens,
        articles=[Article(i, r["highlights"].strip()) for i, r in zip(ids, rows)],
    )


def join_articles(rows: Iterable[dict], count_tokens: Callable[[str], int], min_tokens: int,
                  max_tokens: int, limit: int) -> list[LongDoc]:
    """Greedy, in file order: add consecutive articles until >= min_tokens, never > max_tokens.

    A group that would overshoot max_tokens before reaching min_tokens is dropped and a new
    one starts at the article that overshot, so documents never share an article.
    """
    docs: list[LongDoc] = []
    group: list[dict] = []
    for row in rows:
        if len(docs) == limit:
            break
        if not (isinstance(row["article"], str) and row["article"].strip()
                and isinstance(row["highlights"], str) and row["highlights"].strip()):
            group = []  # an unusable article breaks the run of consecutive ones
            continue
        candidate = group + [row]
        tokens = count_tokens(JOINER.join(r["article"].strip() for r in candidate))
        if tokens > max_tokens and len(candidate) > 1:
            candidate = [row]
            tokens = count_tokens(row["article"].strip())
        if tokens > max_tokens:
            group = []
        elif tokens >= min_tokens:
            docs.append(_joined_doc(len(docs), candidate, tokens))
            group = []
        else:
            group = candidate
    return docs


def load_joined(path: Path, tokenizer, min_tokens: int, max_tokens: int, limit: int) -> list[LongDoc]:
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    docs = join_articles(read_jsonl(path, ("id", "article", "highlights")), count, min_tokens, max_tokens, limit)
    if not docs:
        raise DataError(f"no run of articles in {path} reaches {min_tokens}..{max_tokens} tokens")
    if len(docs) < limit:
        log.warning("only %d joined documents of %d..%d tokens in %s", len(docs), min_tokens, max_tokens, path)
    return docs


# --- coverage -------------------------------------------------------------------------


def content_recall(reference: str, summary: str) -> Optional[float]:
    """ROUGE-1 recall on content words (clipped counts); None when the reference has none."""
    ref = Counter(content_words(reference))
    total = sum(ref.values())
    if not total:
        return None
    got = Counter(content_words(summary))
    return sum(min(n, got[w]) for w, n in ref.items()) / total


def position(index: int, count: int) -> str:
    """first / middle / last; a lone article counts as first."""
    if index == 0:
        return "first"
    return "last" if index == count - 1 else "middle"


def article_coverage(doc: LongDoc, summary: str, threshold: float) -> list[dict]:
    rows = []
    for i, art in enumerate(doc.articles):
        recall = content_recall(art.highlights, summary)
        rows.append({"article": art.id, "position": position(i, len(doc.articles)), "recall": recall,
                     "covered": None if recall is None else recall >= threshold})
    return rows


def aggregate_coverage(rows: Iterable[dict]) -> dict:
    """Share of articles covered, overall and by position ({covered, total} counts too)."""
    counts = {k: [0, 0] for k in ("all", *POSITIONS)}
    for row in rows:
        if row["covered"] is None:
            continue
        for key in ("all", row["position"]):
            counts[key][0] += bool(row["covered"])
            counts[key][1] += 1
    share = {k: (c / n if n else float("nan")) for k, (c, n) in counts.items()}
    return {"covered": share["all"], **{p: share[p] for p in POSITIONS},
            "counts": {k: {"covered": c, "total": n} for k, (c, n) in counts.items()}}


# --- lead-k ---------------------------------------------------------------------------


def lead_k(text: str, words: int) -> str:
    """The opening sentences, the last one cut, to exactly `words` words (or the whole text)."""
    from evaluation.metrics import split_sentences

    out: list[str] = []
    left = words
    for sentence in split_sentences(text):
        if left <= 0:
            break
        kept = sentence.split()[:left]
        out.append(" ".join(kept))
        left -= len(kept)
    return " ".join(out)


def leadk_budget(doc: LongDoc, mapreduce_record: Optional[dict]) -> tuple[int, str]:
    """(words, source): the map-reduce summary's length, else the reference's."""
    from evaluation.metrics import word_count

    if mapreduce_record and mapreduce_record.get("error") is None and mapreduce_record.get("summary"):
        return word_count(mapreduce_record["summary"]), "mapreduce"
    return word_count(doc.reference), "reference"


# --- settings and the resumable log -------------------------------------------------


# mapreduce keys that only schedule work; every other key of the section can change a summary
_SCHEDULING_KEYS = ("num_workers", "num_gpus_per_worker", "num_cpus_per_worker", "ray_address", "max_task_retries")


def _short_hash(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def model_setups(cfg: Config) -> dict[str, str]:
    """Settings hashes of the model systems, built on the batch job's and evaluate's fingerprints.

    The whole mapreduce section (less scheduling) is hashed too, so a key added there later
    (e.g. a length target) cannot silently reuse summaries made without it.
    """
    from evaluation.generations_log import system_setup
    from mapreduce.batch import setup_fingerprint

    section = {k: v for k, v in dataclasses.asdict(cfg.mapreduce).items() if k not in _SCHEDULING_KEYS}
    return {
        "mapreduce": "mr-" + _short_hash([setup_fingerprint(cfg), section]),
        "truncate": "tr-" + system_setup(cfg, "adapter" if cfg.model.adapter else "base"),
    }


def leadk_setup(words: int) -> str:
    from evaluation.metrics import sentence_splitter_name

    return f"lk-{sentence_splitter_name()}-{words}"


class GenerationLog:
    """Append-only JSONL of (system, doc) outputs; the latest line per settings + text wins.

    The reading and appending are evaluation.generations_log's; the key here is
    (system, id, setup, doc_sha), and every record is flushed as it is added.
    """

    def __init__(self, path: Path):
        self.path = path
        self.latest: dict[tuple, dict] = dict(read_records(path, _log_key))
        self.log = AppendLog(path)

    def get(self, system: str, doc: LongDoc, setup: str) -> Optional[dict]:
        return self.latest.get((system, doc.id, setup, doc.sha))

    def done(self, system: str, doc: LongDoc, setup: str) -> bool:
        """Finished without error under these settings (failures are retried)."""
        rec = self.get(system, doc, setup)
        return rec is not None and rec.get("error") is None

    def add(self, system: str, doc: LongDoc, setup: str, summary: Optional[str] = None,
            error: Optional[str] = None, **extra) -> dict:
        rec = {"system": system, "id": doc.id, "setup": setup, "doc_sha": doc.sha,
               "summary": summary, "error": error, **extra}
        self.log.write(rec)
        self.log.flush()  # one document at a time: an interruption loses nothing finished
        self.latest[(system, doc.id, setup, doc.sha)] = rec
        return rec

    def close(self) -> None:
        self.log.close()


def _log_key(rec: dict) -> tuple:
    return (rec["system"], rec["id"], rec["setup"], rec["doc_sha"])


# --- the systems ----------------------------------------------------------------------


def _bar(system: str, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{system:>9}", unit="doc", file=sys.stderr, dynamic_ncols=True,
                disable=not enabled)


def run_mapreduce(cfg: Config, todo: list[LongDoc], out: GenerationLog, setup: str, progress: bool) -> None:
    """All documents through one engine.run, so chunks of several documents batch together."""
    from mapreduce.engine import open_engine

    by_id = {d.id: d for d in todo}
    texts = [0]

    def on_progress(event) -> None:
        if event.kind == "item":
            texts[0] += 1
            bar.set_postfix(texts=texts[0], refresh=False)

    with _bar("mapreduce", len(todo), progress) as bar:
        say = lambda message: bar.write(message, file=sys.stderr)  # noqa: E731
        with open_engine(cfg, on_progress=on_progress, say=say) as engine:
            for result in engine.run((d.id, d.text) for d in todo):
                out.add("mapreduce", by_id[result.doc_id], setup, summary=result.summary, error=result.error,
                        seconds=result.timings.get("total_s"), tokens=result.tokens)
                bar.update(1)


def _load_truncate_model(cfg: Config):
    """(model, tokenizer) in this process; the template must leave room for the document."""
    from core.models import load_for_inference, load_tokenizer
    from core.prompt import check_template_fits

    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    check_template_fits(tokenizer, cfg.data.prompt_template, cfg.prompt_budget, "system 'truncate': an article")
    log.info("loading %s%s for the truncate system", cfg.model.base_model,
             f" + {cfg.model.adapter}" if cfg.model.adapter else "")
    return load_for_inference(cfg.model)


def _generate_logged(model, tokenizer, cfg: Config, prompts: list, on_done: Callable) -> set[int]:
    """generate_summaries with per-batch timing; returns the prompt indices it finished."""
    from core.generation import generate_summaries

    finished: set[int] = set()
    clock = [time.perf_counter()]

    def batch_done(indices: list[int], texts: list[str]) -> None:
        now = time.perf_counter()
        for i, text in zip(indices, texts):
            on_done(i, text, None, (now - clock[0]) / len(indices))
            finished.add(i)
        clock[0] = now

    try:
        generate_summaries(model, tokenizer, prompts, cfg.generation, on_batch_done=batch_done)
    except OSError:
        raise  # writing the log failed (disk full): not the model's fault, stop
    except Exception as exc:  # e.g. out of memory on a long batch: the rest goes one by one
        log.warning("a truncate batch failed (%s); generating the rest one at a time", type(exc).__name__)
    return finished


def run_truncate(cfg: Config, todo: list[LongDoc], out: GenerationLog, setup: str, progress: bool) -> None:
    """One pass per document, cut to the prompt budget, batched by length in this process."""
    from core.generation import generate_summaries
    from core.prompt import build_prompt_ids

    model, tokenizer = _load_truncate_model(cfg)
    with _bar("truncate", len(todo), progress) as bar:
        docs, prompts = [], []
        for doc in todo:
            if doc.text.strip():
                docs.append(doc)
                prompts.append(build_prompt_ids(tokenizer, doc.text, cfg.prompt_budget, cfg.data.prompt_template))
            else:
                out.add("truncate", doc, setup, error="empty document")
                bar.update(1)

        def record(i: int, text: Optional[str], error: Optional[str], seconds: Optional[float]) -> None:
            if error is None and not text.strip():
                error = "the model returned an empty summary"
            out.add("truncate", docs[i], setup, summary=text if error is None else None, error=error,
                    seconds=seconds, prompt_tokens=len(prompts[i]))
            bar.update(1)

        finished = _generate_logged(model, tokenizer, cfg, prompts, record)
        for i in sorted(set(range(len(prompts))) - finished):
            started = time.perf_counter()
            try:
                (text,) = generate_summaries(model, tokenizer, [prompts[i]], cfg.generation)
                record(i, text, None, time.perf_counter() - started)
            except Exception as exc:
                record(i, None, f"generation failed: {typed_line(exc)}", None)


def leadk_budgets(docs: list[LongDoc], out: GenerationLog, mapreduce_setup: str) -> dict[str, tuple[int, str]]:
    """doc id -> (words, source) from the map-reduce summaries in the log under current settings."""
    return {d.id: leadk_budget(d, out.get("mapreduce", d, mapreduce_setup)) for d in docs}


def run_leadk(docs: list[LongDoc], out: GenerationLog, budgets: dict[str, tuple[int, str]]) -> None:
    """Instant, no model; redone whenever the length it must match changes."""
    for doc in docs:
        words, source = budgets[doc.id]
        setup = leadk_setup(words)
        if out.done("leadk", doc, setup):
            continue
        started = time.perf_counter()
        summary = lead_k(doc.text, words)
        error = None if summary else ("empty document" if not doc.text.strip() else "no length to match (0 words)")
        out.add("leadk", doc, setup, summary=summary or None, error=error,
                seconds=time.perf_counter() - started, words_budget=words, budget_source=source)


# --- scoring --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _scorer():
    """metrics.rouge_scores returns F1 only; recall needs rouge_score itself (same settings)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_recall_f1(summary: str, reference: str) -> dict[str, float]:
    scores = _scorer().score(reference.strip(), summary)
    return {**{f"{r}_recall": scores[r].recall for r in ROUGE_TYPES},
            **{f"{r}_f1": scores[r].fmeasure for r in ROUGE_TYPES}}


def score_record(doc: LongDoc, rec: Optional[dict], threshold: float) -> dict:
    """One (system, document) row for the report: scores and coverage, or its error."""
    from evaluation.metrics import word_count

    if rec is None or rec.get("error") is not None:
        return {"error": rec["error"] if rec else "not generated"}
    summary = rec["summary"] or ""
    row = {"summary": summary, **rouge_recall_f1(summary, doc.reference), "words": word_count(summary),
           "seconds": rec.get("seconds")}
    if doc.articles:
        row["coverage"] = article_coverage(doc, summary, threshold)
    return row


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def system_summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    summary = {k: _mean(r[k] for r in ok) for k in (*SCORE_KEYS, "words", "seconds")}
    summary["num_scored"], summary["num_failed"] = len(ok), len(rows) - len(ok)
    return summary


def paired_difference(a: list[dict], b: list[dict], key: str, samples: int) -> dict:
    """Mean and paired bootstrap 95% CI of a - b over documents both systems finished."""
    from evaluation.report import BOOTSTRAP_SEED
    from evaluation.metrics import bootstrap_ci

    diffs = [x[key] - y[key] for x, y in zip(a, b) if "error" not in x and "error" not in y]
    return {"metric": key, "mean": _mean(diffs), "ci95": list(bootstrap_ci(diffs, samples, seed=BOOTSTRAP_SEED)),
            "num_paired": len(diffs)}


def build_result(docs: list[LongDoc], rows: dict[str, list[dict]], samples: int) -> dict:
    """The results.json body (config and settings are added by the caller)."""
    from evaluation.metrics import word_count

    result: dict = {
        "num_documents": len(docs),
        "avg_document_tokens": _mean(d.tokens for d in docs),
        "avg_reference_words": _mean(word_count(d.reference) for d in docs if d.reference.strip()),
        "systems": {s: system_summary(r) for s, r in rows.items()},
        "comparison": {},
    }
    if "mapreduce" in rows and "truncate" in rows:
        result["comparison"]["mapreduce_minus_truncate"] = paired_difference(
            rows["mapreduce"], rows["truncate"], "rouge1_recall", samples)
    if any(d.articles for d in docs):
        result["coverage"] = {
            s: aggregate_coverage(c for r in rs if "error" not in r for c in r.get("coverage", []))
            for s, rs in rows.items()
        }
    return result


# --- reports --------------------------------------------------------------------------


def _pct(share: float, counts: dict) -> str:
    return f"{_fmt(share * 100, digits=1)}% ({counts['covered']}/{counts['total']})" if counts["total"] else "n/a"


def markdown_report(result: dict) -> str:
    head = ["System", "R1 recall", "R2 recall", "RL recall", "R1 F1", "R2 F1", "RL F1", "Words", "s/doc", "Failures"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for system, v in result["systems"].items():
        cells = [_fmt(v[k]) for k in SCORE_KEYS] + [_fmt(v["words"], digits=1), _fmt(v["seconds"], digits=2), str(v["num_failed"])]
        lines.append(f"| {DISPLAY_NAMES[system]} | " + " | ".join(cells) + " |")
    notes = [f"{result['num_documents']} documents ({result.get('data', '?')}: {result.get('source', '?')}); "
             f"{_fmt(result['avg_document_tokens'], digits=0)} {result.get('token_unit', 'tokens')} and references of "
             f"{_fmt(result['avg_reference_words'], digits=1)} words on average."]
    diff = result["comparison"].get("mapreduce_minus_truncate")
    if diff:
        lo, hi = diff["ci95"]
        notes.append(f"Map-reduce − truncate: ROUGE-1 recall {_fmt(diff['mean'], signed=True)}, 95% paired "
                     f"bootstrap CI [{_fmt(lo, signed=True)}, {_fmt(hi, signed=True)}] over {diff['num_paired']} documents.")
    if "leadk" in result["systems"]:
        notes.append("Lead-k: the document's first sentences, cut to its map-reduce summary's length "
                     "(the reference's where map-reduce failed or has not run).")
    if {"mapreduce", "truncate"} & set(result["systems"]):
        notes.append("s/doc: map-reduce = each document's own wall time, other documents in flight; truncate = "
                     "batch time / batch size; model loading excluded.")
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
        per_doc.append(json.dumps(_no_nan(entry), ensure_ascii=False))
    _write_atomic(out_dir / "per_document.jsonl", "\n".join(per_doc) + "\n")
    _write_atomic(out_dir / "results.json", json.dumps(_no_nan(result), indent=2, ensure_ascii=False) + "\n")
    report = markdown_report(result)
    _write_atomic(out_dir / "results.md", report)
    return report


# --- the program ----------------------------------------------------------------------


def check_options(args: argparse.Namespace) -> list[str]:
    """The chosen systems, in run order; ConfigError for a bad flag before anything loads."""
    systems = [s.strip() for s in args.compare.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise ConfigError(f"--systems: choose from {', '.join(SYSTEMS)} (got {args.compare!r})")
    if args.limit <= 0:
        raise ConfigError(f"--limit must be positive, got {args.limit}")
    if args.data == "joined" and not 0 < args.min_tokens <= args.max_tokens:
        raise ConfigError(f"need 0 < --min-tokens <= --max-tokens, got {args.min_tokens} and {args.max_tokens}")
    if not 0 <= args.coverage_threshold <= 1:
        raise ConfigError(f"--coverage-threshold must be in [0, 1], got {args.coverage_threshold}")
    return [s for s in SYSTEMS if s in systems]


def load_documents(cfg: Config, args: argparse.Namespace) -> tuple[list[LongDoc], str]:
    if args.data == "longdocs":
        return load_longdocs(Path(args.longdocs_file), args.limit), args.longdocs_file
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    docs = load_joined(Path(args.test_file), tokenizer, args.min_tokens, args.max_tokens, args.limit)
    return docs, args.test_file


def generate(cfg: Config, docs: list[LongDoc], systems: list[str], out: GenerationLog, progress: bool) -> dict:
    """Run what is missing, in order; returns the settings hash per system (leadk: per document)."""
    setups: dict = model_setups(cfg)
    for system, runner in (("mapreduce", run_mapreduce), ("truncate", run_truncate)):
        if system not in systems:
            continue
        todo = [d for d in docs if not out.done(system, d, setups[system])]
        if len(todo) < len(docs):
            log.info("%s: %d of %d documents already in %s", system, len(docs) - len(todo), len(docs), out.path)
        if todo:
            runner(cfg, todo, out, setups[system], progress)
    budgets = leadk_budgets(docs, out, setups["mapreduce"])
    setups["leadk"] = {doc_id: leadk_setup(words) for doc_id, (words, _) in budgets.items()}
    if "leadk" in systems:
        run_leadk(docs, out, budgets)
    return setups


def collect_rows(docs: list[LongDoc], systems: list[str], setups: dict, out: GenerationLog,
                 threshold: float) -> dict[str, list[dict]]:
    """system -> one scored row per document (in document order) from the current-settings records."""
    rows = {}
    for s in systems:
        rows[s] = []
        for d in docs:
            setup = setups["leadk"][d.id] if s == "leadk" else setups[s]
            rows[s].append(score_record(d, out.get(s, d, setup), threshold))
    return rows


def evaluate_long(cfg: Config, args: argparse.Namespace) -> dict:
    """The whole command; returns the results dict (also written to the output dir)."""
    systems = check_options(args)
    docs, source = load_documents(cfg, args)
    out_dir = Path(args.out_dir or DEFAULT_OUT_DIRS[args.data])
    out_dir.mkdir(parents=True, exist_ok=True)
    out = GenerationLog(out_dir / LOG_FILE)
    try:
        setups = generate(cfg, docs, systems, out, progress=not args.no_progress)
    finally:
        out.close()
    rows = collect_rows(docs, systems, setups, out, args.coverage_threshold)
    result = {"data": args.data, "source": source,
              "token_unit": "model tokens" if args.data == "joined" else "Qwen2.5 tokens (qwen_tokens field)",
              **build_result(docs, rows, cfg.evaluation.bootstrap_samples)}
    if args.data == "joined":
        result.update(coverage_threshold=args.coverage_threshold, min_tokens=args.min_tokens, max_tokens=args.max_tokens)
    result["setups"] = {s: setups[s] for s in ("mapreduce", "truncate") if s in systems}
    result["config"] = cfg.to_dict()
    report = write_reports(out_dir, docs, rows, result)
    print(report)
    log.info("wrote %s/{results.json,results.md,per_document.jsonl,%s}", out_dir, LOG_FILE)
    return result


_SKIP_KEYS = (
    "dataset", "dataset_config", "train_split", "eval_split", "eval_dataset", "test_split", "test_dataset",
    "article_field", "summary_field", "id_field", "eval_output_dir", "num_examples", "systems",
    "bertscore_model", "bertscore_num_layers", "text_field",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.longdocs",
        description=(
            "Compare map-reduce (Ray actors), one truncated pass and a length-matched lead on long "
            "documents with the config's model + adapter: ROUGE-1/2/L recall and F1, words, s/doc, "
            "failures, paired bootstrap CI of map-reduce - truncate ROUGE-1 recall; in joined mode also "
            "per-article coverage by position. Resumable: rerun the same command."
        ),
        epilog=("Files in --out-dir: longdoc_generations.jsonl (resume log), per_document.jsonl, results.json, "
                "results.md. The Markdown report goes to stdout, progress to stderr."),
    )
    parser.add_argument("--data", choices=("longdocs", "joined"), default="longdocs",
                        help="longdocs: real long documents; joined: consecutive CNN/DM test articles joined (default %(default)s)")
    parser.add_argument("--longdocs-file", default=DEFAULT_LONGDOCS, help="longdocs JSONL (default %(default)s)")
    parser.add_argument("--test-file", default=DEFAULT_TEST_FILE, help="CNN/DM test JSONL for --data joined (default %(default)s)")
    parser.add_argument("--limit", type=int, default=30, help="documents to evaluate (default %(default)s)")
    parser.add_argument("--min-tokens", type=int, default=6000, help="joined: least model tokens per document (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=12000, help="joined: most model tokens per document (default %(default)s)")
    parser.add_argument("--coverage-threshold", type=float, default=0.2,
                        help="joined: content-word ROUGE-1 recall of an article's highlights that counts as covered (default %(default)s)")
    parser.add_argument("--systems", dest="compare", metavar="LIST", default=",".join(SYSTEMS), help="comma-separated subset of %(default)s")
    parser.add_argument("--out-dir", "--eval-output-dir", dest="out_dir", default=None,
                        help="output dir (default outputs/longdocs, or outputs/longdocs_joined for --data joined)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    add_config_flags(parser, sections=("model", "data", "generation", "evaluation", "mapreduce", "batch"), skip=_SKIP_KEYS)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out_dir = args.out_dir or DEFAULT_OUT_DIRS[args.data]
    try:
        evaluate_long(config_from_args(args), args)
    except KeyboardInterrupt:
        print(f"interrupted: finished documents are in {out_dir}/{LOG_FILE}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, (UserError, OSError)) and not _pool_died(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        # all Ray actors dead, or anything unforeseen: one line, and where the finished work is
        log.debug("traceback", exc_info=True)
        print(f"error: {typed_line(exc)} (finished documents are in {out_dir}/{LOG_FILE}; "
              "rerun the same command to resume)", file=sys.stderr)
        return 1
    return 0


def _pool_died(exc: BaseException) -> bool:
    """A WorkerError: only a map-reduce run raises it, and only then is mapreduce.pool (and Ray) imported."""
    pool = sys.modules.get("mapreduce.pool")
    return pool is not None and isinstance(exc, pool.WorkerError)


if __name__ == "__main__":
    sys.exit(main())
