"""Read a corpus as a stream of documents, and the JSONL output of a batch job.

Inputs: JSONL, JSONL.gz, or a directory of .txt/.md files, read one line (one file) at a
time so the corpus is never held in memory. A row that cannot be summarized (malformed
JSON, a line that is not UTF-8, missing or empty text, a duplicate id) comes out as a
`BadRow` carrying its line number, and the stream goes on.

Output: one JSON line per input document, appended and flushed as each finishes, each
stamped with the `setup` fingerprint of the settings that made it. On a rerun the file is
compacted first: finished (`ok`) lines are kept, anything else (errors, a line cut short
by a crash) is dropped, so those documents are tried again and every input id ends up
exactly once. Resuming only ever touches a file that is recognizably such an output, made
with the same setup, and held under an exclusive lock (`<output>.lock`) for the whole run.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from core.errors import UserError


class CorpusError(UserError, ValueError):
    """An input that cannot be read at all; one line for the user."""


@dataclass
class Document:
    id: str
    text: str
    line: int  # 1-based line number (or file number for a directory)


@dataclass
class BadRow:
    line: int
    error: str
    id: Optional[str] = None


Row = Union[Document, BadRow]


def _open_bytes(path: Path):
    """Lines as bytes: each line is decoded on its own, so one bad byte fails one row, not the job."""
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _dir_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md"))


def count_rows(path: Path) -> int:
    """Non-blank lines (or files): the progress bar's total, in one cheap streaming pass."""
    if path.is_dir():
        return len(_dir_files(path))
    with _open_bytes(path) as f:
        try:
            return sum(1 for line in f if line.strip())
        except (OSError, EOFError) as exc:
            raise CorpusError(f"cannot read {path}: {exc}") from None


def iter_rows(path: str | Path, id_field: str = "id", text_field: str = "document") -> Iterator[Row]:
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"input not found: {path}")
    if path.is_dir():
        yield from _iter_dir(path)
    else:
        yield from _iter_jsonl(path, id_field, text_field)


def _iter_dir(path: Path) -> Iterator[Row]:
    """Ids are relative paths with their suffix, so `x.txt` and `x.md` stay distinct."""
    for number, file in enumerate(_dir_files(path), start=1):
        doc_id = file.relative_to(path).as_posix()
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            yield BadRow(number, f"{file.name}: not UTF-8 text", doc_id)
            continue
        if "\x00" in text:
            yield BadRow(number, f"{file.name}: binary file", doc_id)
        elif not text.strip():
            yield BadRow(number, f"{file.name}: empty text", doc_id)
        else:
            yield Document(doc_id, text, number)


def _iter_jsonl(path: Path, id_field: str, text_field: str) -> Iterator[Row]:
    first_line_of: dict[str, int] = {}
    with _open_bytes(path) as f:
        number = 0
        while True:
            try:
                raw_bytes = f.readline()
            except (OSError, EOFError) as exc:
                raise CorpusError(f"{path}: unreadable after line {number} ({exc})") from None
            if not raw_bytes:
                return
            number += 1
            if not raw_bytes.strip():
                continue
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadRow(number, f"not UTF-8 text (invalid byte at offset {exc.start} of the line)")
                continue
            yield _json_row(raw, number, id_field, text_field, first_line_of)


def _json_row(raw: str, number: int, id_field: str, text_field: str, first_line_of: dict[str, int]) -> Row:
    """One input line as a Document, or the BadRow saying why it cannot be summarized."""
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        return BadRow(number, f"malformed JSON ({exc.msg})")
    if not isinstance(row, dict):
        return BadRow(number, "not a JSON object")
    doc_id = row.get(id_field)
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        return BadRow(number, f"missing id field '{id_field}'")
    doc_id = str(doc_id)
    if doc_id in first_line_of:
        return BadRow(number, f"duplicate id {doc_id!r} (first on line {first_line_of[doc_id]})")
    first_line_of[doc_id] = number
    text = row.get(text_field)
    if not isinstance(text, str) or not text.strip():
        return BadRow(number, f"missing or empty text field '{text_field}'", doc_id)
    return Document(doc_id, text, number)


def row_key(record: dict) -> str:
    """What identifies an output line: its id, or its input line when it has no id."""
    return f"id:{record['id']}" if record.get("id") is not None else f"line:{record.get('line')}"


