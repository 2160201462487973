"""Load CNN/DM-style rows from the hub or from local JSONL / JSONL.gz / parquet files.

The same code serves both: a local path goes through `load_dataset("json"|"parquet")`,
anything else is a hub dataset name. Rows with an empty or missing article or summary are
dropped and counted in the log.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

_LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_SPLIT_SLICE = re.compile(r"^(?P<name>[A-Za-z_]+)(?P<slice>\[.*\])?$")


class DataError(ValueError):
    """A dataset that cannot be loaded; one line for the user."""


def _local_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    files = sorted(str(p) for p in path.iterdir() if p.name.endswith(_LOCAL_SUFFIXES))
    if not files:
        raise DataError(f"no .jsonl/.jsonl.gz/.parquet files in {path}")
    return files


def looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith(_LOCAL_SUFFIXES) or Path(source).exists()


def load_rows(source: str, split: str, config_name: str | None = None):
    """A datasets.Dataset for `split` (e.g. "train[:1000]") of a hub dataset or local file(s).

    For local files the split name is ignored but its slice is applied, so
    `train[:100]` of a local file means its first 100 rows.
    """
    import datasets

    match = _SPLIT_SLICE.match(split.replace(" ", ""))
    if not match:
        raise DataError(f"cannot parse split {split!r} (expected e.g. 'train' or 'train[:1000]')")
    if looks_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"dataset path not found: {path}")
        files = _local_files(path)
        kind = "parquet" if files[0].endswith(".parquet") else "json"
        try:
            return datasets.load_dataset(kind, data_files=files, split="train" + (match["slice"] or ""))
        except Exception as exc:  # malformed file, bad slice
            raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    try:
        return datasets.load_dataset(source, config_name, split=split)
    except Exception as exc:
        raise DataError(
            f"cannot load dataset {source!r} ({config_name}) split {split!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
            "(offline? pass a local .jsonl file as --dataset)"
        ) from None


def drop_empty(rows, article_field: str, summary_field: str | None):
    """Drop rows whose article (or summary, if given) is missing or blank; log how many."""
    for name in (article_field, summary_field):
        if name is not None and name not in rows.column_names:
            raise DataError(f"field '{name}' not in dataset (columns: {', '.join(rows.column_names)})")

    def keep(row) -> bool:
        fields = [article_field] + ([summary_field] if summary_field else [])
        return all(isinstance(row[f], str) and row[f].strip() for f in fields)

    before = len(rows)
    rows = rows.filter(keep)
    dropped = before - len(rows)
    if dropped:
        log.warning("dropped %d of %d rows with an empty or missing article/summary", dropped, before)
    return rows
