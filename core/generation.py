"""Batched generation from prompt token ids.

Prompts are sorted by length so each batch holds prompts of similar length (little
padding), left-padded so generation continues right after each prompt, and outputs are put
back in the caller's order. Only generated tokens are decoded: no splitting text on the
template, and a character the token limit cut in half is dropped (core.decoding).

Repetition control looks at the generated tokens only. transformers' own
`repetition_penalty` and `no_repeat_ngram_size` scan the whole `input_ids` of a decoder-only
model, prompt included: they punish copying the article's words and forbid every 3-gram of
the article, which is what a news summary is made of.

Only these settings apply: `generate` fills every setting a call leaves unset from the
model's own generation_config (Qwen2.5-Instruct ships do_sample, temperature 0.7, top_p,
top_k 20 and repetition_penalty 1.05, a whole-input penalty), so each call passes a
complete transformers GenerationConfig (`hf_generation_config`).

`generate_isolated` is the same batching loop for a run that must not stop at one bad
text (evaluation): a failing batch is retried one prompt at a time, and a prompt that
fails alone becomes an error for that prompt only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Callable, Optional, Sequence

import torch

from core.config import GenerationConfig
from core.decoding import decode_generated
from core.errors import typed_line
from core.signals import raise_if_interrupted

log = logging.getLogger(__name__)

Outcome = tuple[Optional[str], Optional[str]]  # (summary, None) or (None, one-line error)

RETRY_MIN_NEW_TOKENS = 8


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


class GeneratedRepetitionProcessor:
    """Repetition penalty and no-repeat n-grams over the tokens generated so far.

    `prompt_length` is the width of the left-padded prompt block: every row's generated
    tokens start there (beams included), so the prompt is never looked at.
    """

    def __init__(self, prompt_length: int, penalty: float = 1.0, no_repeat_ngram_size: int = 0):
        if penalty <= 0:
            raise ValueError("repetition_penalty must be positive")
        self.prompt_length = prompt_length
        self.penalty = penalty
        self.ngram = no_repeat_ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        if self.penalty != 1.0:
            seen = torch.gather(scores, 1, generated)
            seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
            scores = scores.scatter(1, generated, seen)
        n = self.ngram
        if n > 0 and generated.shape[1] >= n:
            for row, tokens in enumerate(generated.tolist()):
                banned = banned_next_tokens(tokens, n)
                if banned:
                    scores[row, banned] = -float("inf")
        return scores


def banned_next_tokens(tokens: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `tokens`."""
    if n <= 0 or len(tokens) < n:
        return []
    if n == 1:
        return sorted(set(tokens))
    prefix = tuple(tokens[len(tokens) - n + 1 :])
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n - 1]) == prefix]


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and every EOS of the model's generation_config (Qwen Instruct: two)."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for token in source if isinstance(source, (list, tuple)) else [source]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: Sequence[Sequence[int]], gen: GenerationConfig) -> list[str]:
    """One left-padded batch; the decoded continuations (special tokens and a cut last character dropped)."""
    from transformers import LogitsProcessorList

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    processors = LogitsProcessorList()
    if gen.repetition_penalty != 1.0 or gen.no_repeat_ngram_size > 0:
        processors.append(GeneratedRepetitionProcessor(ids.shape[1], gen.repetition_penalty, gen.no_repeat_ngram_size))
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        generation_config=hf_generation_config(model, gen, pad_id, stop_token_ids(model, tokenizer)),
        logits_processor=processors,
    )
    new_tokens = out[:, ids.shape[1] :]
    return [decode_generated(tokenizer, row.tolist()) for row in new_tokens]


# settings transformers applies when they are set, whose "off" is None: a model's
# generation_config may still fill these in (warned once); the rest are bookkeeping
_HARMLESS_MODEL_KEYS = frozenset({"bos_token_id", "decoder_start_token_id", "transformers_version", "_from_model_config",
                                  "max_length", "cache_implementation", "cache_config", "max_cache_len"})
_WARNED: set[str] = set()


def hf_generation_config(model, gen: GenerationConfig, pad_id: int, eos_ids: list[int]):
    """transformers' GenerationConfig for one call: every setting explicit, greedy or beam only.

    transformers' own defaults (`_get_default_generation_params`: top_k 50, temperature 1 ...)
    are set explicitly too, so none is left for the model's generation_config to fill.
    Repetition control is the GeneratedRepetitionProcessor's (generated tokens only), so
    transformers' whole-input repetition_penalty and no_repeat_ngram_size stay off.
    """
    from transformers import GenerationConfig as HFGenerationConfig

    defaults = getattr(HFGenerationConfig, "_get_default_generation_params", dict)()
    settings = {k: v for k, v in defaults.items() if v is not None and k not in ("max_length", "min_length")}
    settings.update(
        do_sample=False, temperature=1.0, top_k=50, top_p=1.0, typical_p=1.0,
        num_beams=gen.num_beams, length_penalty=gen.length_penalty if gen.num_beams > 1 else 1.0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_repetition_penalty=1.0,
        encoder_no_repeat_ngram_size=0, guidance_scale=1.0, renormalize_logits=False,
        max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens or None,
        pad_token_id=pad_id, eos_token_id=list(eos_ids), use_cache=True,
    )
    config = HFGenerationConfig(**settings)
    model_config = getattr(model, "generation_config", None)
    left = {k: v for k, v in (model_config.to_dict() if model_config is not None else {}).items()
            if v and getattr(config, k, None) is None and k not in _HARMLESS_MODEL_KEYS}  # falsy: off
    for key in sorted(set(left) - _WARNED):
        _WARNED.add(key)
        log.warning("the model's generation_config sets %s=%r, which transformers still applies", key, left[key])
    return config


