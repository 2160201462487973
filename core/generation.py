"""Batched greedy generation from prompt token ids.

Prompts are sorted by length so each batch holds prompts of similar length (little
padding), left-padded so generation continues right after each prompt, and outputs are put
back in the caller's order. Only generated tokens are decoded: no splitting text on the
template.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from core.config import GenerationConfig


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (OOM shows up early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, longest - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[row, longest - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: Sequence[Sequence[int]], gen: GenerationConfig) -> list[str]:
    """One left-padded batch; returns the decoded continuations (special tokens dropped)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=gen.max_new_tokens,
        do_sample=False,
        num_beams=gen.num_beams,
        repetition_penalty=gen.repetition_penalty,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new_tokens = out[:, ids.shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def generate_summaries(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    gen: GenerationConfig,
    batch_size: Optional[int] = None,
    sort_by_length: bool = True,
    on_batch_done: Optional[Callable[[list[int], list[str]], None]] = None,
) -> list[str]:
    """Summaries for every prompt, in the order given.

    `on_batch_done(indices, texts)` is called after each batch (progress bars, resumable
    per-example files).
    """
    batch_size = batch_size or gen.generation_batch_size
    if sort_by_length:
        batches = length_sorted_batches([len(p) for p in prompts], batch_size)
    else:
        batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    results: list[Optional[str]] = [None] * len(prompts)
    for batch in batches:
        texts = generate_batch(model, tokenizer, [prompts[i] for i in batch], gen)
        for i, text in zip(batch, texts):
            results[i] = text
        if on_batch_done is not None:
            on_batch_done(batch, texts)
    return [r if r is not None else "" for r in results]
