"""SummaryCollator: right padding to the longest row, masks by position, never by token id."""

from __future__ import annotations

import pytest
import torch

from core.collator import SummaryCollator
from core.prompt import IGNORE_INDEX

PAD = 0


def row(ids, n_prompt):
    return {"input_ids": list(ids), "labels": [IGNORE_INDEX] * n_prompt + list(ids[n_prompt:])}


def test_pads_to_longest_and_masks_by_position():
    # the second row's real tokens contain the pad id: they must stay attended and labelled
    features = [row([5, 6, 7], 1), row([8, PAD, 9, PAD, 10], 2), row([11, 12], 1)]
    batch = SummaryCollator(PAD)(features)

    assert batch["input_ids"].shape == (3, 5)
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[5, 6, 7, PAD, PAD], [8, PAD, 9, PAD, 10], [11, 12, PAD, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    I = IGNORE_INDEX
    assert batch["labels"].tolist() == [[I, 6, 7, I, I], [I, I, 9, PAD, 10], [I, 12, I, I, I]]


def test_labels_ignore_every_padded_position():
    features = [row(list(range(1, 1 + n)), 1) for n in (2, 7, 4)]
    batch = SummaryCollator(PAD)(features)
    padded = batch["attention_mask"] == 0
    assert padded.any()
    assert (batch["labels"][padded] == IGNORE_INDEX).all()
    assert (batch["input_ids"][padded] == PAD).all()


def test_batch_without_trainable_tokens_raises():
    features = [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX] * 3}, {"input_ids": [4], "labels": [IGNORE_INDEX]}]
    with pytest.raises(ValueError, match="no trainable"):
        SummaryCollator(PAD)(features)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="differ in length"):
        SummaryCollator(PAD)([{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2]}])
