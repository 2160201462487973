"""LEAD-3: the first three sentences of the article, the classic CNN/DM baseline.

News articles put the key facts first, so LEAD-3 is hard to beat on ROUGE; a fine-tuned
model that does not beat it has not learned much beyond copying the lead.
"""

from __future__ import annotations

from core.rouge import split_sentences


def lead3(article: str, num_sentences: int = 3) -> str:
    """The article's first `num_sentences` sentences, one per line."""
    return "\n".join(split_sentences(article)[:num_sentences])
