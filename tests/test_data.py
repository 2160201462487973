"""Local dataset loading (the offline path of core.data): slices, empty rows, errors."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from core.data import DataError, drop_empty, load_rows
from conftest import CNNDM_TRAIN, REPO


def write_jsonl(path, rows, compress=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


ROWS = [{"id": str(i), "article": f"Article number {i}.", "highlights": f"Summary {i} ."} for i in range(10)]


def test_local_jsonl_with_slices(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert load_rows(str(path), "train")["id"] == [r["id"] for r in ROWS]
    assert load_rows(str(path), "train[:3]")["id"] == ["0", "1", "2"]
    assert load_rows(str(path), "train[7:]")["id"] == ["7", "8", "9"]
    # the split name is ignored for a local file, the slice is not
    assert load_rows(str(path), "validation[2:4]")["id"] == ["2", "3"]


def test_local_jsonl_gz_and_directory(tmp_path):
    write_jsonl(tmp_path / "a.jsonl.gz", ROWS[:4], compress=True)
    assert load_rows(str(tmp_path / "a.jsonl.gz"), "train[:2]")["id"] == ["0", "1"]
    write_jsonl(tmp_path / "b.jsonl", ROWS[4:])
    assert len(load_rows(str(tmp_path), "train")) == 10  # every data file in the dir


def test_real_train_file_held_out_slices_do_not_overlap():
    train = load_rows(str(CNNDM_TRAIN), "train[:1049]")
    held_out = load_rows(str(CNNDM_TRAIN), "train[1049:]")
    assert len(train) == 1049 and len(held_out) == 50
    assert not set(train["id"]) & set(held_out["id"])


def test_empty_or_missing_rows_are_dropped_and_counted(tmp_path, caplog):
    rows = ROWS[:3] + [
        {"id": "empty-article", "article": "   ", "highlights": "Summary ."},
        {"id": "no-summary", "article": "Some article."},
        {"id": "null-article", "article": None, "highlights": "Summary ."},
        {"id": "empty-summary", "article": "Some article.", "highlights": "\n"},
    ]
    loaded = load_rows(str(write_jsonl(tmp_path / "rows.jsonl", rows)), "train")
    with caplog.at_level(logging.WARNING, logger="core.data"):
        kept = drop_empty(loaded, "article", "highlights")
    assert kept["id"] == ["0", "1", "2"]
    assert "dropped 4 of 7 rows" in caplog.text
    # without a summary field only the article counts (inference input)
    assert len(drop_empty(loaded, "article", None)) == 5


def test_missing_path_and_missing_field(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path / "nope.jsonl"), "train")
    with pytest.raises(DataError, match="no .jsonl"):
        load_rows(str(tmp_path), "train")
    loaded = load_rows(str(write_jsonl(tmp_path / "rows.jsonl", ROWS)), "train")
    with pytest.raises(DataError, match="'summary' not in dataset"):
        drop_empty(loaded, "article", "summary")


def test_bad_split_is_a_data_error(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    with pytest.raises(DataError, match="cannot parse split"):
        load_rows(str(path), "train[:3")


def test_several_files_are_one_table_with_their_common_columns(tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"id": str(i), "article": f"a{i}", "highlights": "h"}) + "\n" for i in range(3)))
    b.write_text("".join(json.dumps({"id": f"b{i}", "article": f"b{i}", "highlights": "h", "source": "x"}) + "\n" for i in range(2)))
    rows = load_rows([str(a), str(b)], "train")
    assert rows["article"] == ["a0", "a1", "a2", "b0", "b1"] and rows.column_names == ["id", "article", "highlights"]
    assert load_rows([str(a), str(b)], "train[2:4]")["article"] == ["a2", "b0"]
    assert load_rows([str(a), str(b)], "train[-1:]")["article"] == ["b1"]
    assert load_rows([str(a), str(b)], "train[:40%]")["article"] == ["a0", "a1"]
    with pytest.raises(DataError, match="not found"):
        load_rows([str(a), str(tmp_path / "nope.jsonl")], "train")


def test_shipped_cpu_config_validates_on_matched_held_out_rows():
    from core.config import load_config

    cfg = load_config(REPO / "configs" / "smollm2_cpu.yaml")
    train = load_rows(cfg.data.dataset, cfg.data.train_split)
    held_out = load_rows(cfg.data.dataset, cfg.data.eval_split)
    assert not set(train["id"]) & set(held_out["id"])
    assert len(held_out) >= cfg.training.rouge_eval_examples
    assert all(i.startswith("gh-") for i in held_out["id"])  # from train_extra.jsonl (mostly DailyMail)
