"""Read a corpus as a stream of documents, and the JSONL output of a batch job.

Inputs: JSONL, JSONL.gz, or a directory of .txt/.md files, read one line (one file) at a
time so the corpus is never held in memory. A row that cannot be summarized (malformed
JSON, missing or empty text, a duplicate id) comes out as a `BadRow` carrying its line
number, and the stream goes on.

Output: one JSON line per input document, appended and flushed as each finishes. On a
rerun the file is compacted first: finished (`ok`) lines are kept, anything else (errors,
a line cut short by a crash) is dropped, so those documents are tried again and every
input id ends up exactly once.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union


class CorpusError(ValueError):
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


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="strict")
    return open(path, "r", encoding="utf-8", errors="strict")


def _dir_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md"))


def count_rows(path: Path) -> int:
    """Non-blank lines (or files): the progress bar's total, in one cheap streaming pass."""
    if path.is_dir():
        return len(_dir_files(path))
    with _open_text(path) as f:
        try:
            return sum(1 for line in f if line.strip())
        except (UnicodeDecodeError, OSError, EOFError) as exc:
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
    seen: set[str] = set()
    for number, file in enumerate(_dir_files(path), start=1):
        doc_id = str(file.relative_to(path).with_suffix(""))
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            yield BadRow(number, f"{file.name}: not UTF-8 text", doc_id)
            continue
        if "\x00" in text:
            yield BadRow(number, f"{file.name}: binary file", doc_id)
        elif not text.strip():
            yield BadRow(number, f"{file.name}: empty text", doc_id)
        elif doc_id in seen:
            yield BadRow(number, f"duplicate id {doc_id!r}")
        else:
            seen.add(doc_id)
            yield Document(doc_id, text, number)


def _iter_jsonl(path: Path, id_field: str, text_field: str) -> Iterator[Row]:
    first_line_of: dict[str, int] = {}
    with _open_text(path) as f:
        number = 0
        while True:
            try:
                raw = f.readline()
            except UnicodeDecodeError:
                raise CorpusError(f"{path}: not UTF-8 text after line {number}") from None
            except (OSError, EOFError) as exc:
                raise CorpusError(f"{path}: unreadable after line {number} ({exc})") from None
            if not raw:
                return
            number += 1
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield BadRow(number, f"malformed JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                yield BadRow(number, "not a JSON object")
                continue
            doc_id = row.get(id_field)
            if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
                yield BadRow(number, f"missing id field '{id_field}'")
                continue
            doc_id = str(doc_id)
            if doc_id in first_line_of:
                yield BadRow(number, f"duplicate id {doc_id!r} (first on line {first_line_of[doc_id]})")
                continue
            first_line_of[doc_id] = number
            text = row.get(text_field)
            if not isinstance(text, str) or not text.strip():
                yield BadRow(number, f"missing or empty text field '{text_field}'", doc_id)
                continue
            yield Document(doc_id, text, number)


def row_key(record: dict) -> str:
    """What identifies an output line: its id, or its input line when it has no id."""
    return f"id:{record['id']}" if record.get("id") is not None else f"line:{record.get('line')}"


def compact_output(path: Path) -> set[str]:
    """Keep only the finished (`ok`) lines of an earlier run; return their keys.

    Written to a temp file and renamed over the original, so a crash here loses nothing.
    """
    if not path.exists():
        return set()
    kept: list[str] = []
    done: set[str] = set()
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(record, dict) and record.get("status") == "ok" and row_key(record) not in done:
                done.add(row_key(record))
                kept.append(json.dumps(record, ensure_ascii=False))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return done


class OutputWriter:
    """Appends one JSON line per document and flushes it to disk at once."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
