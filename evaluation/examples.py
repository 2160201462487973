"""The test examples evaluation scores: loading, selection, and what makes one unusable."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Config
from core.data import DataError, load_rows, split_source


@dataclass
class Example:
    id: str
    article: str
    reference: str


def load_examples(cfg: Config) -> list[Example]:
    """Test rows as Examples, first `num_examples` of them; empty ones are kept (and fail later)."""
    d = cfg.data
    source, split = split_source(d, "test")  # a local `dataset` is training rows: no 'test' split
    rows = load_rows(source, split, d.dataset_config)
    for name in (d.article_field, d.summary_field):
        if name not in rows.column_names:
            raise DataError(f"field '{name}' not in {source} (columns: {', '.join(rows.column_names)})")
    n = cfg.evaluation.num_examples
    if n is not None:  # positive: core.config checks it
        rows = rows.select(range(min(n, len(rows))))
    has_ids = d.id_field in rows.column_names
    examples = []
    for i, row in enumerate(rows):
        article, reference = row[d.article_field], row[d.summary_field]
        examples.append(
            Example(
                id=str(row[d.id_field]) if has_ids else str(i),
                article=article if isinstance(article, str) else "",
                reference=reference if isinstance(reference, str) else "",
            )
        )
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise DataError(f"field '{d.id_field}' of {source} has duplicate ids (resume keys on them)")
    if not examples:
        raise DataError(f"test split {d.test_split!r} of {source} has no rows")
    return examples


def check_example(ex: Example) -> None:
    """Raise ValueError for an example that cannot be summarized or scored."""
    if not ex.article.strip():
        raise ValueError("empty article")
    if not ex.reference.strip():
        raise ValueError("empty reference")
