"""Long-document inputs for evaluation.longdocs: the longdocs file, or CNN/DM articles joined.

    load_longdocs(path, limit)     the first rows of a longdocs JSONL (id, document, summary)
    load_joined(path, tok, ...)    consecutive test articles joined to a token range
    read_jsonl(path, fields)       rows, with every bad input as one DataError line

Every bad input (missing file, not UTF-8, bad JSON, missing field) is a DataError naming
the file, so the command says one line and exits before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from core.data import DataError

log = logging.getLogger("longdocs")

JOINER = "\n\n"


@dataclass
class Article:
    """One news article inside a joined document: its own highlights judge coverage."""

    id: str
    highlights: str


@dataclass
class LongDoc:
    """One document to summarize, with the reference it is scored against."""

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
    """Rows of a JSONL file; a missing file, bad encoding, bad line or missing field is one DataError."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        yield from _rows(path, fields)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _rows(path: Path, fields: tuple[str, ...]) -> Iterable[dict]:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
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


def _not_utf8(path: Path) -> DataError:
    """Where the first bad byte is, in the file: the decoder's own position is within its block."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return DataError(f"{path}: not UTF-8 text")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return DataError(f"{path}: not UTF-8 text (byte {exc.start}, line {line}: {exc.reason}); "
                         "save it as UTF-8")


def load_longdocs(path: Path, limit: int, start: int = 0) -> list[LongDoc]:
    """`limit` rows from row `start` (0-based); empty documents are kept and fail as documents, not the run."""
    docs = []
    for number, row in enumerate(read_jsonl(path, ("id", "document", "summary"))):
        if len(docs) == limit:
            break
        if number < start:
            continue
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


def _with_highlights(row: dict) -> dict:
    """A row's reference summary as `highlights`: CNN/DM's own, else a model reference
    (val_llm_references.jsonl.gz: `summaries` by model, GPT-4's first)."""
    if "highlights" not in row and isinstance(row.get("summaries"), dict) and row["summaries"]:
        refs = row["summaries"]
        row = dict(row, highlights=refs.get("gpt-4") or next(iter(refs.values())))
    row.setdefault("highlights", "")
    return row


def load_joined(path: Path, tokenizer, min_tokens: int, max_tokens: int, limit: int) -> list[LongDoc]:
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    docs = join_articles(map(_with_highlights, read_jsonl(path, ("id", "article"))), count, min_tokens, max_tokens, limit)
    if not docs:
        raise DataError(f"no run of articles in {path} reaches {min_tokens}..{max_tokens} tokens")
    if len(docs) < limit:
        log.warning("only %d joined documents of %d..%d tokens in %s", len(docs), min_tokens, max_tokens, path)
    return docs
