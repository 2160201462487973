"""Load CNN/DM-style rows from the hub or from local JSONL / JSONL.gz / parquet files.

The same code serves both: a local path goes through `load_dataset("json"|"parquet")`,
anything else is a hub dataset name. Rows with an empty or missing article or summary are
dropped and counted in the log.
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path
from typing import Optional

from core.errors import ConfigError, UserError, first_line

log = logging.getLogger(__name__)

_LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_SPLIT_SLICE = re.compile(r"^(?P<name>[A-Za-z_]+)(?P<slice>\[.*\])?$")


class DataError(UserError, ValueError):
    """A dataset that cannot be loaded; one line for the user."""


def _local_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    files = sorted(str(p) for p in path.iterdir() if p.name.endswith(_LOCAL_SUFFIXES))
    if not files:
        raise DataError(f"no .jsonl/.jsonl.gz/.parquet files in {path}")
    return files


def _load_local(source: str):
    """Every row of one local file or dir (a dir's files must share one format)."""
    import datasets

    path = Path(source).expanduser()
    if not looks_local(source) or not path.exists():
        raise DataError(f"dataset path not found: {path}")
    files = _local_files(path)
    kinds = {"parquet" if f.endswith(".parquet") else "json" for f in files}
    if len(kinds) > 1:
        raise DataError(f"cannot mix parquet and JSON files in one dataset dir: {path}")
    kind = kinds.pop()
    try:
        rows = datasets.load_dataset(kind, data_files=files, split="train")
    except Exception as exc:  # malformed file, or an empty one (a bare StopIteration)
        if kind == "json" and not any(_has_text(f) for f in files):
            raise DataError(f"dataset {path} has no rows (empty file)") from None
        raise DataError(f"cannot read {path}: {first_line(exc)}") from None
    if len(rows) == 0:
        raise DataError(f"dataset {path} has no rows")
    return rows


def _has_text(file: str) -> bool:
    """Whether a JSON(L) file, gzipped or not, holds anything but whitespace."""
    opener = gzip.open if file.endswith(".gz") else open
    try:
        with opener(file, "rb") as f:
            return any(block.strip() for block in iter(lambda: f.read(1 << 16), b""))
    except (OSError, EOFError):
        return True  # unreadable is not empty: let the load error speak


def _common_columns(tables: list) -> list:
    """Keep the columns every table has, so files with extra fields still stack."""
    common = [c for c in tables[0].column_names if all(c in t.column_names for t in tables[1:])]
    return [t.select_columns(common) for t in tables]


_SLICE = re.compile(r"^\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\]$")


def _slice_range(text: str | None, n: int) -> range:
    """The row indices of a split slice like `[:1000]`, `[1000:]`, `[10%:20%]` in a table of n rows."""
    if not text:
        return range(n)
    match = _SLICE.match(text)
    if not match:
        raise DataError(f"cannot parse split slice {text!r} (expected e.g. [:1000], [1000:] or [:10%])")

    def bound(value):
        if value is None:
            return None
        return int(n * int(value[:-1]) / 100) if value.endswith("%") else int(value)

    return range(n)[bound(match["start"]) : bound(match["stop"])]


def _parse_split(split: str) -> re.Match:
    match = _SPLIT_SLICE.match(split.replace(" ", ""))
    if not match:
        raise DataError(f"cannot parse split {split!r} (expected e.g. 'train' or 'train[:1000]')")
    return match


def looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith(_LOCAL_SUFFIXES) or Path(source).exists()


def _is_local(source: str | list[str]) -> bool:
    sources = [source] if isinstance(source, str) else list(source)
    return len(sources) > 1 or (bool(sources) and looks_local(sources[0]))


# role -> (its split key, the key naming its own source)
_ROLES = {"train": ("train_split", None), "eval": ("eval_split", "eval_dataset"),
          "test": ("test_split", "test_dataset")}


def _own_source(d, role: str) -> str | None:
    """eval_dataset / test_dataset when it names another source than `dataset`."""
    key = _ROLES[role][1]
    own = getattr(d, key) if key else None
    return own if own and [own] != list(d.dataset) else None


def split_source(d, role: str) -> tuple[str | list[str], str]:
    """(source, split) of a data config's train, eval or test rows.

    A local table has one split, `train`: `validation[:1000]` of it would be its first 1,000
    rows, training rows. So a local `dataset` takes only `train` or `train[a:b]`, and other
    rows come from eval_dataset / test_dataset (whose split name is not read, only its slice).
    """
    split_key, own_key = _ROLES[role]
    split = getattr(d, split_key)
    own = _own_source(d, role)
    if own:
        return own, split
    name = _parse_split(split)["name"]
    if name != "train" and _is_local(d.dataset):
        fix = f"give {own_key} (--{own_key.replace('_', '-')} FILE), or " if own_key else ""
        raise ConfigError(
            f"config key '{split_key}' is {split!r}, but the local dataset has no {name!r} split (its rows are "
            f"one 'train' table): {fix}use a train[a:b] slice of it"
        )
    return d.dataset, split


def check_training_splits(d) -> None:
    """split_source for the train and eval rows, and no validation row of one local table in training."""
    split_source(d, "train")
    if not d.eval_split:
        return
    split_source(d, "eval")
    if _own_source(d, "eval") or not _is_local(d.dataset):
        return
    n = len(load_rows(d.dataset, "train"))
    train = _slice_range(_parse_split(d.train_split)["slice"], n)
    held = _slice_range(_parse_split(d.eval_split)["slice"], n)
    lo, hi = max(train.start, held.start), min(train.stop, held.stop)
    if lo < hi:
        raise ConfigError(
            f"config keys 'train_split' ({d.train_split}) and 'eval_split' ({d.eval_split}) share rows {lo}..{hi - 1} "
            "of the one local table: validation would score training rows; use disjoint train[a:b] slices or "
            "give eval_dataset"
        )


def load_rows(source: str | list[str], split: str, config_name: str | None = None):
    """A datasets.Dataset for `split` (e.g. "train[:1000]") of a hub dataset or local file(s).

    Several local sources are read in the order given, as one table. For local files the
    split name is ignored but its slice is applied, so `train[:100]` of a local file means
    its first 100 rows (of all the files together); split_source refuses other names.
    """
    import datasets

    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise DataError("no dataset given")
    match = _parse_split(split)
    if _is_local(sources):
        rows = datasets.concatenate_datasets(_common_columns([_load_local(s) for s in sources]))
        return rows.select(_slice_range(match["slice"], len(rows))) if match["slice"] else rows
    source = sources[0]
    try:
        return datasets.load_dataset(source, config_name, split=split)
    except Exception as exc:
        raise DataError(
            f"cannot load dataset {source!r} ({config_name}) split {split!r}: "
            f"{first_line(exc)} "
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


def merge_rows(summaries: list[str], count: int, seed: int = 0, template: Optional[str] = None) -> list[dict]:
    """Merge-shaped training rows, built from reference summaries alone (no new data, no model).

    Each row takes the summaries of 2-4 consecutive articles as the parts of one document and
    asks for their first 1 or 2 sentences each, in order, in about that many words: the
    merge learns to keep every part, in order, at the length it is told. `template`: the
    profile's merge prompt (mapreduce.merge_template), so training asks what the reduce asks
    (None: core.prompt.MERGE_TEMPLATE).
    """
    import random

    from core.prompt import MERGE_TEMPLATE, merge_input, merge_template
    from core.text import highlight_sentences

    rng = random.Random(seed)
    parts = [highlight_sentences(s) for s in summaries]
    parts = [p for p in parts if p]
    rows = []
    for _ in range(count if len(parts) >= 4 else 0):
        k, keep = rng.randint(2, 4), rng.randint(1, 2)
        start = rng.randrange(len(parts) - k + 1)
        group = parts[start:start + k]
        target = " ".join(s for p in group for s in p[:keep])
        words = max(10, round(len(target.split()), -1))
        rows.append({"article": merge_input(" ".join(p) for p in group), "summary": target,
                     "prompt_template": merge_template(words, template or MERGE_TEMPLATE)})
    return rows
