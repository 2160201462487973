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
               max_length - max_new_tokens, core.generation.generate_isolated generates.
    leadk      the document's first sentences (core.rouge.split_sentences), cut to
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
                               other settings (core.fingerprint: every key that can change a
                               summary, the adapter's files, the resolved dtype and device)
                               or other document text.
    per_document.jsonl         each document's summaries, scores and article coverage.
    results.json, results.md   per system: ROUGE recall/F1, words, s/doc, failures; the CI
                               of the difference; in joined mode the coverage table. The
                               Markdown is also printed to stdout; progress goes to stderr.

Errors (a missing file, a bad flag or config value) are one `error: ...` line and exit 1;
Ctrl-C exits 130 with a resume hint.

This file holds the CLI, the three systems and the order they run in. Its neighbours:
evaluation.longdocs_data (inputs), evaluation.coverage (coverage, lead-k),
evaluation.longdocs_report (scores and files), generations_log.LongdocLog (resume log).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

from core.config import Config, ConfigError
from core.flags import add_config_flags, config_from_args
from core.errors import UserError, typed_line
from core.fingerprint import SUMMARIES, check_runtime, settings_hash, value_hash
from core.rouge import sentence_splitter_name
from evaluation.coverage import lead_k, leadk_budget, paragraph_leads
from evaluation.longdocs_systems import bar as bar_for
from evaluation.longdocs_systems import run_truncate, run_whole
from evaluation.generations_log import LongdocLog
from evaluation.longdocs_data import LongDoc, load_joined, load_longdocs
from evaluation.longdocs_report import build_result, score_record, write_reports

log = logging.getLogger("longdocs")

SYSTEMS = ("mapreduce", "whole", "truncate", "leadk", "paralead")  # run order: the baselines' length needs mapreduce
BASELINES = {"leadk": lead_k, "paralead": paragraph_leads}  # no model: summaries cut to map-reduce's length
LOG_FILE = "longdoc_generations.jsonl"
DEFAULT_LONGDOCS = "../shared/data/longdocs/longdocs.jsonl"
DEFAULT_TEST_FILE = "../shared/data/cnndm/test.jsonl"
JOINED_TOKENS = (6000, 12000)  # joined: least and most model tokens per document
COVERAGE_THRESHOLD = 0.2  # joined: an article's highlights' content-word recall that counts as covered
DEFAULT_OUT_DIRS = {"longdocs": "outputs/longdocs", "joined": "outputs/longdocs_joined"}


# --- settings -------------------------------------------------------------------------


def model_setups(cfg: Config) -> dict[str, str]:
    """core.fingerprint's settings hashes of the model systems.

    mapreduce: every summary-changing key (core.fingerprint.SUMMARIES); the dtype and device
    its Ray workers resolve are recorded beside each summary and checked in run_mapreduce.
    truncate: evaluate's hash of the same model, resolved in this process, where it runs.
    """
    from evaluation.generations_log import system_setup

    truncate = system_setup(cfg, "adapter" if cfg.model.adapter else "base")
    return {
        "mapreduce": "mr-" + settings_hash(cfg, scope=SUMMARIES),
        "truncate": "tr-" + truncate,
        "whole": "wh-" + value_hash([truncate, cfg.mapreduce.summary_words, "whole-v1"] + _whole_extras(cfg)),
    }


def _whole_extras(cfg: Config) -> list:
    """The whole call's settings set away from their defaults (so older runs keep their hash)."""
    from mapreduce.reduce import TOKENS_PER_WORD

    extras: list = [cfg.evaluation.whole_template] if cfg.evaluation.whole_template else []
    if cfg.mapreduce.merge_tokens_per_word != TOKENS_PER_WORD:
        extras.append({"merge_tokens_per_word": cfg.mapreduce.merge_tokens_per_word})
    return extras


def leadk_setup(words: int, system: str = "leadk") -> str:
    """A baseline's settings: the splitter and the word budget are all that change its output."""
    prefix = "lk-" if system == "leadk" else "pl-"
    return prefix + value_hash({"splitter": sentence_splitter_name(), "words": words})


# --- the systems ----------------------------------------------------------------------


def run_mapreduce(cfg: Config, todo: list[LongDoc], out: LongdocLog, setup: str, progress: bool) -> None:
    """All documents through one engine.run, so chunks of several documents batch together."""
    from mapreduce.engine import open_engine

    by_id = {d.id: d for d in todo}
    texts = [0]

    def on_progress(event) -> None:
        if event.kind == "item":
            texts[0] += 1
            bar.set_postfix(texts=texts[0], refresh=False)

    with bar_for("mapreduce", len(todo), progress) as bar:
        say = lambda message: bar.write(message, file=sys.stderr)  # noqa: E731
        with open_engine(cfg, on_progress=on_progress, say=say) as engine:
            earlier = [r.get("runtime") for r in out.latest.values() if r["system"] == "mapreduce"
                       and r["setup"] == setup and r.get("error") is None]
            check_runtime(earlier, engine.runtime, str(out.path), "pass another --out-dir to start fresh")
            for result in engine.run((d.id, d.text) for d in todo):
                out.add("mapreduce", by_id[result.doc_id], setup, summary=result.summary, error=result.error,
                        seconds=result.timings.get("total_s"), tokens=result.tokens, runtime=engine.runtime)
                bar.update(1)


def leadk_budgets(docs: list[LongDoc], out: LongdocLog, mapreduce_setup: str) -> dict[str, tuple[int, str]]:
    """doc id -> (words, source) from the map-reduce summaries in the log under current settings."""
    return {d.id: leadk_budget(d, out.get("mapreduce", d, mapreduce_setup)) for d in docs}


def run_baselines(docs: list[LongDoc], out: LongdocLog, budgets: dict[str, tuple[int, str]], systems: list[str]) -> None:
    """Instant, no model; redone whenever the length they must match changes."""
    for system in (s for s in BASELINES if s in systems):
        for doc in docs:
            words, source = budgets[doc.id]
            setup = leadk_setup(words, system)
            if out.done(system, doc, setup):
                continue
            started = time.perf_counter()
            summary = BASELINES[system](doc.text, words)
            error = None if summary else ("empty document" if not doc.text.strip() else "no length to match (0 words)")
            out.add(system, doc, setup, summary=summary or None, error=error,
                    seconds=time.perf_counter() - started, words_budget=words, budget_source=source)


# --- the program ----------------------------------------------------------------------


def check_options(args: argparse.Namespace) -> list[str]:
    """The chosen systems, in run order; ConfigError for a bad flag before anything loads."""
    systems = [s.strip() for s in args.compare.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise ConfigError(f"--systems: choose from {', '.join(SYSTEMS)} (got {args.compare!r})")
    if args.limit <= 0 or args.start < 0:
        raise ConfigError(f"--limit must be positive and --start >= 0, got {args.limit} and {args.start}")
    if args.data == "joined" and not 0 < args.min_tokens <= args.max_tokens:
        raise ConfigError(f"need 0 < --min-tokens <= --max-tokens, got {args.min_tokens} and {args.max_tokens}")
    if not 0 <= args.coverage_threshold <= 1:
        raise ConfigError(f"--coverage-threshold must be in [0, 1], got {args.coverage_threshold}")
    return [s for s in SYSTEMS if s in systems]


def load_documents(cfg: Config, args: argparse.Namespace) -> tuple[list[LongDoc], str]:
    if args.data == "longdocs":
        return load_longdocs(Path(args.longdocs_file), args.limit, args.start), args.longdocs_file
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    docs = load_joined(Path(args.test_file), tokenizer, args.min_tokens, args.max_tokens, args.limit)
    return docs, args.test_file


def generate(cfg: Config, docs: list[LongDoc], systems: list[str], out: LongdocLog, progress: bool) -> dict:
    """Run what is missing, in order; returns the settings hash per system (baselines: per document)."""
    setups: dict = model_setups(cfg)
    for system, runner in (("mapreduce", run_mapreduce), ("whole", run_whole), ("truncate", run_truncate)):
        if system not in systems:
            continue
        todo = [d for d in docs if not out.done(system, d, setups[system])]
        if len(todo) < len(docs):
            log.info("%s: %d of %d documents already in %s", system, len(docs) - len(todo), len(docs), out.path)
        if todo:
            runner(cfg, todo, out, setups[system], progress)
    budgets = leadk_budgets(docs, out, setups["mapreduce"])
    for system in BASELINES:
        setups[system] = {doc_id: leadk_setup(words, system) for doc_id, (words, _) in budgets.items()}
    run_baselines(docs, out, budgets, systems)
    return setups


def collect_rows(docs: list[LongDoc], systems: list[str], setups: dict, out: LongdocLog,
                 threshold: float) -> dict[str, list[dict]]:
    """system -> one scored row per document (in document order) from the current-settings records."""
    rows = {}
    for s in systems:
        rows[s] = []
        for d in docs:
            setup = setups[s][d.id] if s in BASELINES else setups[s]
            rows[s].append(score_record(d, out.get(s, d, setup), threshold))
    return rows


def evaluate_long(cfg: Config, args: argparse.Namespace) -> dict:
    """The whole command; returns the results dict (also written to the output dir)."""
    systems = check_options(args)
    docs, source = load_documents(cfg, args)
    out_dir = Path(args.out_dir or DEFAULT_OUT_DIRS[args.data])
    out_dir.mkdir(parents=True, exist_ok=True)
    out = LongdocLog(out_dir / LOG_FILE)
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
    result["setups"] = {s: setups[s] for s in ("mapreduce", "whole", "truncate") if s in systems}
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
    parser.add_argument("--test-file", default=DEFAULT_TEST_FILE,
                        help="CNN/DM JSONL(.gz) for --data joined; rows without highlights use their GPT-4 "
                             "summary (val_llm_references.jsonl.gz: articles the adapter never trained on, to "
                             "choose settings on) (default %(default)s)")
    parser.add_argument("--limit", type=int, default=30, help="documents to evaluate (default %(default)s)")
    parser.add_argument("--start", type=int, default=0,
                        help="longdocs: first row to evaluate, 0-based (e.g. 30 for rows 30-99, the rows settings "
                             "are chosen on; rows 0-29 are reported) (default %(default)s)")
    parser.add_argument("--min-tokens", type=int, default=JOINED_TOKENS[0], help="joined: least model tokens per document (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=JOINED_TOKENS[1], help="joined: most model tokens per document (default %(default)s)")
    parser.add_argument("--coverage-threshold", type=float, default=COVERAGE_THRESHOLD,
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