ROW_KEYS = ("id", "status", "error", "line")  # on every row OutputWriter writes
ROW_START = '{"id": '  # how every written line begins (json.dumps, "id" first)


def check_output_path(output: Path, input_path: Path) -> None:
    """Refuse an --output that compaction's os.replace or appending would damage."""
    if output.exists() and input_path.exists() and os.path.samefile(output, input_path):
        raise CorpusError(f"--output is the same file as --input: {output}")
    if output.is_symlink():
        raise CorpusError(f"--output is a symlink: {output}; pass the real path ({os.path.realpath(output)})")
    if input_path.is_dir() and output.suffix in (".txt", ".md"):
        real = Path(os.path.realpath(output.parent)) / output.name
        if real.is_relative_to(os.path.realpath(input_path)):
            raise CorpusError(f"--output is inside the input directory and would be read as a document: {output}")
    if output.exists():
        mode = os.stat(output).st_mode
        if stat.S_ISDIR(mode):
            raise CorpusError(f"--output is a directory: {output}")
        if not stat.S_ISREG(mode):
            raise CorpusError(f"--output is not a regular file (a device, FIFO or socket): {output}")


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive flock on `<output>.lock` so two jobs never write one output."""
    lock = output.with_name(output.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CorpusError(f"cannot create lock file {lock}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CorpusError(f"another job is writing {output} (it holds {lock}); wait for it to end") from None
            raise CorpusError(f"cannot lock {lock}: {exc.strerror}") from None
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, removing it would race a waiting job


def _result_row(raw: str) -> Optional[dict]:
    """The row as a dict if it is one OutputWriter wrote, else None."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or any(key not in record for key in ROW_KEYS):
        return None
    if record["status"] not in ("ok", "error") or (record["status"] == "ok" and "summary" not in record):
        return None
    return record


def _output_rows(path: Path) -> Iterator[dict]:
    """Every row of an earlier run; CorpusError at the first line that is not one.

    The one exception is a last line with no newline that starts like a row: a write cut
    short by a crash, which compaction drops.
    """
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            record = _result_row(raw)
            if record is not None:
                yield record
            elif raw.endswith("\n") or not (raw.startswith(ROW_START) or ROW_START.startswith(raw)):
                raise CorpusError(
                    f"--output {path} exists and is not a batch output (line {number} is not a result row); "
                    "refusing to overwrite it, pass another --output"
                )


def compact_output(path: Path, setup: str, runtimes: Optional[list] = None) -> set[str]:
    """Keep only the finished (`ok`) lines of an earlier run; return their keys.

    Refuses (CorpusError, file untouched) a file that is not this job's output, or whose
    finished rows were made with another `setup`. Rewritten through a temp file renamed
    over the original, so a crash here loses nothing. `runtimes` collects each kept row's
    `runtime` (the dtype and device its workers resolved), for the caller to check.
    """
    if not path.exists():
        return set()
    kept: list[str] = []
    done: set[str] = set()
    for record in _output_rows(path):
        if record["status"] == "ok" and record.get("setup") != setup:
            raise CorpusError(
                f"--output {path} was made with other settings (model, adapter, templates, generation or "
                "map-reduce settings differ, or an older version of this job wrote it): pass another --output "
                "to start fresh beside it, or delete this one to redo it"
            )
        if record["status"] == "ok" and row_key(record) not in done:
            done.add(row_key(record))
            kept.append(json.dumps(record, ensure_ascii=False))
            if runtimes is not None:
                runtimes.append(record.get("runtime"))
    _rewrite(path, kept)
    return done


def _rewrite(path: Path, lines: list[str]) -> None:
    """Temp file, fsync, rename: the old file stays whole until the new one is."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class OutputWriteError(CorpusError):
    """--output could not be written (a full disk, a lost mount); one line for the user."""


class OutputWriter:
    """Appends one JSON line per document, stamped with `setup` and `runtime`, and flushes it at once.

    A failed write (a full disk) is an OutputWriteError naming the file; the rows written
    before it stay, and at most the one cut short is dropped by the next run's compaction.
    """

    def __init__(self, path: Path, setup: str, runtime: Optional[dict] = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._setup = setup
        self.runtime = runtime  # the workers' resolved dtype and device, once known
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        line = json.dumps({**record, "setup": self._setup, "runtime": self.runtime}, ensure_ascii=False) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputWriteError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # the failed write's bytes, flushed again: already reported
            pass

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
