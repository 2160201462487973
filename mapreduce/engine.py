"""The map-reduce engine: many long documents in, one summary each out, on a Ray worker pool.

Public API (the CLI and the batch job build on exactly this):

    from mapreduce.pool import init_ray, WorkerPool
    from mapreduce.engine import MapReduceEngine, DocumentResult

    init_ray(cfg)                                  # or ray.init(...) yourself
    pool = WorkerPool(cfg); pool.wait_ready()
    engine = MapReduceEngine(cfg, pool, on_progress=None)

    result = engine.summarize(text, doc_id="a")    # one document, blocking
    for result in engine.run(docs):                # docs: Iterable[(doc_id, text)], lazily read
        result.doc_id, result.summary, result.error      # error is None on success
        result.tokens, result.timings, result.tree       # tree: chunk spans + every level
        result.to_dict(tree=True)                        # JSON-ready

How a document moves: it is split into chunks (mapreduce.chunking), every chunk is
summarized ("map"), then mapreduce.reduce collapses the partial summaries level by level
until they fit one prompt and writes the final summary. A document that fits in one chunk
or whose whole prompt fits the budget is summarized in one pass (one level, "final", with
the document template). With `mapreduce.summary_words` the reduce stops once the parts'
summaries, joined in order, fit that length (mapreduce.reduce).

Scheduling: `run` keeps up to `batch.max_docs_in_flight` documents open. Every text that
needs summarizing (a chunk, or a group of summaries) goes to one queue, ordered by
document then level, so older documents finish first while newer ones fill idle workers.
Batches of up to `generation_batch_size` texts sharing a template - chunks of several
documents mixed together - go to the least busy actor, at most two calls per actor in
flight so none waits between batches. `ray.wait` returns whichever call finishes first;
each document advances to its next level on its own, and its result is yielded as soon as
it is finished, so results come out in completion order, not input order.

Failures: Ray restarts a crashed actor and retries its call (max_restarts,
max_task_retries). A batch that still fails is split and its texts retried one by one
(on another actor where there is one), so one bad text cannot fail its neighbours; a text
that fails alone fails its document: an error result (summary None, error set) is
yielded and the stream goes on. Text is never silently dropped: chunks always fit the
prompt, a reduce that cannot finish is an error, and a summary the model leaves empty
(even when retried with a minimum length) fails its document rather than dropping its part. If every actor is dead, `run` raises
WorkerError (documents still in flight get no result; a resumable caller redoes them).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import ray

from core.config import Config
from mapreduce.chunking import Chunk, Chunker, reduce_template
from mapreduce.pool import WorkerError, WorkerPool, short_error
from mapreduce.reduce import JOINER, ReduceError, ReduceLevel, ReduceState

TASKS_PER_WORKER = 2  # one call running, one queued behind it: no idle gap between batches


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


@dataclass(eq=False)
class _Doc:
    seq: int
    doc_id: str
    text: str
    started: float = field(default_factory=time.perf_counter)
    chunks: list[Chunk] = field(default_factory=list)
    chunking_s: float = 0.0
    levels: list[tuple[ReduceLevel, str]] = field(default_factory=list)  # (level, template kind)
    reduce: Optional[ReduceState] = None
    level_no: int = -1
    level_started: float = 0.0
    outputs: list[Optional[str]] = field(default_factory=list)
    remaining: int = 0
    closed: bool = False


@dataclass(eq=False)
class _Item:
    """One text to summarize: input `index` of level `level_no` of a document."""

    doc: _Doc
    level_no: int
    index: int
    text: str
    template: str
    solo: bool = False  # retry alone, after its batch failed
    avoid: set = field(default_factory=set)  # workers that failed it

    @property
    def live(self) -> bool:
        return not self.doc.closed and self.doc.level_no == self.level_no

    def priority(self) -> tuple[int, int, int]:
        return (self.doc.seq, self.level_no, self.index)


class _EmptySummary(RuntimeError):
    """The model returned an empty final summary: a failed document, not an empty success."""


def _check_not_empty(level: ReduceLevel, adapter: Optional[str]) -> None:
    if not level.outputs[0].strip():
        hint = "" if adapter else " (no adapter loaded: a base model often stops at once on the news template)"
        raise _EmptySummary("the model returned an empty summary at the final level" + hint)


@dataclass(eq=False)
class _Call:
    worker: int
    items: list[_Item]


@dataclass(eq=False)
class _RunState:
    """One `run`'s scheduling state: documents open, texts queued, calls in flight, load per worker."""

    source: Iterator[tuple[str, str]]
    load: list[int]
    exhausted: bool = False
    seq: Iterator[int] = field(default_factory=itertools.count)
    active: dict[int, _Doc] = field(default_factory=dict)
    queue: list[_Item] = field(default_factory=list)
    inflight: dict[ray.ObjectRef, _Call] = field(default_factory=dict)


