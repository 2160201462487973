"""One document's life, level by level: chunk it, then map, collapse-k, final - no Ray, no model.

    steps = DocumentSteps(cfg, chunker)                 # built once: chunker, templates, reduce settings
    job = steps.start("a", text)                        # one document
    inputs = job.open()                                 # chunked; the first level's texts (ValueError, ReduceError)
    while not job.closed:
        for item in inputs:                             # item.text, item.template: summarize them anywhere
            job.put(item.index, summary)                # True once the level is complete
        inputs = job.advance()                          # the next level's texts; [] once closed
    job.result                                          # a DocumentResult: summary or error, tokens, timings, tree

A document whose whole prompt fits the budget (or that is one chunk) is summarized in one
pass: a single "final" level with the document template. A longer one is split by the
chunker, every chunk is summarized ("map", document template), then mapreduce.reduce
collapses the summaries ("collapse-k", reduce template) until they fit one prompt and writes
the "final" summary - or, with `mapreduce.summary_words`, stops once the parts' summaries,
joined in order, fit that length.

`DocumentJob` is the only code that moves a document through its levels. Two executors drive
it: the engine (mapreduce.engine) many jobs at once, their level inputs sent to Ray actors;
`DocumentSteps.run` one job in this process with any `summarize(texts, template,
max_new_tokens)` callable (mapreduce.api.Summarizer's model, or a test fake). Both return
the same DocumentResult. Nothing here knows who does the summarizing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from core.config import Config
from core.prompt import MERGE_TEMPLATE, merge_template
from core.text import blank_editorial_notes
from mapreduce.chunking import reduce_template
from mapreduce.reduce import JOINER, ReduceError, ReduceLevel, ReduceState
from mapreduce.sentences import keep_supported_text

ONE_PASS_SLACK_TOKENS = 16  # a one-pass summary may run this far past its document's length, no further

if TYPE_CHECKING:
    from mapreduce.chunking import Chunk, Chunker


def level_max_new_tokens(cfg: Config, level_name: str) -> Optional[int]:
    """The cap for a level's generations: map_max_new_tokens (at most max_new_tokens) for map calls, else None."""
    return cfg.map_token_cap if level_name == "map" else None


@dataclass
class DocumentResult:
    doc_id: str
    summary: Optional[str]  # None when the document failed
    error: Optional[str] = None  # one line, None on success
    tokens: dict = field(default_factory=dict)  # document, chunks, summary
    timings: dict = field(default_factory=dict)  # seconds: chunking, map, reduce, total
    tree: Optional[dict] = None  # chunk spans and every level's inputs/outputs

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, tree: bool = True) -> dict:
        d = {"doc_id": self.doc_id, "summary": self.summary, "error": self.error,
             "tokens": self.tokens, "timings": self.timings}
        if tree:
            d["tree"] = self.tree
        return d


@dataclass
class Progress:
    """What `on_progress` receives.

    kind: "document" (chunked; total = chunks), "level" (a level started; total = its
    inputs), "item" (one text summarized; done/total within the level), "finished".
    """

    kind: str
    doc_id: str
    level: str = ""
    done: int = 0
    total: int = 0
    error: Optional[str] = None


class _EmptySummary(RuntimeError):
    """The model returned an empty final summary: a failed document, not an empty success."""


def _check_not_empty(level: ReduceLevel, adapter: Optional[str]) -> None:
    if not level.outputs[0].strip():
        hint = "" if adapter else " (no adapter loaded: a base model often stops at once on the news template)"
        raise _EmptySummary("the model returned an empty summary at the final level" + hint)


def check_document_size(tokens: int, cfg: Config) -> None:
    """ValueError above max_document_tokens: hours of work should be asked for, not stumbled into."""
    limit = cfg.mapreduce.max_document_tokens
    if limit and tokens > limit:
        raise ValueError(f"document has {tokens:,} tokens, above max_document_tokens ({limit:,}): "
                         "pass --max-document-tokens 0 (or a larger limit) to summarize it anyway")


