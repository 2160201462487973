"""Reduce partial summaries to one summary: collapse while too long, then a final reduce.

The steps follow LangGraph's map-reduce summarization recipe, as plain named levels:

    map        every chunk -> a partial summary               (the engine does this)
    collapse-k while the partial summaries, joined in document order, exceed the budget:
               pack consecutive summaries into groups that fit, summarize each group
    final      summarize the joined summaries once more -> the document's summary

Before anything, a map summary's sentences that its chunk does not back (fewer than
`min_support` of their content words occur in the chunk: the small model writing a news item
it learned) are left out and kept aside in `unsupported`.

With a length target (`summary_words`) the reduce has two modes (`mapreduce.reduce`):

    select     no model rewrites the parts: the summary is their sentences, in document order
               (mapreduce.sentences.select_sentences); only a target below one lead sentence
               falls back to collapse and final
    merge-k    hierarchical merging: consecutive groups of at most `fanin` summaries, each
               merged by the model (core.prompt.MERGE_TEMPLATE, "Part 1: ... Part 2: ...") into
               its share of the level's word budget, level by level, in order, until one group
               is left: its merge ("final") is asked for `summary_words` words. With
               `final_parts` k > 1 the last level ("final") is the first with at most k groups:
               each is asked for its share of `summary_words`, the summary is their merges in
               order, and no single call can drop the document's last parts

Two guards make a collapse or merge terminate on any summarizer: every collapse level must shrink the
text (in tokens), else ReduceError; and at most `max_depth` collapse levels run, else
ReduceError. A single summary longer than the budget is cut by `split` (the chunker) into
pieces that fit, in order, rather than truncated; with no `split` it is a ReduceError.

No Ray and no model here: the logic takes a token counter and, for the synchronous
`reduce_summaries`, a `summarize(list[str]) -> list[str]` callable. The engine drives the
same `ReduceState` one level at a time, with each level's summaries computed on Ray actors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

from core.config import MapReduceConfig
from core.errors import UserError
from core.prompt import merge_input
from mapreduce.sentences import (JOINER, count_words, drop_repeated_sentences, finished, select_sentences, sentences,
                                 supported_sentences, tidy_summaries)

REDUCE_MODES = ("select", "merge")
TOKENS_PER_WORD: float = MapReduceConfig.merge_tokens_per_word  # the config's default (English: ~1.3 tokens a word)
PART_LABEL_TOKENS = 4  # what "Part 12: " costs a merge input beside the summary itself


CountTokens = Callable[[str], int]
Summarize = Callable[[list[str]], list[str]]
Split = Callable[[str], list[str]]


class ReduceError(UserError, RuntimeError):
    """Reduce cannot finish (no shrinking, too deep, an over-long summary, an empty input); one line."""


@dataclass
class ReduceLevel:
    name: str  # "collapse-1", "collapse-2", ..., "final"
    sources: list[list[int]]  # per input: indices of the previous level's texts it holds
    inputs: list[str]  # texts sent to the summarizer, one per group
    input_tokens: int  # tokens of the previous level's texts, joined
    outputs: Optional[list[str]] = None
    output_tokens: Optional[int] = None
    seconds: Optional[float] = None  # filled by whoever times the summarizer
    merge_words: Optional[int] = None  # a merge level: the words asked of each group's merge
    max_new_tokens: Optional[int] = None  # a merge level: its calls' token cap (None: the config's)

    def to_dict(self, count_tokens: CountTokens) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None or k not in ("merge_words", "max_new_tokens")}
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
    mode: str = "select"  # with target_words: "select" sentences, or "merge" them with the model
    fanin: int = 4  # merge: summaries per merge call
    final_parts: int = 1  # merge: groups the last level may have, their merges joined in order
    tokens_per_word: float = TOKENS_PER_WORD  # merge: a call's token cap per word asked of it
    levels: list[ReduceLevel] = field(default_factory=list)
    summary: Optional[str] = None
    unsupported: list[str] = field(default_factory=list)  # map sentences left out: their chunk does not back them

    @classmethod
    def start(cls, summaries: Sequence[str], count_tokens: CountTokens, budget: int, max_depth: int,
              split: Optional[Split] = None, joiner: str = JOINER, target_words: int = 0,
              sources: Optional[Sequence[str]] = None, min_support: float = 0.0,
              mode: str = "select", fanin: int = 4, final_parts: int = 1,
              tokens_per_word: float = TOKENS_PER_WORD) -> "ReduceState":
        """`sources[i]` is the chunk `summaries[i]` summarizes: with `min_support`, a sentence
        sharing fewer of its content words with its chunk is left out (`unsupported`)."""
        if mode not in REDUCE_MODES or fanin < 2 or final_parts < 1:
            raise ReduceError(f"reduce mode must be one of {', '.join(REDUCE_MODES)} with fanin >= 2, final_parts >= 1")
        state = cls(count_tokens, budget, max_depth, split, joiner, target_words, mode, fanin, final_parts,
                    tokens_per_word)
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
        if level.merge_words is not None:  # long outputs: a loop shows as sentences said twice
            outputs = [drop_repeated_sentences(o) for o in outputs]
        level.outputs = list(outputs)
        level.output_tokens = self.count_tokens(self.joiner.join(outputs))
        if level.name == "final":
            ends = level.outputs if level.merge_words is None else [drop_cut_off_end(o) for o in level.outputs]
            self.summary = self.joiner.join(ends)
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
            self.summary = tidy_summaries(texts, self.joiner)  # in order, they already fit the length asked
            return
        if self.target_words and self.mode == "merge":
            self._plan_merge(texts)
            return
        if self.target_words:
            selected = select_sentences(texts, self.target_words, self.joiner)
            if selected is not None:  # lead sentences chosen from the parts: no model call rewrites them
                self.summary = selected
                return
        if total <= self.budget:
            self.levels.append(ReduceLevel("final", [list(range(len(texts)))], [joined], total))
            return
        depth = self._check_depth(total)
        pieces, sources = self._cut_oversized(texts)
        groups = balanced_groups(pieces, self.count_tokens, self.budget, 1, self.joiner)
        inputs = [self.joiner.join(pieces[j] for j in g) for g in groups]
        group_sources = [sorted({sources[j] for j in g}) for g in groups]
        self.levels.append(ReduceLevel(f"collapse-{depth + 1}", group_sources, inputs, total))

    def _check_depth(self, total: int) -> int:
        depth = sum(1 for lv in self.levels if lv.name.startswith(("collapse", "merge")))
        if depth >= self.max_depth:
            raise ReduceError(
                f"summaries still {total} tokens (budget {self.budget}) after {depth} reduce levels (max_reduce_depth)"
            )
        return depth

    def _plan_merge(self, texts: list[str]) -> None:
        """The next merge level: groups of at most `fanin` consecutive summaries that fit the budget.

        Each group is asked for its share of the level's words: the target split over the
        groups, but at least one input's average length, so every level shrinks by about its
        group size and no group is squeezed below what one part needs (the later parts are
        what a single long merge drops). At most `final_parts` groups: the final level, the
        target split over its groups (one group: all of `target_words`).
        """
        pieces, sources = self._cut_oversized(texts)
        words = sum(count_words(p) for p in pieces)
        tokens = self.count_tokens(self.joiner.join(pieces))  # once: a tokenizer pass over the level
        room = self.budget - PART_LABEL_TOKENS * self.fanin
        wanted = -(-len(pieces) // self.fanin)
        if wanted <= self.final_parts:  # the last level: as many parts of two or more as it may have
            wanted = max(wanted, min(self.final_parts, len(pieces) // 2))
        if wanted == 1 and tokens <= room:
            groups = [list(range(len(pieces)))]
        else:
            self._check_depth(tokens)
            groups = balanced_groups(pieces, self.count_tokens, room, wanted, self.joiner)
        final = len(groups) <= self.final_parts
        per_group = self.target_words // len(groups) if final else max(self.target_words // len(groups),
                                                                         words // len(pieces))
        name = "final" if final else f"merge-{sum(1 for lv in self.levels if lv.name.startswith('merge')) + 1}"
        inputs = [merge_input(pieces[j] for j in g) for g in groups]
        group_sources = [sorted({sources[j] for j in g}) for g in groups]
        cap = merge_token_cap(per_group, self.tokens_per_word)
        self.levels.append(ReduceLevel(name, group_sources, inputs, tokens, merge_words=per_group, max_new_tokens=cap))

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


def merge_token_cap(words: int, tokens_per_word: float = TOKENS_PER_WORD) -> int:
    """New tokens for a merge asked for `words` words: room for them, not for a runaway."""
    return int(words * tokens_per_word) + 16


def drop_cut_off_end(summary: str) -> str:
    """A merge cut by its token cap mid-sentence: the whole sentences before the cut."""
    found = sentences(summary)
    if len(found) > 1 and not finished(found[-1]):
        return summary[: summary.rindex(found[-1])].rstrip()
    return summary


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
