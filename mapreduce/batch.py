"""Summarize a JSONL corpus as a resumable Ray batch job: one output line per document.

    python -m mapreduce.batch --input docs.jsonl --output summaries.jsonl \\
        [--id-field id --text-field document --config configs/smollm2_cpu.yaml ...]

Runs the same locally (a local Ray cluster is started) and under
`ray job submit -- python -m mapreduce.batch ...` (the job joins its cluster).

The corpus is streamed (JSONL, JSONL.gz, or a directory of .txt/.md files); chunks of many
documents go to the actor pool together (mapreduce.engine). Each finished document is
appended to the output and flushed at once, so a crash or Ctrl-C loses only documents in
flight; rerunning the same command skips the ids already done, and starts no Ray and no
model when nothing is left. Bad rows (malformed JSON, a line that is not UTF-8, missing or
empty text, duplicate id) become `error` lines with their line number and the job goes on.
The exit code is non-zero when any document failed.

The output is guarded: it must not be the input, a symlink, a device/FIFO/directory, or an
existing file that is not a batch output; one job at a time writes it (`<output>.lock`);
and a rerun whose settings differ refuses to mix them in: every row carries the `setup`
hash (core.fingerprint) and the `runtime` its workers resolved (dtype, device type).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from core.config import Config
from core.fingerprint import check_runtime, settings_hash
from core.flags import add_config_flags, config_from_args
from core.errors import UserError
from mapreduce.corpus import (
    BadRow,
    CorpusError,
    Document,
    OutputWriteError,
    OutputWriter,
    check_output_path,
    compact_output,
    count_rows,
    iter_rows,
    output_lock,
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CorpusError(f"cannot create the directory of --output {path}: {exc.strerror}") from None
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


class _Run:
    """One run's bookkeeping: skip done ids, write bad rows and results, tally, progress."""

    def __init__(self, out: OutputWriter, done: set[str], tally: _Tally, bar) -> None:
        self.out, self.done, self.tally, self.bar = out, done, tally, bar
        self.lines: dict[str, int] = {}  # doc id -> input line, for documents handed to the engine

    def show(self) -> None:
        t = self.tally
        self.bar.update(1)
        self.bar.set_postfix(ok=t.ok, errors=t.errors, per_min=f"{t.per_minute():.1f}")

    def documents(self, rows: Iterator) -> Iterator[tuple[str, str]]:
        """Feed the engine; bad rows are written here, done ids skipped."""
        for row in rows:
            if row_key({"id": row.id, "line": row.line}) in self.done:
                self.tally.skipped += 1
                self.show()
            elif isinstance(row, BadRow):
                self.out.write({"id": row.id, "status": "error", "error": row.error, "line": row.line})
                self.tally.errors += 1
                self.show()
            else:
                assert isinstance(row, Document)
                self.lines[row.id] = row.line
                yield row.id, row.text

    def write_result(self, result) -> None:
        self.out.write(
            {
                "id": result.doc_id,
                "status": "ok" if result.ok else "error",
                "summary": result.summary,
                "error": result.error,
                "line": self.lines.pop(result.doc_id, None),
                "tokens": result.tokens,
                "timings": result.timings,
            }
        )
        if result.ok:
            self.tally.ok += 1
        else:
            self.tally.errors += 1
        self.show()


def run_batch(cfg: Config, input_path: Path, output_path: Path, progress: bool = True) -> _Tally:
    """Checks and locks --output before touching it; opens the engine only if work is left."""
    from tqdm import tqdm

    check_output_path(output_path, input_path)
    _check_output_writable(output_path)
    setup = settings_hash(cfg)  # the resolved dtype/device only the workers know: `runtime` on each row
    tally = _Tally()
    with output_lock(output_path):
        total = count_rows(input_path)  # also fails early on an unreadable input
        runtimes: list = []
        done = compact_output(output_path, setup, runtimes)
        bar = tqdm(total=total, unit="doc", desc="documents", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        with bar, OutputWriter(output_path, setup) as out:
            run = _Run(out, done, tally, bar)
            docs = run.documents(iter_rows(input_path, cfg.data.id_field, cfg.batch.text_field))
            first = next(docs, None)  # bad rows and done ids go by without a model
            if first is None:
                return tally
            from mapreduce.engine import open_engine

            with open_engine(cfg, say=_say) as engine:
                check_runtime(runtimes, engine.runtime, f"--output {output_path}",
                              "pass another --output to start fresh beside it")
                out.runtime = engine.runtime
                for result in engine.run(itertools.chain([first], docs)):
                    run.write_result(result)
    return tally


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    from core.signals import sigterm_as_interrupt

    sigterm_as_interrupt()  # docker stop, timeouts: the same clean stop as Ctrl-C
    from mapreduce.pool import WorkerError

    input_path, output_path = Path(args.input), Path(args.output)
    started = time.perf_counter()
    try:
        cfg = config_from_args(args)
        if not input_path.exists():
            raise CorpusError(f"input not found: {input_path}")
        tally = run_batch(cfg, input_path, output_path, progress=not args.no_progress)
    except (WorkerError, OutputWriteError, OSError) as exc:  # the pool died, or a full disk: stopped midway
        _say(f"error: {exc}; finished documents are in {output_path}, rerun the same command to resume")
        return 1
    except UserError as exc:
        _say(f"error: {exc}")
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