def document_text(value) -> str:
    """A document as text: str as it is, bytes decoded as UTF-8 (as the CLI reads files).

    TypeError names any other type (a number is not an empty document); ValueError for bytes
    that are not UTF-8.
    """
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"document is not UTF-8 text (invalid byte at offset {exc.start})") from None
    if not isinstance(value, str):
        raise TypeError(f"a document must be text (str, or UTF-8 bytes), got {type(value).__name__}")
    return value


def check_has_words(text: str) -> None:
    """ValueError for a text with nothing to summarize: empty, or symbols and emoji only."""
    if not text.strip():
        raise ValueError("document is empty")
    if not re.search(r"[^\W_]", text):  # no letter or digit in any script
        raise ValueError("document has no words to summarize (only symbols, emoji or punctuation)")


# (texts, template, max_new_tokens or None for the config's) -> one summary per text
Summarize = Callable[[list[str], str, Optional[int]], list[str]]


class DocumentSteps:
    """How every document is summarized: one chunker, the two templates, the reduce settings.

    `chunker` is a mapreduce.chunking.Chunker, or anything with its count_tokens,
    prompt_cost, whole, split, split_text, chunk_size and chunk_overlap (tests fake it).
    """

    def __init__(self, cfg: Config, chunker: "Chunker", on_progress: Optional[Callable[[Progress], None]] = None):
        self.cfg = cfg
        self.chunker = chunker
        self.doc_template = cfg.data.prompt_template
        self.reduce_template = reduce_template(cfg)
        self.merge_template = cfg.mapreduce.merge_template or MERGE_TEMPLATE
        self.on_progress = on_progress or (lambda event: None)

    def count_tokens(self, text: str) -> int:
        """Tokens a text costs inside the reduce prompt (the unit of the reduce budget)."""
        return self.chunker.prompt_cost(text, self.reduce_template)

    def max_new_tokens(self, level_name: str) -> Optional[int]:
        return level_max_new_tokens(self.cfg, level_name)

    def chunk(self, text: str) -> list["Chunk"]:
        """The whole text as one chunk if its prompt fits the budget, else the chunker's split."""
        text = blank_editorial_notes(text)  # offsets kept: spans still index the document given
        whole = self.chunker.whole(text, self.doc_template, self.cfg.prompt_budget)
        return [whole] if whole is not None else self.chunker.split(text)

    def first_level(self, chunks: Sequence["Chunk"]) -> ReduceLevel:
        """"final" for a single chunk (one pass over the document), else "map": one input per chunk."""
        name = "final" if len(chunks) == 1 else "map"
        return ReduceLevel(name, [[c.index] for c in chunks], [c.text for c in chunks], sum(c.tokens for c in chunks))

    def start_reduce(self, summaries: Sequence[str], chunks: Sequence["Chunk"]) -> ReduceState:
        """The reduce of the map level's summaries of `chunks` (ReduceError if there is nothing to reduce)."""
        mr = self.cfg.mapreduce
        return ReduceState.start(summaries, self.count_tokens, mr.chunk_size, mr.max_reduce_depth,
                                 split=self.chunker.split_text, target_words=mr.summary_words,
                                 sources=[c.text for c in chunks], min_support=mr.min_support,
                                 mode=mr.reduce, fanin=mr.merge_fanin, final_parts=mr.merge_final_parts,
                                 tokens_per_word=mr.merge_tokens_per_word)

    def start(self, doc_id: str, text: str, seq: int = 0, tokens: Optional[int] = None) -> "DocumentJob":
        return DocumentJob(self, seq, str(doc_id), text, document_tokens=tokens)  # tokens: counted already

    def run(self, doc_id: str, text: str, summarize: Summarize) -> DocumentResult:
        """The in-process executor: one document start to finish, each level in one
        `summarize(texts, template, max_new_tokens)` call (a level's inputs share both)."""
        job = self.start(doc_id, text)
        try:
            inputs = job.open()
        except (TypeError, ValueError, ReduceError) as exc:
            return job.close(error=str(exc))
        while not job.closed:
            outputs = summarize([item.text for item in inputs], inputs[0].template, inputs[0].max_new_tokens)
            for item, output in zip(inputs, outputs):
                job.put(item.index, output)
            inputs = job.advance()
        return job.result


