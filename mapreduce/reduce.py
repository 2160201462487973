"""Reduce partial summaries to one summary: collapse while too long, then a final reduce.

The steps follow LangGraph's map-reduce summarization recipe, as plain named levels:

    map        every chunk -> a partial summary               (the engine does this)
    collapse-k while the partial summaries, joined in document order, exceed the budget:
               pack consecutive summaries into groups that fit, summarize each group
    final      summarize the joined summaries once more -> the document's summary

Before anything, a map summary's sentences that its chunk does not back (fewer than
`min_support` of their content words occur in the chunk: the small model writing a news item
it learned) are left out and kept aside in `unsupported`.

With a length target (`summary_words`), no model rewrites the parts: the summary is made of
their sentences, in document order (`select_sentences`). While they fit, all of them; else
one lead sentence of every part, then second sentences, round-robin, while they fit; and when
not even the leads all fit, the leads that add the most content words not said yet. Measured
on joined news articles, a model collapse of the parts kept mostly the first of each group
(lead bias) and covered fewer articles. Only a target below one lead sentence falls back to
the collapse and final levels.

Two guards make a collapse terminate on any summarizer: every collapse level must shrink the
text (in tokens), else ReduceError; and at most `max_depth` collapse levels run, else
ReduceError. A single summary longer than the budget is cut by `split` (the chunker) into
pieces that fit, in order, rather than truncated; with no `split` it is a ReduceError.

No Ray and no model here: the logic takes a token counter and, for the synchronous
`reduce_summaries`, a `summarize(list[str]) -> list[str]` callable. The engine drives the
same `ReduceState` one level at a time, with each level's summaries computed on Ray actors.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from core.errors import UserError
from core.text import content_words

JOINER = "\n\n"  # partial summaries are joined as paragraphs, in document order
MIN_CONTENT_WORDS = 4  # fewer, and a sentence says little ("Magnan gulped audibly.", "Yeah.")

CountTokens = Callable[[str], int]
Summarize = Callable[[list[str]], list[str]]
Split = Callable[[str], list[str]]


class ReduceError(UserError, RuntimeError):
    """Reduce cannot finish (no shrinking, too deep, an over-long summary, an empty input); one line."""


def count_words(text: str) -> int:
    return len(text.split())


@dataclass
class ReduceLevel:
    name: str  # "collapse-1", "collapse-2", ..., "final"
    sources: list[list[int]]  # per input: indices of the previous level's texts it holds
    inputs: list[str]  # texts sent to the summarizer, one per group
    input_tokens: int  # tokens of the previous level's texts, joined
    outputs: Optional[list[str]] = None
    output_tokens: Optional[int] = None
    seconds: Optional[float] = None  # filled by whoever times the summarizer

    def to_dict(self, count_tokens: CountTokens) -> dict:
        d = asdict(self)
        d["inputs"] = [{"sources": s, "tokens": count_tokens(t)} for s, t in zip(self.sources, self.inputs)]
        del d["sources"]
        if self.outputs is not None:
            d["outputs"] = [{"text": t, "tokens": count_tokens(t)} for t in self.outputs]
        return d


def pack_groups(texts: Sequence[str], count_tokens: CountTokens, budget: int, joiner: str = JOINER) -> list[list[int]]:
    """Consecutive runs of texts whose joined length fits the budget (greedy, order kept).

    A text that alone exceeds the budget gets a group of its own; callers split it first.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    for i in range(len(texts)):
        candidate = current + [i]
        if current and count_tokens(joiner.join(texts[j] for j in candidate)) > budget:
            groups.append(current)
            candidate = [i]
        current = candidate
    if current:
        groups.append(current)
    return groups


