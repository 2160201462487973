"""Sentences of partial summaries: where they end, which to keep, which the chunk backs.

The reduce's `select` mode builds a long document's summary from these sentences, and every
mode leaves out a map sentence its chunk does not back (`supported_sentences`). No model here.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from core.rouge import split_sentences, word_count
from core.text import content_words

JOINER = "\n\n"  # partial summaries are joined as paragraphs, in document order
MIN_CONTENT_WORDS = 4  # fewer, and a sentence says little ("Magnan gulped audibly.", "Yeah.")


count_words = word_count  # core.rouge's one notion of a word
_SPACE_BEFORE_STOP = re.compile(r"(?<=[\w\"'”’)]) +([.,!?;:])(?=[\s\"'”’)]|$)")  # CNN/DM highlights: "... HQ ."
_WORD = re.compile(r"[a-z0-9]+")
_SPEAKER = re.compile(r"^[A-Z][\w .'-]{0,30}:\s")  # "Project Manager: " opening a transcript line


def sentences(text: str) -> list[str]:
    """A summary's sentences (core.rouge's splitter: "The U.S. Senate" is one), in prose spacing."""
    return [prose(s) for s in split_sentences(text)]


def prose(text: str) -> str:
    """Text without the space the highlight format leaves before a stop ("HQ ." -> "HQ.")."""
    return _SPACE_BEFORE_STOP.sub(r"\1", text)


def _said_already(words: set[str], said: list[set]) -> bool:
    """Most of a sentence's longer words are in one sentence already chosen (chunks overlap)."""
    return bool(words) and any(len(words & prior) >= 0.7 * len(words) for prior in said)


def _long_words(sentence: str) -> set[str]:
    return {w for w in _WORD.findall(sentence.lower()) if len(w) > 3}


def finished(sentence: str) -> bool:
    return sentence.rstrip("\"'”’)").endswith((".", "!", "?"))


def _informative(sentence: str) -> bool:
    return len(set(content_words(_SPEAKER.sub("", sentence)))) >= MIN_CONTENT_WORDS


def _worth_keeping(found: list[str]) -> list[str]:
    """The sentences worth a place, in order (all of them if none is).

    Left out: a last sentence the token limit cut off mid-way, and fillers with fewer than
    MIN_CONTENT_WORDS content words besides a speaker label ("Project Manager: Yeah.",
    "Magnan gulped audibly."), which a summary of a transcript or a story copies from it.
    """
    kept = list(found)
    if len(kept) > 1 and not finished(kept[-1]):
        kept = kept[:-1]
    informative = [s for s in kept if _informative(s)]
    return informative or kept


def tidy_summaries(texts: Sequence[str], joiner: str = JOINER) -> str:
    """The parts' summaries, in order, as one text without what select_sentences leaves out too:
    a cut-off last sentence, fillers, and sentences said already in an earlier part (the
    chunks overlap). A part left with nothing drops out; all the texts if nothing is left."""
    said: list[set] = []
    parts = [" ".join(kept) for kept in (_unsaid(_worth_keeping(sentences(t)), said) for t in texts) if kept]
    return joiner.join(parts) if parts else joiner.join(t.strip() for t in texts)


def _unsaid(candidates: Sequence[str], said: list[set]) -> list[str]:
    """The candidates not mostly said already (in `said`, or by an earlier candidate); `said` grows."""
    kept = []
    for sentence in candidates:
        words = _long_words(sentence)
        if not _said_already(words, said):
            said.append(words)
            kept.append(sentence)
    return kept


def select_sentences(texts: Sequence[str], target_words: int, joiner: str = JOINER) -> Optional[str]:
    """Sentences of the parts' summaries that fit `target_words`, in document order; no model call.

    A news-trained summarizer puts what matters first, and rewriting many parts into one
    summary keeps mostly the first part (lead bias: measured, a model collapse of joined
    articles covered 68% of them where this choice covers more). When one lead sentence of
    every part fits, each part's first sentence, then its second, ... are taken round-robin
    (`select_leads`). When they do not, the leads that add the most content words not said
    yet are chosen (`most_informative_leads`): a stretch told twice (an article split over
    two chunks) gives one sentence, and distinct stretches each get theirs. None when not
    even one lead fits.
    """
    parts = [_worth_keeping(sentences(t)) or [t.strip()] for t in texts]
    leads = select_leads(parts, target_words)
    if leads is None:
        leads = most_informative_leads(parts, target_words)
    if not any(leads):
        return None
    return joiner.join(" ".join(chosen) for chosen in leads if chosen)