@dataclass(eq=False)
class LevelInput:
    """One text to summarize: input `index` of level `level_no` of a document."""

    job: "DocumentJob"
    level_no: int
    index: int
    text: str
    template: str
    max_new_tokens: Optional[int] = None  # None: the generation config's

    @property
    def live(self) -> bool:
        """Still wanted: its document is open and still at this level."""
        return not self.job.closed and self.job.level_no == self.level_no

    def priority(self) -> tuple[int, int, int]:
        return (self.job.seq, self.level_no, self.index)


@dataclass(eq=False)
class DocumentJob:
    """One document's chunks, levels, timings and result; advanced one level at a time."""

    steps: DocumentSteps
    seq: int  # admission order: older documents are served first
    doc_id: str
    text: str
    started: float = field(default_factory=time.perf_counter)
    chunks: list = field(default_factory=list)
    chunking_s: float = 0.0
    document_tokens: Optional[int] = None  # counted once, in open(), for the size check and the result
    levels: list[tuple[ReduceLevel, str]] = field(default_factory=list)  # (level, template kind)
    reduce: Optional[ReduceState] = None
    unsupported: list[str] = field(default_factory=list)  # sentences of the summary the document does not back
    level_no: int = -1
    level_started: float = 0.0
    outputs: list[Optional[str]] = field(default_factory=list)
    remaining: int = 0
    closed: bool = False
    result: Optional[DocumentResult] = None

    @property
    def level(self) -> ReduceLevel:
        return self.levels[-1][0]

    def open(self) -> list[LevelInput]:
        """Chunk the document and return its first level's inputs (TypeError, ValueError, ReduceError)."""
        steps = self.steps
        self.text = document_text(self.text)
        check_has_words(self.text)
        if self.document_tokens is None:
            self.document_tokens = steps.chunker.count_tokens(self.text)
        check_document_size(self.document_tokens, steps.cfg)
        t0 = time.perf_counter()
        self.chunks = steps.chunk(self.text)
        self.chunking_s = time.perf_counter() - t0
        steps.on_progress(Progress("document", self.doc_id, total=len(self.chunks)))
        return self._begin(steps.first_level(self.chunks), "document")

    def put(self, index: int, text: str) -> bool:
        """Store the summary of input `index` of the current level; True once the level is complete."""
        self.outputs[index] = text
        self.remaining -= 1
        level = self.level
        self.steps.on_progress(Progress("item", self.doc_id, level.name, len(level.inputs) - self.remaining,
                                        len(level.inputs)))
        return self.remaining == 0

    def advance(self) -> list[LevelInput]:
        """The current level is complete: the next level's inputs, or [] with the job closed."""
        try:
            inputs = self._next_level()
        except (ReduceError, _EmptySummary) as exc:
            self.close(error=f"reduce failed: {exc}" if isinstance(exc, ReduceError) else str(exc))
            return []
        if self.closed:
            self.close()
        return inputs

    def fail(self, index: int, reason: str) -> DocumentResult:
        """Input `index` of the current level could not be summarized: the document fails."""
        return self.close(error=f"{self.level.name} input {index} failed after retries: {reason}")

    def _begin(self, level: ReduceLevel, kind: str) -> list[LevelInput]:
        self.levels.append((level, kind))
        self.level_no += 1
        self.level_started = time.perf_counter()
        self.outputs = [None] * len(level.inputs)
        self.remaining = len(level.inputs)
        if level.merge_words is not None:
            kind, template = "merge", merge_template(level.merge_words, self.steps.merge_template)
        else:
            template = self.steps.doc_template if kind == "document" else self.steps.reduce_template
        max_new_tokens = level.max_new_tokens or self.steps.max_new_tokens(level.name)
        if kind == "document" and level.name == "final":  # one pass: no longer than the document itself
            short = self._document_tokens() + ONE_PASS_SLACK_TOKENS
            if short < (max_new_tokens or self.steps.cfg.generation.max_new_tokens):
                max_new_tokens = short
        self.steps.on_progress(Progress("level", self.doc_id, level.name, 0, len(level.inputs)))
        return [LevelInput(self, self.level_no, i, text, template, max_new_tokens) for i, text in enumerate(level.inputs)]

    def _next_level(self) -> list[LevelInput]:
        """Record the complete level, then begin the next (or mark the job closed)."""
        steps, level = self.steps, self.level
        level.seconds = round(time.perf_counter() - self.level_started, 3)
        outputs = [o or "" for o in self.outputs]
        if self.reduce is None:
            level.outputs = outputs
            level.output_tokens = steps.count_tokens(JOINER.join(outputs))
            if level.name == "final":
                _check_not_empty(level, steps.cfg.model.adapter)
                self.closed = True
                return []
            self.reduce = steps.start_reduce(outputs, self.chunks)
            if self.reduce.done:  # the map summaries, joined, already fit summary_words
                self.closed = True
                return []
        else:
            self.reduce.accept(outputs)
            if self.reduce.done:
                _check_not_empty(level, steps.cfg.model.adapter)
                self.closed = True
                return []
        return self._begin(self.reduce.level, "reduce")

    def close(self, error: Optional[str] = None) -> DocumentResult:
        """Finish the job: its result (summary, or the error), also kept as `self.result`."""
        self.closed = True
        self.result = self._result(error)
        self.steps.on_progress(Progress("finished", self.doc_id, error=error))
        return self.result

    def _document_tokens(self) -> int:
        if self.document_tokens is None:  # open() stopped before counting (an empty or non-text document)
            self.document_tokens = self.steps.chunker.count_tokens(self.text) if isinstance(self.text, str) else 0
        return self.document_tokens

    def _result(self, error: Optional[str]) -> DocumentResult:
        steps = self.steps
        chunker = steps.chunker
        total = round(time.perf_counter() - self.started, 3)
        levels = [lv for lv, _ in self.levels]
        summary = None
        if error is None:  # every output, one pass or reduced, is checked against the whole document
            summary = self.reduce.summary if self.reduce is not None else levels[-1].outputs[0]
            summary, self.unsupported = keep_supported_text(summary, self.text, steps.cfg.mapreduce.min_support)
        map_s = sum(lv.seconds or 0 for lv in levels if lv.name == "map")
        reduce_s = sum(lv.seconds or 0 for lv in levels if lv.name != "map")
        return DocumentResult(
            doc_id=self.doc_id,
            summary=summary,
            error=error,
            tokens={
                "document": self._document_tokens(),
                "chunks": len(self.chunks),
                "chunk_tokens": sum(c.tokens for c in self.chunks),
                "summary": chunker.count_tokens(summary) if summary is not None else None,
                # texts the model answered with nothing (EOS at once): their content is missing
                "empty_summaries": sum(1 for lv in levels for o in lv.outputs or [] if not o.strip()),
            },
            timings={"chunking_s": round(self.chunking_s, 3), "map_s": round(map_s, 3),
                     "reduce_s": round(reduce_s, 3), "total_s": total},
            tree={
                "chunk_size": chunker.chunk_size,
                "chunk_overlap": chunker.chunk_overlap,
                "chunks": [c.span_dict() for c in self.chunks],
                "levels": [dict(lv.to_dict(steps.count_tokens), template=kind) for lv, kind in self.levels],
                # map sentences left out because their chunk does not back them (mapreduce.min_support)
                "unsupported": (list(self.reduce.unsupported) if self.reduce is not None else []) + self.unsupported,
            },
        )