def balanced_groups(texts: Sequence[str], count_tokens: CountTokens, budget: int, wanted: int,
                    joiner: str = JOINER) -> list[list[int]]:
    """At least `wanted` consecutive groups of near-equal size, each fitting the budget.

    Greedy packing to a budget leaves a ragged tail (a last group of one summary, which a
    collapse cannot shrink); equal counts keep every group two or more texts long as long as
    there are at most half as many groups as texts. When no such split fits the budget,
    greedy packing (`pack_groups`) decides.
    """
    n = len(texts)
    joined = count_tokens(joiner.join(texts))
    for k in range(max(1, wanted, -(-joined // budget)), n // 2 + 1):
        bounds = [round(i * n / k) for i in range(k + 1)]
        groups = [list(range(bounds[i], bounds[i + 1])) for i in range(k)]
        if all(count_tokens(joiner.join(texts[j] for j in g)) <= budget for g in groups):
            return groups
    return pack_groups(texts, count_tokens, budget, joiner)


@dataclass
class ReduceState:
    """One document's reduce, advanced one level at a time: `pending` in, `accept(outputs)`."""

    count_tokens: CountTokens
    budget: int  # tokens a summarizer input may hold (the chunk size)
    max_depth: int  # collapse levels allowed before the final one
    split: Optional[Split] = None
    joiner: str = JOINER
    target_words: int = 0  # 0: one final summary; else stop once the joined summaries fit
    levels: list[ReduceLevel] = field(default_factory=list)
    summary: Optional[str] = None
    unsupported: list[str] = field(default_factory=list)  # map sentences left out: their chunk does not back them

    @classmethod
    def start(cls, summaries: Sequence[str], count_tokens: CountTokens, budget: int, max_depth: int,
              split: Optional[Split] = None, joiner: str = JOINER, target_words: int = 0,
              sources: Optional[Sequence[str]] = None, min_support: float = 0.0) -> "ReduceState":
        """`sources[i]` is the chunk `summaries[i]` summarizes: with `min_support`, a sentence
        sharing fewer of its content words with its chunk is left out (`unsupported`)."""
        state = cls(count_tokens, budget, max_depth, split, joiner, target_words)
        if not summaries:
            raise ReduceError("nothing to reduce: no partial summaries")
        _check_not_empty("map", summaries)
        if sources is not None and min_support > 0:
            summaries = state._keep_supported(summaries, sources, min_support)
        state._plan(list(summaries))
        return state

    def _keep_supported(self, summaries: Sequence[str], sources: Sequence[str], min_support: float) -> list[str]:
        """The summaries without the sentences their chunk does not back; a summary left with
        none drops out. If no summary keeps a sentence, all are kept as they are."""
        if len(sources) != len(summaries):
            raise ReduceError(f"got {len(sources)} sources for {len(summaries)} summaries")
        kept_texts, unsupported = [], []
        for summary, source in zip(summaries, sources):
            kept, dropped = supported_sentences(summary, source, min_support)
            unsupported.extend(dropped)
            if kept:
                kept_texts.append(" ".join(kept))
        if not kept_texts:
            return list(summaries)
        self.unsupported = unsupported
        return kept_texts

    @property
    def done(self) -> bool:
        return self.summary is not None

    @property
    def level(self) -> ReduceLevel:
        return self.levels[-1]

    @property
    def pending(self) -> list[str]:
        """Texts to summarize for the current level (empty once done)."""
        return [] if self.done else list(self.level.inputs)

    def accept(self, outputs: Sequence[str]) -> None:
        """Record the current level's summaries (one per input, in order); plan the next level."""
        level = self.level
        if self.done:
            raise ReduceError("reduce is already finished")
        if len(outputs) != len(level.inputs):
            raise ReduceError(f"{level.name}: got {len(outputs)} summaries for {len(level.inputs)} inputs")
        _check_not_empty(level.name, outputs)
        level.outputs = list(outputs)
        level.output_tokens = self.count_tokens(self.joiner.join(outputs))
        if level.name == "final":
            self.summary = level.outputs[0]
            return
        if level.output_tokens >= level.input_tokens:
            raise ReduceError(
                f"{level.name} did not shrink the text ({level.input_tokens} -> {level.output_tokens} tokens): "
                "the summaries are as long as what they summarize"
            )
        self._plan(level.outputs)

    def _plan(self, texts: list[str]) -> None:
        joined = self.joiner.join(texts)
        total = self.count_tokens(joined)
        if self.target_words and count_words(joined) <= self.target_words:
            self.summary = joined  # the parts' summaries, in order, already fit the length asked
            return
        if self.target_words:
            selected = select_sentences(texts, self.target_words, self.joiner)
            if selected is not None:  # lead sentences chosen from the parts: no model call rewrites them
                self.summary = selected
                return
        if total <= self.budget:
            self.levels.append(ReduceLevel("final", [list(range(len(texts)))], [joined], total))
            return
        depth = sum(1 for lv in self.levels if lv.name.startswith("collapse"))
        if depth >= self.max_depth:
            raise ReduceError(
                f"summaries still {total} tokens (budget {self.budget}) after {depth} collapse levels "
                "(max_reduce_depth)"
            )
        pieces, sources = self._cut_oversized(texts)
        groups = balanced_groups(pieces, self.count_tokens, self.budget, 1, self.joiner)
        inputs = [self.joiner.join(pieces[j] for j in g) for g in groups]
        group_sources = [sorted({sources[j] for j in g}) for g in groups]
        self.levels.append(ReduceLevel(f"collapse-{depth + 1}", group_sources, inputs, total))

    def _cut_oversized(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """Texts with any over-budget one split into pieces; pieces[i] came from texts[sources[i]]."""
        pieces: list[str] = []
        sources: list[int] = []
        for i, text in enumerate(texts):
            tokens = self.count_tokens(text)
            if tokens <= self.budget:
                parts = [text]
            elif self.split is None:
                raise ReduceError(f"a partial summary of {tokens} tokens exceeds the reduce budget ({self.budget})")
            else:
                parts = self.split(text)
                too_long = [self.count_tokens(p) for p in parts if self.count_tokens(p) > self.budget]
                if not parts or too_long:
                    raise ReduceError(f"cannot split a partial summary of {tokens} tokens to fit {self.budget}")
            pieces.extend(parts)
            sources.extend([i] * len(parts))
        return pieces, sources


# after . ! or ? (or one closing quote or bracket after them), before a capital, digit or
# opening quote; not after a title such as "Mr." ("Mr. Magnan" is one sentence)
_SENTENCE_BREAK = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)]))(?<!\b(?:Mr|Ms|Dr|St|Jr|Sr)\.)(?<!\bMrs\.)\s+(?=[\"'“‘A-Z0-9])"
)
_WORD = re.compile(r"[a-z0-9]+")
_SPEAKER = re.compile(r"^[A-Z][\w .'-]{0,30}:\s")  # "Project Manager: " opening a transcript line


def sentences(text: str) -> list[str]:
    """A summary's sentences: highlight lines, each split after . ! or ? before a capital."""
    return [s.strip() for line in text.splitlines() for s in _SENTENCE_BREAK.split(line.strip()) if s.strip()]


def _said_already(words: set[str], said: list[set]) -> bool:
    """Most of a sentence's longer words are in one sentence already chosen (chunks overlap)."""
    return bool(words) and any(len(words & prior) >= 0.7 * len(words) for prior in said)


def _long_words(sentence: str) -> set[str]:
    return {w for w in _WORD.findall(sentence.lower()) if len(w) > 3}


def _finished(sentence: str) -> bool:
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
    if len(kept) > 1 and not _finished(kept[-1]):
        kept = kept[:-1]
    informative = [s for s in kept if _informative(s)]
    return informative or kept


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
    leads = {i: p[0] for i, p in enumerate(parts) if p and _finished(p[0]) and _informative(p[0])}
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
    source_words = set(content_words(source))
    kept: list[str] = []
    dropped: list[str] = []
    for sentence in sentences(summary):
        (kept if support(sentence, source_words) >= min_support else dropped).append(sentence)
    return kept, dropped


def _check_not_empty(level_name: str, summaries: Sequence[str]) -> None:
    """An empty summary would silently drop its part of the document: fail instead."""
    empty = [i for i, s in enumerate(summaries) if not s.strip()]
    if empty:
        raise ReduceError(
            f"{level_name}: the model returned an empty summary for input {empty[0]}"
            + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "")
            + "; that part of the document would be lost"
        )


def reduce_summaries(
    summaries: Sequence[str],
    summarize: Summarize,
    count_tokens: CountTokens,
    budget: int,
    max_depth: int,
    split: Optional[Split] = None,
    target_words: int = 0,
) -> ReduceState:
    """Synchronous reduce: collapse until the text fits, then one final summary (`.summary`)."""
    state = ReduceState.start(summaries, count_tokens, budget, max_depth, split, target_words=target_words)
    while not state.done:
        state.accept(summarize(state.pending))
    return state
