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


# --- repetition control over generated tokens only ---------------------------------------


def test_banned_next_tokens_completes_only_seen_ngrams():
    from core.generation import banned_next_tokens

    assert banned_next_tokens([1, 2, 3, 1, 2], 3) == [3]  # "1 2" was followed by 3
    assert banned_next_tokens([1, 2, 3, 4], 3) == []  # "3 4" never seen before
    assert banned_next_tokens([5, 6], 3) == []  # too short for any 3-gram
    assert sorted(banned_next_tokens([7, 7, 8], 1)) == [7, 8]


def test_processor_ignores_the_prompt_and_blocks_generated_repeats():
    from core.generation import GeneratedRepetitionProcessor

    prompt = [1, 2, 3, 9, 9]  # the prompt holds the 3-gram "1 2 3"
    scores = torch.zeros(1, 10)
    proc = GeneratedRepetitionProcessor(len(prompt), penalty=1.0, no_repeat_ngram_size=3)
    # generated so far "1 2": copying "3" from the article stays allowed
    out = proc(torch.tensor([prompt + [1, 2]]), scores.clone())
    assert torch.isfinite(out).all()
    # generated "1 2 3 1 2": "3" would repeat a generated 3-gram
    out = proc(torch.tensor([prompt + [1, 2, 3, 1, 2]]), scores.clone())
    assert out[0, 3] == -float("inf") and torch.isfinite(out[0, [0, 1, 2, 4]]).all()


def test_repetition_penalty_only_touches_generated_tokens():
    from core.generation import GeneratedRepetitionProcessor

    prompt = [4, 5]
    scores = torch.tensor([[1.0, 2.0, -2.0, 3.0, 4.0, 5.0]])
    proc = GeneratedRepetitionProcessor(len(prompt), penalty=2.0)
    out = proc(torch.tensor([prompt + [1, 2]]), scores.clone())
    assert out.tolist() == [[1.0, 1.0, -4.0, 3.0, 4.0, 5.0]]  # prompt tokens 4 and 5 untouched
    assert proc(torch.tensor([prompt]), scores.clone()).tolist() == scores.tolist()  # nothing generated yet


def _spy_generate(model):
    """Record generate's keyword arguments and the ids it returns."""
    seen = {}
    real = model.generate

    def spy(**kwargs):
        seen["kwargs"] = kwargs
        seen["out"] = real(**kwargs)
        return seen["out"]

    model.generate = spy
    return seen


def _has_repeated_3gram(ids) -> bool:
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    return len(grams) != len(set(grams))


def test_generated_tokens_never_repeat_a_3gram(tiny_model_dir, qwen_tokenizer):
    from transformers import AutoModelForCausalLM

    # the default-init tiny model emits one token over and over: a loop to stop
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    prompt = build_prompt_ids(qwen_tokenizer, "The council met on Monday.", 60)
    seen = _spy_generate(model)
    generate_batch(model, qwen_tokenizer, [prompt], GenerationConfig(max_new_tokens=16))
    plain = seen["out"][0, len(prompt):].tolist()
    assert _has_repeated_3gram(plain)
    generate_batch(model, qwen_tokenizer, [prompt], GenerationConfig(max_new_tokens=16, no_repeat_ngram_size=3))
    controlled = seen["out"][0, len(prompt):].tolist()
    assert len(controlled) == 16 and not _has_repeated_3gram(controlled)


def test_whole_input_repetition_settings_are_never_passed_to_transformers(tiny):
    model, tok = tiny
    prompts = _prompts(tok, 2)
    seen = _spy_generate(model)
    try:
        generate_batch(model, tok, prompts, GenerationConfig(max_new_tokens=4, repetition_penalty=1.3, no_repeat_ngram_size=3))
    finally:
        del model.generate
    kwargs = seen["kwargs"]
    assert (kwargs["generation_config"].no_repeat_ngram_size, kwargs["generation_config"].repetition_penalty) == (0, 1.0)
    (proc,) = kwargs["logits_processor"]
    assert proc.prompt_length == max(len(p) for p in prompts)  # generated tokens start there
    assert (proc.penalty, proc.ngram) == (1.3, 3)


def test_stop_tokens_are_the_union_of_tokenizer_and_generation_config():
    from types import SimpleNamespace

    from core.generation import stop_token_ids

    tok = SimpleNamespace(eos_token_id=151645)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[151645, 151643]))
    assert stop_token_ids(model, tok) == [151645, 151643]
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=7))
    assert stop_token_ids(model, tok) == [151645, 7]
    assert stop_token_ids(SimpleNamespace(), tok) == [151645]


def test_empty_summaries_are_retried_with_a_minimum_length(monkeypatch):
    import core.generation as generation

    calls = []

    def fake_batch(model, tok, prompts, gen):
        calls.append((len(prompts), gen.min_new_tokens))
        return ["" if p[0] == 0 and gen.min_new_tokens == 0 else f"summary of {p[0]}" for p in prompts]

    monkeypatch.setattr(generation, "generate_batch", fake_batch)
    gen = GenerationConfig(max_new_tokens=20)
    prompts = [[1, 5], [0, 5, 6], [2]]
    assert generation.generate_summaries(None, None, prompts, gen, batch_size=8) == ["summary of 1", "", "summary of 2"]
    assert generation.generate_summaries(None, None, prompts, gen, batch_size=8, retry_empty=True) == [
        "summary of 1", "summary of 0", "summary of 2"]
    assert calls[-1] == (1, generation.RETRY_MIN_NEW_TOKENS)  # only the empty one, forced to write