class MapReduceEngine:
    """Chunk, map, collapse, reduce - for a stream of documents, on a WorkerPool."""

    def __init__(
        self,
        cfg: Config,
        pool: WorkerPool,
        tokenizer=None,
        on_progress: Optional[Callable[[Progress], None]] = None,
    ):
        if tokenizer is None:
            from core.models import load_tokenizer

            tokenizer = load_tokenizer(cfg.model, padding_side="left")
        self.cfg = cfg
        self.pool = pool
        self.chunker = Chunker.from_config(tokenizer, cfg)  # ConfigError if chunks cannot fit
        self.doc_template = cfg.data.prompt_template
        self.reduce_template = reduce_template(cfg)
        self.batch_size = cfg.generation.generation_batch_size
        self.max_docs_in_flight = max(1, cfg.batch.max_docs_in_flight)
        self.on_progress = on_progress or (lambda event: None)

    def count_tokens(self, text: str) -> int:
        """Tokens a text costs inside the reduce prompt (the unit of the reduce budget)."""
        return self.chunker.prompt_cost(text, self.reduce_template)

    # --- public ------------------------------------------------------------------------

    def summarize(self, text: str, doc_id: str = "document") -> DocumentResult:
        (result,) = self.run([(doc_id, text)])
        return result

    def run(self, docs: Iterable[tuple[str, str]]) -> Iterator[DocumentResult]:
        """Results for every (doc_id, text), in completion order; failures are error results."""
        run = _RunState(iter(docs), [0] * len(self.pool))
        try:
            while True:
                yield from self._admit(run)
                self._dispatch(run.queue, run.inflight, run.load)
                if not run.inflight:
                    if run.queue:
                        raise WorkerError("every worker has died; cannot go on")
                    if run.exhausted and not run.active:
                        return
                    continue
                timeout = self.cfg.mapreduce.call_timeout_s
                ready, _ = ray.wait(list(run.inflight), num_returns=1, timeout=timeout or None)
                if not ready:
                    raise WorkerError(f"no worker answered within {timeout:g}s (call_timeout_s): a hung worker? "
                                      "raise --call-timeout-s for a slow model")
                for ref in ready:
                    yield from self._collect(run, ref)
        finally:
            for ref in run.inflight:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass

    def _admit(self, run: _RunState) -> Iterator[DocumentResult]:
        """Open documents from the source up to max_docs_in_flight; yields those that fail to open."""
        while not run.exhausted and len(run.active) < self.max_docs_in_flight:
            try:
                doc_id, text = next(run.source)
            except StopIteration:
                run.exhausted = True
                return
            doc = _Doc(next(run.seq), str(doc_id), text)
            try:
                run.queue.extend(self._open(doc))
            except (ValueError, ReduceError) as exc:
                yield self._close(doc, error=str(exc))
                continue
            run.active[doc.seq] = doc

    def _collect(self, run: _RunState, ref: "ray.ObjectRef") -> Iterator[DocumentResult]:
        """Take in one finished call; yields the documents it finished (or failed)."""
        call = run.inflight.pop(ref)
        run.load[call.worker] -= 1
        try:
            outputs = ray.get(ref)
        except Exception as exc:  # retries exhausted (RayTaskError, RayActorError, ...)
            for doc, result in self._call_failed(call, exc, run.queue):
                run.active.pop(doc.seq, None)
                yield result
            return
        for doc in self._store(call, outputs):
            result = self._advance(doc, run.queue)
            if result is not None:
                run.active.pop(doc.seq, None)
                yield result

    def _advance(self, doc: _Doc, queue: list[_Item]) -> Optional[DocumentResult]:
        """A document's level is complete: queue its next level, or return its result if it is done."""
        try:
            queue.extend(self._next_level(doc))
        except (ReduceError, _EmptySummary) as exc:
            doc.closed = True
            return self._close(doc, error=f"reduce failed: {exc}" if isinstance(exc, ReduceError) else str(exc))
        return self._close(doc) if doc.closed else None

    # --- one document's levels ---------------------------------------------------------

    def _open(self, doc: _Doc) -> list[_Item]:
        """Chunk a new document and queue its first level."""
        if not isinstance(doc.text, str) or not doc.text.strip():
            raise ValueError("document is empty")
        check_document_size(self.chunker.count_tokens(doc.text), self.cfg)
        t0 = time.perf_counter()
        whole = self.chunker.whole(doc.text, self.doc_template, self.cfg.prompt_budget)
        doc.chunks = [whole] if whole is not None else self.chunker.split(doc.text)
        doc.chunking_s = time.perf_counter() - t0
        self.on_progress(Progress("document", doc.doc_id, total=len(doc.chunks)))
        texts = [c.text for c in doc.chunks]
        sources = [[c.index] for c in doc.chunks]
        tokens = sum(c.tokens for c in doc.chunks)
        if len(doc.chunks) == 1:  # fits one prompt: one pass over the whole document
            return self._begin(doc, ReduceLevel("final", sources, texts, tokens), "document")
        return self._begin(doc, ReduceLevel("map", sources, texts, tokens), "document")

    def _begin(self, doc: _Doc, level: ReduceLevel, kind: str) -> list[_Item]:
        doc.levels.append((level, kind))
        doc.level_no += 1
        doc.level_started = time.perf_counter()
        doc.outputs = [None] * len(level.inputs)
        doc.remaining = len(level.inputs)
        template = self.doc_template if kind == "document" else self.reduce_template
        self.on_progress(Progress("level", doc.doc_id, level.name, 0, len(level.inputs)))
        return [_Item(doc, doc.level_no, i, text, template) for i, text in enumerate(level.inputs)]

    def _next_level(self, doc: _Doc) -> list[_Item]:
        """The current level is complete: record it, then queue the next (or close the doc)."""
        level, _ = doc.levels[-1]
        level.seconds = round(time.perf_counter() - doc.level_started, 3)
        outputs = [o or "" for o in doc.outputs]
        if doc.reduce is None:
            level.outputs = outputs
            level.output_tokens = self.count_tokens(JOINER.join(outputs))
            if level.name == "final":
                _check_not_empty(level, self.cfg.model.adapter)
                doc.closed = True
                return []
            doc.reduce = ReduceState.start(
                outputs, self.count_tokens, self.cfg.mapreduce.chunk_size,
                self.cfg.mapreduce.max_reduce_depth, split=self.chunker.split_text,
                target_words=self.cfg.mapreduce.summary_words,
            )
            if doc.reduce.done:  # the map summaries, joined, already fit summary_words
                doc.closed = True
                return []
        else:
            doc.reduce.accept(outputs)
            if doc.reduce.done:
                _check_not_empty(level, self.cfg.model.adapter)
                doc.closed = True
                return []
        return self._begin(doc, doc.reduce.level, "reduce")

    def _store(self, call: _Call, outputs: list[str]) -> list[_Doc]:
        """Put a call's summaries in place; return documents whose level just completed."""
        completed = []
        for item, text in zip(call.items, outputs):
            if not item.live:
                continue
            doc = item.doc
            doc.outputs[item.index] = text
            doc.remaining -= 1
            level = doc.levels[-1][0]
            self.on_progress(Progress("item", doc.doc_id, level.name, len(level.inputs) - doc.remaining, len(level.inputs)))
            if doc.remaining == 0:
                completed.append(doc)
        return completed

    def _call_failed(self, call: _Call, exc: Exception, queue: list[_Item]) -> list[tuple[_Doc, DocumentResult]]:
        """Retry a failed batch text by text; a text that fails alone fails its document."""
        if isinstance(exc, ray.exceptions.RayActorError):
            self.pool.check_alive(call.worker)
        live = [it for it in call.items if it.live]
        if len(call.items) > 1:
            for item in live:
                item.solo = True
                item.avoid.add(call.worker)
            queue.extend(live)
            return []
        failed = []
        for item in live:
            doc = item.doc
            doc.closed = True
            queue[:] = [q for q in queue if q.doc is not doc]
            level = doc.levels[-1][0]
            error = f"{level.name} input {item.index} failed after retries: {short_error(exc)}"
            failed.append((doc, self._close(doc, error=error)))
        return failed

    def _close(self, doc: _Doc, error: Optional[str] = None) -> DocumentResult:
        doc.closed = True
        total = round(time.perf_counter() - doc.started, 3)
        levels = [lv for lv, _ in doc.levels]
        summary = None
        if error is None:
            summary = doc.reduce.summary if doc.reduce is not None else levels[-1].outputs[0]
        map_s = sum(lv.seconds or 0 for lv in levels if lv.name == "map")
        reduce_s = sum(lv.seconds or 0 for lv in levels if lv.name != "map")
        result = DocumentResult(
            doc_id=doc.doc_id,
            summary=summary,
            error=error,
            tokens={
                "document": self.chunker.count_tokens(doc.text) if isinstance(doc.text, str) else 0,
                "chunks": len(doc.chunks),
                "chunk_tokens": sum(c.tokens for c in doc.chunks),
                "summary": self.chunker.count_tokens(summary) if summary is not None else None,
                # texts the model answered with nothing (EOS at once): their content is missing
                "empty_summaries": sum(1 for lv in levels for o in lv.outputs or [] if not o.strip()),
            },
            timings={"chunking_s": round(doc.chunking_s, 3), "map_s": round(map_s, 3),
                     "reduce_s": round(reduce_s, 3), "total_s": total},
            tree={
                "chunk_size": self.chunker.chunk_size,
                "chunk_overlap": self.chunker.chunk_overlap,
                "chunks": [c.span_dict() for c in doc.chunks],
                "levels": [dict(lv.to_dict(self.count_tokens), template=kind) for lv, kind in doc.levels],
            },
        )
        self.on_progress(Progress("finished", doc.doc_id, error=error))
        return result

    # --- scheduling --------------------------------------------------------------------

    def _dispatch(self, queue: list[_Item], inflight: dict, load: list[int]) -> None:
        """Send queued texts to free workers: oldest document first, batches of one template."""
        queue[:] = [it for it in queue if it.live]
        live = [w for w in range(len(self.pool)) if self.pool.alive[w]]
        while queue and live:
            free = [w for w in live if load[w] < TASKS_PER_WORKER]
            if not free:
                return
            queue.sort(key=_Item.priority)
            head = queue[0]
            if head.solo:
                batch = [head]
            else:
                # spread a short queue over all workers rather than one big batch on one
                size = max(1, min(self.batch_size, math.ceil(len(queue) / len(live))))
                batch = [it for it in queue if not it.solo and it.template == head.template][:size]
            preferred = [w for w in free if w not in head.avoid] or free
            worker = min(preferred, key=lambda w: load[w])
            taken = set(map(id, batch))
            queue[:] = [it for it in queue if id(it) not in taken]
            ref = self.pool.submit(worker, [it.text for it in batch], head.template)
            inflight[ref] = _Call(worker, batch)
            load[worker] += 1


