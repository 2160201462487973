"""`summarize`: long documents in, summaries out, map-reduced over Ray actors.

    python -m mapreduce.cli summarize report.txt notes.md       (== summarizer summarize ...)
    cat report.txt | python -m mapreduce.cli summarize - --json > report.json

Inputs are checked before Ray starts or a model loads: a missing file, an empty or
whitespace-only text, binary or non-UTF-8 bytes, a document over max_document_tokens each
stop the run with one `error:` line. Summaries go to stdout (plain text, or JSON with the
chunk/level tree); progress, Ray start-up and the total time go to stderr. A stdout that
cannot be written (a full disk) is one `error:` line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from core.flags import add_config_flags, config_from_args
from core.errors import UserError

CONFIG_SECTIONS = ("model", "data", "generation", "mapreduce", "batch")
EXAMPLES = """\
examples:
  python -m mapreduce.cli summarize --config configs/smollm2_cpu.yaml long.txt
  python -m mapreduce.cli summarize --base-model embedded:smollm2 --max-length 512 \\
      --chunk-size 380 --chunk-overlap 40 --max-new-tokens 80 long.txt --json
  summarizer summarize --adapter adapters/qwen --num-workers 4 --num-gpus-per-worker 0.5 a.md b.md
  RAY_ADDRESS=ray://head:10001 summarizer summarize big.txt     # join an existing cluster
"""


class InputError(UserError, ValueError):
    """An input file the CLI refuses; one line for the user."""


def read_input(name: str) -> str:
    """The text of a file (or stdin for '-'), refusing what is not a non-empty UTF-8 text."""
    label = "<stdin>" if name == "-" else name
    if name == "-":
        data = sys.stdin.buffer.read()
    else:
        path = Path(name)
        if not path.exists():
            raise InputError(f"{label}: no such file")
        if path.is_dir():
            raise InputError(f"{label}: is a directory, not a text file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if b"\x00" in data:
        raise InputError(f"{label}: looks like a binary file (NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise InputError(f"{label}: is empty (no text to summarize)")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mapreduce.cli",
        description="Summarize long documents with the LoRA news summarizer, map-reduced over Ray actors.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="summarize")
    s = sub.add_parser(
        "summarize",
        help="summarize one or more long documents",
        description=(
            "Split each document into chunks that fit the adapter's training length, summarize "
            "every chunk on a pool of Ray actors, then reduce the partial summaries level by level "
            "into one summary. Joins $RAY_ADDRESS (or --ray-address) if set, else starts a local "
            "Ray cluster for the run."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("inputs", nargs="+", metavar="FILE", help="UTF-8 text files (.txt, .md), or - for stdin")
    s.add_argument("--json", action="store_true",
                   help="print JSON: summary, token counts, timings and the tree (chunk spans, every level)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_config_flags(s, sections=CONFIG_SECTIONS)
    return parser


class _ProgressBar:
    """Chunks summarized / total on stderr, with the latest reduce level as the postfix."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None  # made at the first event, so it starts below the "workers ready" line
        self.single_chunk: set[str] = set()

    def __call__(self, event) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=0, desc="chunks", unit="chunk", file=sys.stderr, disable=not self.enabled,
                            dynamic_ncols=True, mininterval=0.5)
        if event.kind == "document":
            self.bar.write(f"{event.doc_id}: {event.total} chunk(s) to summarize", file=sys.stderr)
            self.bar.total += event.total
            if event.total == 1:
                self.single_chunk.add(event.doc_id)
            self.bar.refresh()
        elif event.kind == "item" and (event.level == "map" or event.doc_id in self.single_chunk):
            self.bar.update(1)
        elif event.kind == "level" and event.level != "map":
            self.bar.set_postfix_str(f"{event.doc_id}: {event.level} ({event.total} inputs)")
        elif event.kind == "finished" and event.error:
            self.bar.write(f"{event.doc_id}: failed: {event.error}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_input_sizes(cfg, texts: dict[str, str], chunker) -> dict[str, int]:
    """Each input's tokens, counted once with the engine's chunker (the engine reuses them);
    an oversized input is refused before Ray or a model starts (hours of work are asked for)."""
    from mapreduce.document import check_document_size

    counts = {}
    for name, text in texts.items():
        counts[name] = chunker.count_tokens(text)
        try:
            check_document_size(counts[name], cfg)
        except ValueError as exc:
            raise InputError(f"{'<stdin>' if name == '-' else name}: {exc}") from None
    return counts


class OutputError(UserError):
    """stdout could not be written (a full disk, a closed pipe); one line for the user."""


def write_stdout(text: str) -> None:
    """Print to stdout; OutputError (one line, no traceback) if it cannot be written.

    After a failure stdout is pointed at /dev/null, so the interpreter's own flush at exit
    does not print a second error about the same bytes.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        raise OutputError(f"cannot write the summaries to stdout: {exc.strerror or exc}") from None


@contextmanager
def stdout_to_stderr():
    """Send file descriptor 1 to stderr while Ray runs: its `(raylet)` notices (a restarted
    actor, a retried task) are printed to stdout and would corrupt `--json > tree.json`."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summarize(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    cfg = config_from_args(args)
    if args.inputs.count("-") > 1:
        raise InputError("'-' (stdin) can be given only once")
    texts = {name: read_input(name) for name in dict.fromkeys(args.inputs)}

    from mapreduce.engine import open_engine, prepare_engine

    chunker = prepare_engine(cfg)  # tokenizer, chunk budget, adapter: checked once, before Ray
    counts = check_input_sizes(cfg, texts, chunker)
    bar = _ProgressBar(enabled=not args.no_progress)
    try:
        with stdout_to_stderr(), open_engine(cfg, on_progress=bar, say=_say, chunker=chunker) as engine:
            results = {r.doc_id: r for r in engine.run(texts.items(), token_counts=counts)}
    finally:
        bar.close()

    ordered = [results[name] for name in texts]
    write_stdout(_render(ordered, args.json))
    failed = [r for r in ordered if not r.ok]
    for r in failed:
        _say(f"error: {r.doc_id}: {r.error}")
    chunks = sum(r.tokens.get("chunks", 0) for r in ordered)
    _say(f"summarized {len(ordered) - len(failed)}/{len(ordered)} document(s), {chunks} chunks, "
         f"in {time.perf_counter() - started:.1f}s total")
    return 1 if failed else 0


def _render(ordered: list, as_json: bool) -> str:
    """What stdout gets: the JSON (one object, or a list), or the summaries (headed when several)."""
    if as_json:
        payload = [dict(r.to_dict(tree=True), source=r.doc_id) for r in ordered]
        return json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, ensure_ascii=False) + "\n"
    if len(ordered) == 1:
        return f"{ordered[0].summary}\n" if ordered[0].ok else ""
    return "".join(f"==> {r.doc_id} <==\n{r.summary}\n\n" for r in ordered if r.ok)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    from core.signals import sigterm_as_interrupt

    sigterm_as_interrupt()  # docker stop / timeout: the same clean exit as Ctrl-C
    try:
        return summarize(args)
    except UserError as exc:
        _say(f"error: {exc}")
        return 2 if isinstance(exc, InputError) else 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