def test_isolated_generation_retries_a_failed_batch_alone_and_keeps_going(monkeypatch):
    import core.generation as generation

    calls: list[list[list[int]]] = []

    def fake_batch(model, tokenizer, prompts, gen):
        calls.append([list(p) for p in prompts])
        if [6, 6] in [list(p) for p in prompts]:
            raise RuntimeError("CUDA out of memory\nmore detail")
        return [f"s{len(p)}" for p in prompts]

    monkeypatch.setattr(generation, "generate_batch", fake_batch)
    prompts = [[1], [6, 6], [3, 3, 3], [4, 4, 4, 4], [5] * 5]
    done: list = []
    outcomes = generation.generate_isolated(None, None, prompts, GenerationConfig(generation_batch_size=2),
                                            on_batch_done=lambda idx, out: done.append((idx, out)))
    assert outcomes == [("s1", None), (None, "generation failed: RuntimeError: CUDA out of memory"),
                        ("s3", None), ("s4", None), ("s5", None)]
    assert [idx for idx, _ in done] == [[4, 3], [2, 1], [0]]  # longest first, every batch reported once
    assert calls[2:4] == [[[3, 3, 3]], [[6, 6]]]  # the failing batch, split: each prompt alone


# --- only the project's own generation settings apply -----------------------------------


def _noisy_defaults(model, **extra):
    """Qwen2.5-Instruct's shipped generation_config: sampling and a whole-input penalty."""
    cfg = model.generation_config
    for key, value in {**dict(repetition_penalty=1.05, do_sample=True, top_k=20, top_p=0.8, temperature=0.7), **extra}.items():
        setattr(cfg, key, value)
    return model


@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 3.0, "no_repeat_ngram_size": 1, "num_beams": 2}])
def test_the_models_generation_config_never_changes_the_output(lively_model_dir, extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lively_model_dir), padding_side="left")
    clean = AutoModelForCausalLM.from_pretrained(str(lively_model_dir), dtype=torch.float32).eval()
    noisy = _noisy_defaults(AutoModelForCausalLM.from_pretrained(str(lively_model_dir), dtype=torch.float32).eval(), **extra)
    prompts = _prompts(tok, 4)
    for gen in (GenerationConfig(max_new_tokens=12),
                GenerationConfig(max_new_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=3)):
        torch.manual_seed(0)
        want = generate_summaries(clean, tok, prompts, gen, batch_size=2)
        torch.manual_seed(1)  # were it sampling, another seed would show it
        assert generate_summaries(noisy, tok, prompts, gen, batch_size=2) == want
    assert len(set(want)) > 1


def test_the_generation_config_passed_is_complete_and_greedy(tiny):
    model, tok = tiny
    _noisy_defaults(model)
    seen = _spy_generate(model)
    try:
        generate_batch(model, tok, _prompts(tok, 1), GenerationConfig(max_new_tokens=4, no_repeat_ngram_size=3))
    finally:
        del model.generate
        model.generation_config.update(repetition_penalty=None, do_sample=None, top_k=None, top_p=None, temperature=None)
    passed = seen["kwargs"]["generation_config"]
    assert (passed.do_sample, passed.repetition_penalty, passed.no_repeat_ngram_size, passed.num_beams) == (False, 1.0, 0, 1)
    assert (passed.top_k, passed.top_p, passed.temperature, passed.max_new_tokens) == (50, 1.0, 1.0, 4)


# --- a call cut at its token limit mid-character ------------------------------------------


def test_a_character_cut_at_the_token_limit_is_dropped(qwen_tokenizer):
    from core.decoding import decode_generated

    tok = qwen_tokenizer
    text = "Fireworks 🎆🎇 and a cat 🐈‍⬛"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    cuts = 0
    for end in range(1, len(ids) + 1):
        raw = tok.decode(ids[:end], skip_special_tokens=True)
        got = decode_generated(tok, ids[:end])
        assert not got.endswith("\ufffd"), (end, raw)
        if raw.endswith("\ufffd"):
            cuts += 1
            assert got == raw[:-1].strip()
        else:
            assert got == raw.strip()
    assert cuts >= 2  # the emojis really were cut mid-character
    assert decode_generated(tok, ids + [tok.eos_token_id]) == text  # special tokens still dropped


def test_a_genuine_replacement_character_is_kept(qwen_tokenizer):
    from core.decoding import decode_generated

    tok = qwen_tokenizer
    for text in ("bad byte \ufffd", "\ufffd", "two \ufffd\ufffd", "ok 🎆 \ufffd"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert decode_generated(tok, ids) == text
    kept = tok("kept \ufffd", add_special_tokens=False)["input_ids"]
    firework = tok.convert_tokens_to_ids(["ð", "Ł", "İ", "Ĩ"])  # 🎆 = F0 9F 8E 86, one byte-level token each
    assert tok.decode(kept + firework) == "kept \ufffd🎆"
    for end in (1, 2, 3):  # the genuine U+FFFD, then the first bytes of the emoji
        assert tok.decode(kept + firework[:end]) == "kept \ufffd\ufffd"
        assert decode_generated(tok, kept + firework[:end]) == "kept \ufffd"
    assert decode_generated(tok, kept + firework[1:3]) == "kept \ufffd\ufffd\ufffd"  # stray bytes: no cut, kept
