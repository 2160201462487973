"""The chunker, with the real Qwen 2.5 tokenizer: chunks fit, overlap, keep order, cover the text."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.config import ConfigError, load_config
from core.prompt import DEFAULT_TEMPLATE, build_prompt_ids, template_token_count
from mapreduce.chunking import Chunker, check_chunk_budget, reduce_template

from conftest import CNNDM_TEST, LONGDOCS


def _long_document(min_tokens=9500, max_tokens=10500) -> str:
    with open(LONGDOCS) as f:
        for line in f:
            row = json.loads(line)
            if min_tokens <= row["qwen_tokens"] <= max_tokens:
                return row["document"]
    raise AssertionError("no ~10k-token document in longdocs.jsonl")


@pytest.fixture(scope="module")
def long_text() -> str:
    return _long_document()


def assert_valid_chunks(tokenizer, text, chunks, cfg):
    """Every property the map step relies on."""
    budget = cfg.prompt_budget
    assert chunks, "no chunks"
    for i, c in enumerate(chunks):
        assert c.index == i
        assert text[c.start:c.end] == c.text  # the span is exact
        assert c.text == c.text.strip() and c.text
        for template in (cfg.data.prompt_template, reduce_template(cfg)):
            # the untruncated prompt fits the training budget: nothing gets cut
            assert len(build_prompt_ids(tokenizer, c.text, 10**9, template)) <= budget
        assert c.tokens <= cfg.mapreduce.chunk_size
    # order kept: spans move strictly forward
    for a, b in zip(chunks, chunks[1:]):
        assert a.start < b.start and a.end < b.end
    # coverage: whatever no chunk covers is whitespace
    covered = [False] * len(text)
    for c in chunks:
        covered[c.start:c.end] = [True] * (c.end - c.start)
    missed = "".join(ch for ch, cov in zip(text, covered) if not cov)
    assert missed.strip() == ""


def test_default_chunks_of_a_10k_token_document(qwen_tokenizer, long_text):
    cfg = load_config(None)  # chunk_size 1800, overlap 150, max_length 2048, max_new_tokens 100
    chunks = Chunker.from_config(qwen_tokenizer, cfg).split(long_text)
    assert_valid_chunks(qwen_tokenizer, long_text, chunks, cfg)
    assert 5 <= len(chunks) <= 8  # ~9.8k tokens / (1800 - 150)
    # chunks are filled, not tiny: all but the last hold most of the budget
    assert all(c.tokens > 1200 for c in chunks[:-1])


def test_overlap_holds(qwen_tokenizer, long_text):
    cfg = load_config(None, {"chunk_size": 300, "chunk_overlap": 60, "max_length": 512, "max_new_tokens": 64})
    chunker = Chunker.from_config(qwen_tokenizer, cfg)
    chunks = chunker.split(long_text)
    assert_valid_chunks(qwen_tokenizer, long_text, chunks, cfg)
    overlaps = []
    for a, b in zip(chunks, chunks[1:]):
        if "\n\n" in long_text[a.end:b.start + 1]:
            continue  # a new paragraph starts a chunk without overlap (see the next test)
        assert b.start < a.end, "consecutive chunks must share text"
        overlaps.append(chunker.count_tokens(long_text[b.start:a.end]))
    # shared text is about chunk_overlap tokens: never much more, and not nothing
    assert max(overlaps) <= 60 + 5
    assert sum(overlaps) / len(overlaps) >= 20


def test_zero_overlap_gives_disjoint_spans(qwen_tokenizer, long_text):
    cfg = load_config(None, {"chunk_size": 400, "chunk_overlap": 0, "max_length": 512, "max_new_tokens": 64})
    chunks = Chunker.from_config(qwen_tokenizer, cfg).split(long_text[:20000])
    assert_valid_chunks(qwen_tokenizer, long_text[:20000], chunks, cfg)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start >= a.end


def test_breaks_at_paragraphs_then_sentences(qwen_tokenizer):
    cfg = load_config(None, {"chunk_size": 150, "chunk_overlap": 0, "max_length": 512, "max_new_tokens": 64})
    chunker = Chunker.from_config(qwen_tokenizer, cfg)
    # paragraphs of ~110 tokens: two never fit together, so each chunk is one whole paragraph
    short = [" ".join(f"Paragraph {p} sentence {s} says something." for s in range(12)) for p in range(6)]
    text = "\n\n".join(short)
    chunks = chunker.split(text)
    assert_valid_chunks(qwen_tokenizer, text, chunks, cfg)
    assert [c.text for c in chunks] == short
    # paragraphs of ~180 tokens must be cut, and then at sentence ends, never across a paragraph
    long = [" ".join(f"Paragraph {p} sentence {s} says something." for s in range(20)) for p in range(4)]
    text = "\n\n".join(long)
    chunks = chunker.split(text)
    assert_valid_chunks(qwen_tokenizer, text, chunks, cfg)
    assert len(chunks) >= 2 * len(long)
    for c in chunks:
        assert c.text.endswith("says something."), f"chunk cut mid-sentence: ...{c.text[-30:]!r}"
        assert "\n\n" not in c.text


def test_unbreakable_and_repetitive_text(qwen_tokenizer):
    # no separators at all, and a text made of one repeated line: spans must still be exact
    cfg = load_config(None, {"chunk_size": 100, "chunk_overlap": 10, "max_length": 256, "max_new_tokens": 32})
    chunker = Chunker.from_config(qwen_tokenizer, cfg)
    for text in ("x" * 3000, "abc123" * 700, "OK.\n" * 800, "  leading and trailing space  \n" * 60):
        assert_valid_chunks(qwen_tokenizer, text, chunker.split(text), cfg)


def test_short_text_is_one_chunk(qwen_tokenizer):
    cfg = load_config(None)
    chunks = Chunker.from_config(qwen_tokenizer, cfg).split("\n  A short note.  \n")
    assert [(c.start, c.end, c.text) for c in chunks] == [(3, 16, "A short note.")]


def test_chunk_budget_is_validated(qwen_tokenizer):
    cfg = load_config(None, {"chunk_size": 1940})  # 1940 + 17 template tokens > 2048 - 100
    with pytest.raises(ConfigError) as err:
        check_chunk_budget(qwen_tokenizer, cfg)
    message = str(err.value)
    assert "\n" not in message and "chunk_size (1940)" in message and "1948" in message
    # a longer reduce template counts too
    long_reduce = "[INST] These are partial summaries of one long document, in order. Combine them into one short summary:\n\n{article}\n\nSummary: [/INST]"
    size = 1948 - template_token_count(qwen_tokenizer, long_reduce) + 1
    assert size + template_token_count(qwen_tokenizer, DEFAULT_TEMPLATE) <= 1948  # the map prompt fits
    cfg = load_config(None, {"chunk_size": size, "reduce_template": long_reduce})
    with pytest.raises(ConfigError, match="reduce_template"):
        check_chunk_budget(qwen_tokenizer, cfg)
    check_chunk_budget(qwen_tokenizer, load_config(None))  # defaults fit


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(st.sampled_from(list("ab cd.\nXY?!,;é漢") + ["word ", "Sentence. ", "\n\n", "   "]), max_size=400).map("".join),
    size=st.integers(20, 120),
    overlap_frac=st.floats(0, 0.5),
)
@example(text="aaaaaaaaaaa", size=20, overlap_frac=0.5)  # a core shorter than the overlap (found by CI)
def test_property_any_text(qwen_tokenizer, text, size, overlap_frac):
    if not text.strip():
        return
    cfg = load_config(None, {"chunk_size": size, "chunk_overlap": int(size * overlap_frac),
                             "max_length": 256, "max_new_tokens": 32})
    assert_valid_chunks(qwen_tokenizer, text, Chunker.from_config(qwen_tokenizer, cfg).split(text), cfg)


def test_a_document_whose_prompt_fits_is_one_whole_chunk(qwen_tokenizer):
    cfg = load_config(None, {"max_length": 512, "max_new_tokens": 80, "chunk_size": 200, "chunk_overlap": 20})
    chunker = Chunker.from_config(qwen_tokenizer, cfg)
    budget = cfg.prompt_budget
    words = "The council met again on Monday to discuss the budget. " * 60
    text = "  " + " ".join(words.split()[: 300]) + "\n"
    prompt = build_prompt_ids(qwen_tokenizer, text, 10**9, DEFAULT_TEMPLATE)
    assert cfg.mapreduce.chunk_size < len(prompt) <= budget  # longer than a chunk, fits one prompt
    whole = chunker.whole(text, DEFAULT_TEMPLATE, budget)
    assert whole is not None and whole.text == text.strip() and text[whole.start:whole.end] == whole.text
    assert len(chunker.split(text)) > 1  # the splitter alone would have cut it
    longer = text + words
    assert chunker.whole(longer, DEFAULT_TEMPLATE, budget) is None


def test_a_new_paragraph_opens_its_chunk_without_the_previous_tail(qwen_tokenizer):
    """Joined news articles: each article's first words open a chunk, not the last one's tail."""
    articles = []
    with open(CNNDM_TEST) as f:
        for line in f:
            articles.append(json.loads(line)["article"].replace("\n\n", " "))
            if len(articles) == 4:
                break
    text = "\n\n".join(articles)
    cfg = load_config(None, {"chunk_size": 300, "chunk_overlap": 60, "max_length": 512, "max_new_tokens": 64})
    chunks = Chunker.from_config(qwen_tokenizer, cfg).split(text)
    assert_valid_chunks(qwen_tokenizer, text, chunks, cfg)
    starts = {c.start for c in chunks}
    for article in articles[1:]:
        assert text.index(article) in starts
    # inside an article, chunks still overlap
    inside = [(a, b) for a, b in zip(chunks, chunks[1:]) if "\n\n" not in text[a.start:b.end]]
    assert inside and all(b.start < a.end for a, b in inside)
