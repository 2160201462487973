"""The map-reduce engine: many long documents in, one summary each out, on a Ray worker pool.

Public API (the CLI, the batch job and the benchmarks build on exactly this):

    from mapreduce.engine import open_engine, MapReduceEngine, DocumentResult

    with open_engine(cfg, on_progress=None) as engine:   # checks, Ray, WorkerPool, models loaded
        result = engine.summarize(text, doc_id="a")      # one document, blocking
        for result in engine.run(docs):                  # docs: Iterable[(doc_id, text)], lazily read
            result.doc_id, result.summary, result.error      # error is None on success
            result.tokens, result.timings, result.tree       # tree: chunk spans + every level
            result.to_dict(tree=True)                        # JSON-ready

    # or by hand: init_ray(cfg); pool = WorkerPool(cfg); pool.wait_ready()   (mapreduce.pool)
    engine = MapReduceEngine(cfg, pool, on_progress=None)

A document's levels (chunking, map, collapse-k, final; timings and the result) are
mapreduce.document's, with no Ray; this module only schedules their level inputs (a text
and its template) onto the pool's workers.

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
from mapreduce.chunking import Chunker
from mapreduce.document import (  # noqa: F401  DocumentResult, Progress, check_document_size: public here too
    DocumentJob,
    DocumentResult,
    DocumentSteps,
    LevelInput,
    Progress,
    check_document_size,
)
from mapreduce.pool import WorkerError, WorkerPool, short_error
from mapreduce.reduce import ReduceError

TASKS_PER_WORKER = 2  # one call running, one queued behind it: no idle gap between batches


@dataclass(eq=False)
class _Item:
    """A level input waiting for, or in, a call; plus what the scheduler learnt about it."""

    input: LevelInput
    solo: bool = False  # retry alone, after its batch failed
    avoid: set = field(default_factory=set)  # workers that failed it

    @property
    def text(self) -> str:
        return self.input.text

    @property
    def template(self) -> str:
        return self.input.template

    @property
    def call_kind(self) -> tuple:
        """Texts batch together only with the same prompt template and token cap."""
        return (self.input.template, self.input.max_new_tokens)

    @property
    def live(self) -> bool:
        return self.input.live

    def priority(self) -> tuple[int, int, int]:
        return self.input.priority()


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
    active: dict[int, DocumentJob] = field(default_factory=dict)
    queue: list[_Item] = field(default_factory=list)
    inflight: dict[ray.ObjectRef, _Call] = field(default_factory=dict)


class MapReduceEngine:
    """Chunk, map, collapse, reduce - for a stream of documents, on a WorkerPool.

    Each document's levels are a mapreduce.document.DocumentJob; the engine only schedules
    their level inputs (texts + template) onto the pool's workers.
    """

    def __init__(
        self,
        cfg: Config,
        pool: WorkerPool,
        tokenizer=None,
        on_progress: Optional[Callable[[Progress], None]] = None,
        chunker: Optional[Chunker] = None,
    ):
        if chunker is None:
            if tokenizer is None:
                from core.models import load_tokenizer

                tokenizer = load_tokenizer(cfg.model, padding_side="left")
            chunker = Chunker.from_config(tokenizer, cfg)  # ConfigError if chunks cannot fit
        self.cfg = cfg
        self.pool = pool
        self.steps = DocumentSteps(cfg, chunker, on_progress)
        self.chunker = chunker
        self.batch_size = cfg.generation.generation_batch_size
        self.max_docs_in_flight = max(1, cfg.batch.max_docs_in_flight)

    def count_tokens(self, text: str) -> int:
        """Tokens a text costs inside the reduce prompt (the unit of the reduce budget)."""
        return self.steps.count_tokens(text)

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
            job = self.steps.start(doc_id, text, seq=next(run.seq))
            try:
                run.queue.extend(_Item(it) for it in job.open())
            except (TypeError, ValueError, ReduceError) as exc:
                yield job.close(error=str(exc))
                continue
            run.active[job.seq] = job

    def _collect(self, run: _RunState, ref: "ray.ObjectRef") -> Iterator[DocumentResult]:
        """Take in one finished call; yields the documents it finished (or failed)."""
        call = run.inflight.pop(ref)
        run.load[call.worker] -= 1
        try:
            outputs = ray.get(ref)
        except Exception as exc:  # retries exhausted (RayTaskError, RayActorError, ...)
            for job in self._call_failed(call, exc, run.queue):
                run.active.pop(job.seq, None)
                yield job.result
            return
        for job in self._store(call, outputs):
            run.queue.extend(_Item(it) for it in job.advance())
            if job.closed:
                run.active.pop(job.seq, None)
                yield job.result

    def _store(self, call: _Call, outputs: list[str]) -> list[DocumentJob]:
        """Put a call's summaries in place; return the jobs whose level just completed."""
        completed = []
        for item, text in zip(call.items, outputs):
            if item.live and item.input.job.put(item.input.index, text):
                completed.append(item.input.job)
        return completed

    def _call_failed(self, call: _Call, exc: Exception, queue: list[_Item]) -> list[DocumentJob]:
        """Retry a failed batch text by text; a text that fails alone fails its document (returned)."""
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
            job = item.input.job
            queue[:] = [q for q in queue if q.input.job is not job]
            job.fail(item.input.index, short_error(exc))
            failed.append(job)
        return failed

    # --- scheduling --------------------------------------------------------------------

    def _dispatch(self, queue: list[_Item], inflight: dict, load: list[int]) -> None:
        """Send queued texts to free workers: oldest document first, batches of one template and cap."""
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
                batch = [it for it in queue if not it.solo and it.call_kind == head.call_kind][:size]
            preferred = [w for w in free if w not in head.avoid] or free
            worker = min(preferred, key=lambda w: load[w])
            taken = set(map(id, batch))
            queue[:] = [it for it in queue if id(it) not in taken]
            ref = self.pool.submit(worker, [it.text for it in batch], head.template, head.input.max_new_tokens)
            inflight[ref] = _Call(worker, batch)
            load[worker] += 1


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
    chunker = Chunker.from_config(tokenizer, cfg)  # ConfigError if chunks cannot fit, before Ray
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
        yield MapReduceEngine(cfg, pool, on_progress=on_progress, chunker=chunker)
    finally:
        if pool is not None:
            pool.close()
        if started_ray:
            ray.shutdown()
