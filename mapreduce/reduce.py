"""Reduce partial summaries to one summary: collapse while too long, then a final reduce.

The steps follow LangGraph's map-reduce summarization recipe, as plain named levels:

    map        every chunk -> a partial summary               (the engine does this)
    collapse-k while the partial summaries, joined in document order, exceed the budget:
               pack consecutive summaries into groups that fit, summarize each group
    final      summarize the joined summaries once more -> the document's summary
               (with a length target: their lead sentences instead, see below)

With a length target (`summary_words`), the reduce stops as soon as the partial summaries,
joined in document order, fit it: a long document keeps one summary per part rather than
being squeezed into one news-length paragraph. When they do not fit but one lead sentence
of every part does, the summary is made of their sentences, chosen round-robin (every
part's first, then second sentences while they fit: `select_leads`), in order, with no
model call. Only when even the leads are too many does a collapse level run: the parts are
packed into about as many groups as the target holds lead sentences (each group two or
more parts, near-equal in size: `balanced_groups`), each group is summarized, and the
choice is made again over the fewer, longer summaries.

Two guards make it terminate on any summarizer: every collapse level must shrink the text
(in tokens), else ReduceError; and at most `max_depth` collapse levels run, else ReduceError.
A single summary longer than the budget is cut by `split` (the chunker) into pieces that
fit, in order, rather than truncated; with no `split` it is a ReduceError.

No Ray and no model here: the logic takes a token counter and, for the synchronous
`reduce_summaries`, a `summarize(list[str]) -> list[str]` callable. The engine drives the
same `ReduceState` one level at a time, with each level's summaries computed on Ray actors.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from core.errors import UserError

JOINER = "\n\n"  # partial summaries are joined as paragraphs, in document order

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

    @classmethod
    def start(cls, summaries: Sequence[str], count_tokens: CountTokens, budget: int, max_depth: int,
              split: Optional[Split] = None, joiner: str = JOINER, target_words: int = 0) -> "ReduceState":
        state = cls(count_tokens, budget, max_depth, split, joiner, target_words)
        if not summaries:
            raise ReduceError("nothing to reduce: no partial summaries")
        _check_not_empty("map", summaries)
        state._plan(list(summaries))
        return state

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
            selected = select_leads(texts, self.target_words, self.joiner)
            if selected is not None:  # a lead sentence of every part fits: no model call rewrites them
                self.summary = selected
                return
        groups_wanted = self._groups_wanted(texts)
        if total <= self.budget and groups_wanted == 1:
            self.levels.append(ReduceLevel("final", [list(range(len(texts)))], [joined], total))
            return
        depth = sum(1 for lv in self.levels if lv.name.startswith("collapse"))
        if depth >= self.max_depth:
            raise ReduceError(
                f"summaries still {total} tokens (budget {self.budget}) after {depth} collapse levels "
                "(max_reduce_depth)"
            )
        pieces, sources = self._cut_oversized(texts)
        groups = balanced_groups(pieces, self.count_tokens, self.budget, groups_wanted, self.joiner)
        inputs = [self.joiner.join(pieces[j] for j in g) for g in groups]
        group_sources = [sorted({sources[j] for j in g}) for g in groups]
        self.levels.append(ReduceLevel(f"collapse-{depth + 1}", group_sources, inputs, total))

    def _groups_wanted(self, texts: list[str]) -> int:
        """How many parts the target holds at one lead sentence each (1 without a target).

        At most half the texts: every group then holds two or more, so each summary of a
        group replaces at least two and the level shrinks (a group of one would not).
        """
        if not self.target_words or len(texts) < 4:
            return 1
        per_lead = max(1.0, sum(count_words(lead_sentence(t)) for t in texts) / len(texts))
        return max(1, min(len(texts) // 2, int(self.target_words // per_lead)))

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


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")
_WORD = re.compile(r"[a-z0-9]+")
_SPEAKER = re.compile(r"^[A-Z][\w .'-]{0,30}:\s")  # "Project Manager: " opening a transcript line


def sentences(text: str) -> list[str]:
    """A summary's sentences: highlight lines, each split after . ! or ? before a capital."""
    return [s.strip() for line in text.splitlines() for s in _SENTENCE_BREAK.split(line.strip()) if s.strip()]


def lead_sentence(text: str) -> str:
    found = sentences(text)
    return found[0] if found else text.strip()


def _said_already(words: set[str], said: list[set]) -> bool:
    """Most of a sentence's longer words are in one sentence already chosen (chunks overlap)."""
    return bool(words) and any(len(words & prior) >= 0.7 * len(words) for prior in said)


def _long_words(sentence: str) -> set[str]:
    return {w for w in _WORD.findall(sentence.lower()) if len(w) > 3}


def _worth_keeping(found: list[str]) -> list[str]:
    """The sentences worth a place, in order (all of them if none is).

    Left out: a last sentence the token limit cut off mid-way, and fillers with fewer than
    three longer words besides a speaker label ("Project Manager: Yeah.", "One, two, one,
    two."), which a summary of a meeting transcript copies from it.
    """
    kept = list(found)
    if len(kept) > 1 and not kept[-1].rstrip("\"'”’)").endswith((".", "!", "?")):
        kept = kept[:-1]
    informative = [s for s in kept if len(_long_words(_SPEAKER.sub("", s))) >= 3]
    return informative or kept


def select_leads(texts: Sequence[str], target_words: int, joiner: str = JOINER) -> Optional[str]:
    """Each part's first sentence, then its second, ... while they fit `target_words`, in order.

    A news-trained summarizer puts what matters first, and rewriting many parts into one
    summary keeps mostly the first part (lead bias). Choosing sentences round-robin keeps
    every stretch of the document in the summary, in the model's own words, with nothing
    new invented. None when even one lead sentence per part does not fit.
    """
    parts = [_worth_keeping(sentences(t)) or [t.strip()] for t in texts]
    chosen: list[list[str]] = [[] for _ in parts]
    said: list[set] = []
    used = 0
    for rank in range(max(len(p) for p in parts)):
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
    return joiner.join(" ".join(c) for c in chosen if c)


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
