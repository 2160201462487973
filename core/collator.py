"""Dynamic padding for causal-LM fine-tuning.

Padding is masked by position (the tail of each row past its real length), never by token
id: Qwen's pad token is a real vocabulary token and may also occur in text.
"""

from __future__ import annotations

import torch

from core.prompt import IGNORE_INDEX


class SummaryCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            if len(f["labels"]) != n:
                raise ValueError("input_ids and labels differ in length")
            input_ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        if not (labels != IGNORE_INDEX).any():
            raise ValueError("batch has no trainable (summary) tokens")
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