def generate_summaries(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    gen: GenerationConfig,
    batch_size: Optional[int] = None,
    sort_by_length: bool = True,
    on_batch_done: Optional[Callable[[list[int], list[str]], None]] = None,
    retry_empty: bool = False,
) -> list[str]:
    """Summaries for every prompt, in the order given.

    `on_batch_done(indices, texts)` is called after each batch (progress bars, resumable
    per-example files). `retry_empty`: a prompt the model answered with nothing (EOS at
    once) is generated again with at least RETRY_MIN_NEW_TOKENS tokens, so map-reduce
    does not lose that part of a document.
    """
    batch_size = batch_size or gen.generation_batch_size
    results: list[Optional[str]] = [None] * len(prompts)
    for batch in _batches(prompts, batch_size, sort_by_length):
        texts = generate_batch(model, tokenizer, [prompts[i] for i in batch], gen)
        for i, text in zip(batch, texts):
            results[i] = text
        if on_batch_done is not None:
            on_batch_done(batch, texts)
        raise_if_interrupted()
    results = [r if r is not None else "" for r in results]
    empty = [i for i, r in enumerate(results) if not r.strip()]
    if retry_empty and empty:
        forced = dataclasses.replace(gen, min_new_tokens=min(gen.max_new_tokens, max(gen.min_new_tokens, RETRY_MIN_NEW_TOKENS)))
        again = generate_summaries(model, tokenizer, [prompts[i] for i in empty], forced, batch_size, sort_by_length)
        for i, text in zip(empty, again):
            results[i] = text
    return results


def _batches(prompts: Sequence[Sequence[int]], batch_size: int, sort_by_length: bool = True) -> list[list[int]]:
    if sort_by_length:
        return length_sorted_batches([len(p) for p in prompts], batch_size)
    return [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]


def generate_isolated(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    gen: GenerationConfig,
    on_batch_done: Optional[Callable[[list[int], list[Outcome]], None]] = None,
) -> list[Outcome]:
    """An outcome per prompt, in the order given: (summary, None), or (None, error) for a prompt that failed.

    Length-sorted batches as in generate_summaries; a batch that raises (e.g. out of memory
    on long prompts) is retried one prompt at a time, so one bad prompt cannot fail its
    neighbours or the run. `on_batch_done(indices, outcomes)` is called after each batch.
    """
    results: list[Optional[Outcome]] = [None] * len(prompts)
    for batch in _batches(prompts, gen.generation_batch_size):
        outcomes = _generate_or_split(model, tokenizer, [prompts[i] for i in batch], gen)
        for i, outcome in zip(batch, outcomes):
            results[i] = outcome
        if on_batch_done is not None:
            on_batch_done(batch, outcomes)
        raise_if_interrupted()
    return results


def _generate_or_split(model, tokenizer, prompts, gen: GenerationConfig) -> list[Outcome]:
    """(text, None) per prompt; a failing batch is retried one prompt at a time."""
    try:
        return [(t, None) for t in generate_batch(model, tokenizer, prompts, gen)]
    except Exception as exc:  # e.g. out of memory on a long batch: keep going, record it
        if len(prompts) == 1:
            return [(None, f"generation failed: {typed_line(exc)}")]
        log.warning("a batch of %d failed (%s); retrying its prompts one by one", len(prompts), type(exc).__name__)
        return [_generate_or_split(model, tokenizer, [p], gen)[0] for p in prompts]


def with_max_new_tokens(gen: GenerationConfig, max_new_tokens: Optional[int]) -> GenerationConfig:
    """The generation settings with another cap (None: unchanged); min_new_tokens stays below it.

    no_repeat_ngram_size stops the loops of short, news-length calls; over a longer output
    (a merge of several parts) it mangles every name that must recur ("Magnan" -> "MagnAN"),
    so a call longer than max_new_tokens goes without it (the reduce drops repeated sentences).
    """
    if max_new_tokens is None or max_new_tokens == gen.max_new_tokens:
        return gen
    no_repeat = gen.no_repeat_ngram_size if max_new_tokens <= gen.max_new_tokens else 0
    return dataclasses.replace(gen, max_new_tokens=max_new_tokens, min_new_tokens=min(gen.min_new_tokens, max_new_tokens),
                               no_repeat_ngram_size=no_repeat)


def summarize_texts(model, tokenizer, texts: Sequence[str], template: str, max_prompt_tokens: int,
                    gen: GenerationConfig, adapter: bool = True) -> list[str]:
    """Texts -> summaries with one template: what a map-reduce worker does for one call.

    Prompts are built by core.prompt (the training template and truncation); an empty
    answer is retried with a minimum length rather than losing that part of a document.
    `adapter` False: an unmerged peft adapter is switched off for this call (core.models.adapter_used).
    """
    from core.prompt import build_prompt_ids

    prompts = [build_prompt_ids(tokenizer, t, max_prompt_tokens, template) for t in texts]
    off = not adapter and hasattr(model, "disable_adapter")
    with model.disable_adapter() if off else contextlib.nullcontext():
        return generate_summaries(model, tokenizer, prompts, gen, retry_empty=True)
