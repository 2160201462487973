"""Summarize a JSONL corpus as a resumable Ray batch job: one output line per document.

    python -m mapreduce.batch --input docs.jsonl --output summaries.jsonl \\
        [--id-field id --text-field document --config configs/smollm2_cpu.yaml ...]

Runs the same locally (a local Ray cluster is started) and under
`ray job submit -- python -m mapreduce.batch ...` (the job joins its cluster).

The corpus is streamed (JSONL, JSONL.gz, or a directory of .txt/.md files); chunks of many
documents go to the actor pool together (mapreduce.engine). Each finished document is
appended to the output and flushed at once, so a crash or Ctrl-C loses only documents in
flight; rerunning the same command skips the ids already done. Bad rows (malformed JSON,
missing or empty text, duplicate id) become `error` lines with their line number and the
job goes on. The exit code is non-zero when any document failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from core.config import Config, ConfigError, add_config_flags, config_from_args
from mapreduce.corpus import (
    BadRow,
    CorpusError,
    Document,
    OutputWriter,
    compact_output,
    count_rows,
    iter_rows,
    row_key,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.batch",
        description=(
            "Summarize every document of a JSONL / JSONL.gz corpus (or a directory of .txt "
            "files) with map-reduce on Ray actors. Appends one JSON line per document "
            "(id, summary, status, timings, token counts) to --output; rerun the same "
            "command to resume after a crash."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="corpus: .jsonl, .jsonl.gz, or a directory of .txt/.md files")
    parser.add_argument("--output", required=True, help="JSONL file to append results to (resumed if it exists)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_config_flags(parser, sections=("model", "data", "generation", "mapreduce", "batch"))
    return parser


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_output_writable(path: Path) -> None:
    if path.is_dir():
        raise CorpusError(f"--output is a directory: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CorpusError(f"output not writable: {path}")


class _Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.skipped = 0
        self.started = time.perf_counter()

    @property
    def written(self) -> int:
        return self.ok + self.errors

    def per_minute(self) -> float:
        elapsed = time.perf_counter() - self.started
        return 60.0 * self.written / elapsed if elapsed > 0 else 0.0


def run_batch(cfg: Config, input_path: Path, output_path: Path, progress: bool = True) -> _Tally:
    from tqdm import tqdm

    from mapreduce.engine import open_engine

    id_field, text_field = cfg.data.id_field, cfg.batch.text_field
    _check_output_writable(output_path)
    total = count_rows(input_path)  # also fails early on an unreadable input
    done = compact_output(output_path)
    tally = _Tally()
    lines: dict[str, int] = {}  # doc id -> input line, for documents handed to the engine
    bar = tqdm(total=total, unit="doc", desc="documents", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def show(n: int = 1) -> None:
        bar.update(n)
        bar.set_postfix(ok=tally.ok, errors=tally.errors, per_min=f"{tally.per_minute():.1f}")

    with OutputWriter(output_path) as out:

        def documents() -> Iterator[tuple[str, str]]:
            """Feed the engine; bad rows are written here, done ids skipped."""
            for row in iter_rows(input_path, id_field, text_field):
                key = row_key({"id": row.id, "line": row.line})
                if key in done:
                    tally.skipped += 1
                    show()
                elif isinstance(row, BadRow):
                    out.write({"id": row.id, "status": "error", "error": row.error, "line": row.line})
                    tally.errors += 1
                    show()
                else:
                    assert isinstance(row, Document)
                    lines[row.id] = row.line
                    yield row.id, row.text

        with open_engine(cfg, say=_say) as engine:
            try:
                for result in engine.run(documents()):
                    out.write(
                        {
                            "id": result.doc_id,
                            "status": "ok" if result.ok else "error",
                            "summary": result.summary,
                            "error": result.error,
                            "line": lines.pop(result.doc_id, None),
                            "tokens": result.tokens,
                            "timings": result.timings,
                        }
                    )
                    if result.ok:
                        tally.ok += 1
                    else:
                        tally.errors += 1
                    show()
            finally:
                bar.close()
    return tally


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    from core.models import ModelError
    from mapreduce.pool import WorkerError

    input_path, output_path = Path(args.input), Path(args.output)
    started = time.perf_counter()
    try:
        cfg = config_from_args(args)
        if not input_path.exists():
            raise CorpusError(f"input not found: {input_path}")
        tally = run_batch(cfg, input_path, output_path, progress=not args.no_progress)
    except (ConfigError, CorpusError, ModelError) as exc:
        _say(f"error: {exc}")
        return 1
    except WorkerError as exc:
        _say(f"error: {exc}; finished documents are in {output_path}, rerun the same command to resume")
        return 1
    except KeyboardInterrupt:
        _say(f"interrupted: finished documents are in {output_path}; rerun the same command to resume")
        return 130
    elapsed = time.perf_counter() - started
    _say(
        f"done: {tally.written} written ({tally.ok} ok, {tally.errors} errors), {tally.skipped} already done, "
        f"in {elapsed:.1f}s ({tally.per_minute():.1f} docs/min) -> {output_path}"
    )
    return 1 if tally.errors else 0


if __name__ == "__main__":
    sys.exit(main())