def check_document_size(tokens: int, cfg: Config) -> None:
    """ValueError above max_document_tokens: hours of work should be asked for, not stumbled into."""
    limit = cfg.mapreduce.max_document_tokens
    if limit and tokens > limit:
        raise ValueError(f"document has {tokens:,} tokens, above max_document_tokens ({limit:,}): "
                         "pass --max-document-tokens 0 (or a larger limit) to summarize it anyway")


@contextmanager
def open_engine(cfg: Config, on_progress: Optional[Callable[[Progress], None]] = None, say=None):
    """A ready engine on a fresh worker pool; the pool (and Ray, if started here) closed on exit.

    Everything that can be checked without Ray (model files, adapter dir, chunk budget)
    is checked first, so a bad input fails in a second rather than after Ray starts.
    """
    from core.models import check_adapter_dir, check_adapter_fits, load_tokenizer
    from mapreduce.pool import init_ray

    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    Chunker.from_config(tokenizer, cfg)
    if cfg.model.adapter:
        check_adapter_dir(cfg.model.adapter)
        check_adapter_fits(cfg.model)  # before Ray: a mismatch is one line, not worker tracebacks
    started_ray = init_ray(cfg)
    pool = None
    try:
        pool = WorkerPool(cfg)
        say(f"loading the model on {len(pool)} Ray worker(s) ...")
        if pool.waiting_note:
            say(pool.waiting_note)
        infos = pool.wait_ready(timeout=cfg.mapreduce.start_timeout_s or None)
        say("workers ready: " + ", ".join(f"{i['device']} ({i['threads']} threads)" for i in infos)
            + f" [{time.perf_counter() - started:.1f}s]")
        yield MapReduceEngine(cfg, pool, tokenizer=tokenizer, on_progress=on_progress)
    finally:
        if pool is not None:
            pool.close()
        if started_ray:
            ray.shutdown()
