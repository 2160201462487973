"""core.generation: length-sorted left-padded batches give unbatched greedy outputs, in order."""

from __future__ import annotations

import json

import pytest
import torch

from core.config import GenerationConfig
from core.generation import generate_batch, generate_summaries, left_pad, length_sorted_batches
from core.prompt import build_prompt_ids
from tests.conftest import CNNDM_TEST


def test_length_sorted_batches_cover_every_index_once_longest_first():
    lengths = [5, 40, 12, 40, 1, 33, 7]
    batches = length_sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)


def test_left_pad_puts_padding_before_the_prompt():
    ids, mask = left_pad([[7, 8, 9], [4]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.fixture(scope="module")
def tiny(lively_model_dir):
    """fp32 on purpose: left-padded batches then match unbatched greedy decoding exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lively_model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(lively_model_dir), dtype=torch.float32).eval()
    return model, tok


def _prompts(tok, count: int) -> list[list[int]]:
    """Real articles cut to very different prompt lengths (so sorting reorders them)."""
    rows = [json.loads(line) for _, line in zip(range(count), CNNDM_TEST.open())]
    budgets = [40, 160, 70, 25, 120, 90, 55][:count]
    return [build_prompt_ids(tok, r["article"], b) for r, b in zip(rows, budgets)]


def test_batched_sorted_generation_matches_unbatched_greedy_in_original_order(tiny):
    model, tok = tiny
    prompts = _prompts(tok, 7)
    assert len({len(p) for p in prompts}) == 7
    gen = GenerationConfig(max_new_tokens=12)
    unbatched = [generate_batch(model, tok, [p], gen)[0] for p in prompts]
    seen: list[int] = []
    batched = generate_summaries(
        model, tok, prompts, gen, batch_size=3, sort_by_length=True, on_batch_done=lambda idx, _: seen.extend(idx)
    )
    assert batched == unbatched
    assert sorted(seen) == list(range(7)) and seen != list(range(7))  # sorted batches, all covered
    assert len(set(unbatched)) > 1  # the outputs differ per prompt, so order is really checked
    unsorted = generate_summaries(model, tok, prompts, gen, batch_size=3, sort_by_length=False)
    assert unsorted == unbatched


def test_only_generated_tokens_are_decoded(tiny):
    model, tok = tiny
    prompt = _prompts(tok, 1)[0]
    gen = GenerationConfig(max_new_tokens=6)
    text = generate_batch(model, tok, [prompt], gen)[0]
    ids, mask = left_pad([prompt], tok.pad_token_id)
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
    )
    assert text == tok.decode(out[0, len(prompt):], skip_special_tokens=True).strip()
    assert tok.decode(prompt)[:30] not in text
