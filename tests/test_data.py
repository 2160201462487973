"""Local dataset loading (the offline path of core.data): slices, empty rows, errors."""

from __future__ import annotations

import gzip
import json
import logging
import re

import pytest

from core.config import ConfigError, load_config
from core.data import DataError, check_training_splits, drop_empty, load_rows, split_source
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
    # load_rows ignores the split name of a local file, not its slice (split_source refuses the name)
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


def local_data(tmp_path, **keys):
    """The GPU recipe's data section (hub split names) pointed at a local file, as with `--dataset train.jsonl`."""
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    return load_config(REPO / "configs" / "param.yaml", {"dataset": str(path), **keys}).data


def test_a_local_table_has_no_validation_or_test_split(tmp_path):
    d = local_data(tmp_path)  # eval_split validation[:1000], test_split test
    with pytest.raises(ConfigError, match=r"'eval_split' is 'validation\[:1000\]'.*give eval_dataset .*train\[a:b\]"):
        check_training_splits(d)
    with pytest.raises(ConfigError, match="'test_split' is 'test'.*--test-dataset FILE"):
        split_source(d, "test")
    with pytest.raises(ConfigError, match="'train_split'"):
        split_source(local_data(tmp_path, train_split="validation"), "train")
    same = local_data(tmp_path, test_dataset=str(tmp_path / "train.jsonl"))  # the same table is no other source
    with pytest.raises(ConfigError, match="'test_split'"):
        split_source(same, "test")


def test_another_source_or_train_slices_are_fine(tmp_path):
    other = write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    assert split_source(local_data(tmp_path, test_dataset=str(other)), "test") == (str(other), "test")
    d = local_data(tmp_path, eval_dataset=str(other))
    check_training_splits(d)
    assert split_source(d, "eval") == (str(other), "validation[:1000]")
    check_training_splits(local_data(tmp_path, train_split="train[:8]", eval_split="train[8:]"))
    check_training_splits(local_data(tmp_path, train_split="train[:50%]", eval_split="train[-5:]"))
    check_training_splits(local_data(tmp_path, eval_split=None, rouge_eval_examples=0))
    hub = load_config(REPO / "configs" / "param.yaml").data  # a hub dataset keeps its named splits
    assert split_source(hub, "eval") == (["cnn_dailymail"], "validation[:1000]")


@pytest.mark.parametrize("train, held, shared", [("train[:8]", "train[5:]", "5..7"), ("train", "train[-2:]", "8..9"),
                                                 ("train[:60%]", "train[50%:]", "5..5")])
def test_overlapping_train_and_eval_slices_of_one_table_are_refused(tmp_path, train, held, shared):
    with pytest.raises(ConfigError, match=f"share rows {shared} of the one local table"):
        check_training_splits(local_data(tmp_path, train_split=train, eval_split=held))


@pytest.mark.parametrize("name", ["smollm2_cpu.yaml", "qwen25_cpu.yaml"])
def test_shipped_cpu_configs_pass_the_split_checks(name):
    d = load_config(REPO / "configs" / name).data
    check_training_splits(d)
    assert split_source(d, "test")[0] == d.test_dataset


def test_merge_rows_keep_every_part_in_order_and_ask_the_profiles_merge_prompt():
    from core.data import merge_rows
    from core.prompt import MERGE_TEMPLATE

    summaries = [f"Story {i} opens .\nStory {i} goes on ." for i in range(8)]
    chat = "<|im_start|>user\nMerge into about {words} words:\n\n{article}<|im_end|>\n<|im_start|>assistant\n"
    rows = merge_rows(summaries, 20, seed=3, template=chat)
    assert len(rows) == 20
    for row in rows:
        parts = [int(p.split()[3]) for p in row["article"].split("\n\n")]  # "Part 1: Story 4 opens. ..."
        assert parts == list(range(parts[0], parts[0] + len(parts))) and 2 <= len(parts) <= 4
        told = [int(n) for n in re.findall(r"Story (\d+)", row["summary"])]
        assert sorted(set(told)) == parts and told == sorted(told)  # every part, in order, in the target
        assert row["summary"].startswith(f"Story {parts[0]} opens.")
        assert row["prompt_template"].startswith("<|im_start|>user\nMerge into about ")
        assert "{article}" in row["prompt_template"] and "{words}" not in row["prompt_template"]
    default = merge_rows(summaries, 2, seed=3)
    assert all(r["prompt_template"].startswith(MERGE_TEMPLATE.split("{words}")[0]) for r in default)