def select_leads(parts: Sequence[Sequence[str]], target_words: int) -> Optional[list[list[str]]]:
    """Per part, its sentences taken round-robin while they fit (None when not every lead fits).

    A sentence mostly said already (overlapping chunks repeat themselves) is passed over.
    """
    chosen: list[list[str]] = [[] for _ in parts]
    said: list[set] = []
    used = 0
    for rank in range(max((len(p) for p in parts), default=0)):
        for i, part in enumerate(parts):
            if rank >= len(part):
                continue
            long_words = _long_words(part[rank])
            if _said_already(long_words, said):
                continue
            words = count_words(part[rank])
            if used + words > target_words:
                if rank == 0:
                    return None
                continue
            chosen[i].append(part[rank])
            said.append(long_words)
            used += words
    return chosen


def most_informative_leads(parts: Sequence[Sequence[str]], target_words: int) -> list[list[str]]:
    """Per part, its lead sentence or nothing: greedily, the lead with the most content words not
    yet covered per word it costs, while leads fit (budgeted maximum coverage). Between equal
    gains, the lead farthest from those already chosen, so no stretch is left out for want of
    words. A lead cut off by the token limit or a filler is not a candidate: a part may go
    without a sentence here anyway."""
    leads = {i: p[0] for i, p in enumerate(parts) if p and finished(p[0]) and _informative(p[0])}
    if not leads:  # choosing, so pass over cut-off and filler leads, unless there is nothing else
        leads = {i: p[0] for i, p in enumerate(parts) if p}
    words_of = {i: set(content_words(lead)) for i, lead in leads.items()}
    cost_of = {i: count_words(lead) for i, lead in leads.items()}
    chosen: dict[int, str] = {}
    covered: set[str] = set()
    used = 0
    while True:
        best, best_key = None, (0.0, 0)
        for i in leads:
            if i in chosen or used + cost_of[i] > target_words:
                continue
            gain = len(words_of[i] - covered) / max(1, cost_of[i])
            key = (gain, min((abs(i - j) for j in chosen), default=len(parts)))
            if gain > 0 and key > best_key:
                best, best_key = i, key
        if best is None:
            break
        chosen[best] = leads[best]
        covered |= words_of[best]
        used += cost_of[best]
    return [[chosen[i]] if i in chosen else [] for i in range(len(parts))]


def support(sentence: str, source_words: set[str]) -> float:
    """Share of a sentence's content words (stemmed, speaker label aside) that its source holds."""
    words = set(content_words(_SPEAKER.sub("", sentence)))
    return len(words & source_words) / len(words) if words else 1.0


def supported_sentences(summary: str, source: str, min_support: float) -> tuple[list[str], list[str]]:
    """(kept, dropped): the summary's sentences its source backs with >= min_support of their words.

    A small news-trained model summarizing a chunk of a story or a meeting now and then writes
    a news item it learned in training ("a new startup called Echo", "killed by a German
    soldier in 1918"); such a sentence shares almost no content word with the chunk.
    """
    return _split_by_support(summary, set(content_words(source)), min_support)


def _split_by_support(summary: str, source_words: set[str], min_support: float) -> tuple[list[str], list[str]]:
    kept: list[str] = []
    dropped: list[str] = []
    for sentence in sentences(summary):
        (kept if support(sentence, source_words) >= min_support else dropped).append(sentence)
    return kept, dropped


def keep_supported_text(summary: str, source: str, min_support: float) -> tuple[str, list[str]]:
    """(text, dropped): the summary in prose spacing, paragraph by paragraph, without the sentences
    its source does not back; the summary as it is (prose spacing) if none would be left."""
    if min_support <= 0:
        return prose(summary.strip()), []
    source_words = set(content_words(source))  # once: a long document's words, for every paragraph
    paragraphs, dropped = [], []
    for paragraph in summary.split(JOINER):
        kept, left_out = _split_by_support(paragraph, source_words, min_support)
        dropped.extend(left_out)
        if kept:
            paragraphs.append(" ".join(kept))
    return (JOINER.join(paragraphs), dropped) if paragraphs else (prose(summary.strip()), [])


_PART_LABEL = re.compile(r"(?:(?<=\s)|^)\**Part \d+\**:\**\s*")  # "Part 2: " (or "**Part 2:**") echoed from the merge prompt
# "In the first part, " / "In this part of the story, ": the prompt's framing, not the document's
_PART_FRAMING = re.compile(r"(?:(?<=\s)|^)In (?:the|this) (?:(?:first|second|third|fourth|next|last|final) )?parts?"
                           r"(?: of (?:the|this) (?:story|document|text))?, ?", re.I)


def drop_repeated_sentences(text: str) -> str:
    """The text without the prompt's part labels and framing ("In the first part, ...") and
    without sentences mostly said already in it (a long merge that starts to loop)."""
    kept = [_capitalized(s) for s in _unsaid(sentences(_PART_FRAMING.sub("", _PART_LABEL.sub("", text))), [])]
    return " ".join(kept) if kept else text


def _capitalized(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]
