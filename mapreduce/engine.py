"""The map-reduce engine: many long documents in, one summary each out, on a Ray worker pool.

Public API (the CLI, the batch job and the benchmarks build on exactly this):

    from mapreduce.engine import prepare_engine, open_engine, MapReduceEngine, DocumentResult

    chunker = prepare_engine(cfg)                        # no Ray: tokenizer, chunk budget, adapter fit
    with open_engine(cfg, chunker=chunker) as engine:    # Ray, WorkerPool, models loaded
        engine.runtime                                   # {"device": "cpu", "dtype": "bfloat16"}: every worker's
        result = engine.summarize(text, doc_id="a")      # one document, blocking
        for result in engine.run(docs, token_counts=None):   # docs: Iterable[(doc_id, text)], lazily read
            result.doc_id, result.summary, result.error      # error is None on success
            result.tokens, result.timings, result.tree       # tree: chunk spans + every level

    # or by hand: init_ray(cfg); pool = WorkerPool(cfg); pool.wait_ready()   (mapreduce.pool)
    engine = MapReduceEngine(cfg, pool, on_progress=None)

A document's levels (chunking, map, collapse-k, final; timings and the result) are
mapreduce.document's, with no Ray; this module only schedules their level inputs (a text
and its template) onto the pool's workers (see `run` and `_dispatch`).

Failures: Ray restarts a crashed actor and retries its call (max_restarts,
max_task_retries). A batch that still fails, or takes longer than `call_timeout_s`, is
split and its texts retried one by one (on another actor where there is one), so one bad
text cannot fail its neighbours; a text that fails alone fails its document: an error
result is yielded and the stream goes on. Text is never silently dropped. If no actor is
left (dead, or not back within `start_timeout_s`), `run` raises WorkerError.
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
from mapreduce.pool import WorkerError, WorkerPool, pool_runtime, short_error, worker_logs_hint
from mapreduce.reduce import ReduceError

TASKS_PER_WORKER = 2  # one call running, one queued behind it: no idle gap between batches
clock = time.monotonic  # call deadlines (tests replace it)


class CallTimeout(RuntimeError):
    """A call took longer than call_timeout_s: it counts as a failed call."""


@dataclass(eq=False)
class _Item:
    """A level input waiting for, or in, a call; plus what the scheduler learnt about it."""

    input: LevelInput
    solo: bool = False  # retry alone, after its batch failed
    avoid: set = field(default_factory=set)  # workers that failed it

    @property
    def call_kind(self) -> tuple:
        """Texts batch together only with the same prompt template and token cap."""
        return (self.input.template, self.input.max_new_tokens)


@dataclass(eq=False)
class _Call:
    worker: int
    items: list[_Item]
    submitted: float = field(default_factory=lambda: clock())  # call_timeout_s counts from here


@dataclass(eq=False)
class _RunState:
    """One `run`'s scheduling state: documents open, texts queued, calls in flight, load per worker."""

    source: Iterator[tuple[str, str]]
    load: list[int]
    token_counts: dict = field(default_factory=dict)  # doc id -> tokens, where the caller counted them
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
        self.runtime: Optional[dict] = None  # the workers' resolved device and dtype (open_engine sets it)

    # --- public ------------------------------------------------------------------------

    def summarize(self, text: str, doc_id: str = "document") -> DocumentResult:
        (result,) = self.run([(doc_id, text)])
        return result

    def run(self, docs: Iterable[tuple[str, str]], token_counts: Optional[dict] = None) -> Iterator[DocumentResult]:
        """Results for every (doc_id, text), in completion order; failures are error results.

        `token_counts` (doc id -> tokens) spares counting a document the caller already counted.
        """
        run = _RunState(iter(docs), [0] * len(self.pool), dict(token_counts or {}))
        try:
            while True:
                yield from self._admit(run)
                self._dispatch(run.queue, run.inflight, run.load)
                if not run.inflight:
                    if run.exhausted and not run.active:
                        return
                    if not run.queue:
                        continue
                    if not self.pool.pings:
                        raise WorkerError(f"every worker has died; cannot go on ({worker_logs_hint()})")
                for ref in self._wait(run):
                    if ref in self.pool.pings:
                        self.pool.ping_answered(ref)
                    else:
                        yield from self._collect(run, ref)
                yield from self._expire(run)
        finally:
            for ref in run.inflight:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass

    def _wait(self, run: _RunState) -> list:
        """The first call or ping to finish; waits no later than the oldest call's deadline.

        With no call in flight (every worker left is being pinged), a worker has
        start_timeout_s to come back before the run gives up.
        """
        mr = self.cfg.mapreduce
        if run.inflight:
            oldest = min(call.submitted for call in run.inflight.values())
            timeout = max(0.0, oldest + mr.call_timeout_s - clock()) if mr.call_timeout_s else None
        else:
            timeout = mr.start_timeout_s or None
        ready, _ = ray.wait(list(run.inflight) + list(self.pool.pings), num_returns=1, timeout=timeout)
        if not ready and not run.inflight:
            raise WorkerError(f"no worker came back within {timeout:g}s (start_timeout_s) after failed calls; "
                              f"{worker_logs_hint()}")
        return ready

    def _expire(self, run: _RunState) -> Iterator[DocumentResult]:
        """Calls past call_timeout_s are cancelled and fail like any call (a hung worker gets pinged)."""
        limit = self.cfg.mapreduce.call_timeout_s
        if not limit:
            return
        now = clock()
        for ref, call in list(run.inflight.items()):
            if now - call.submitted < limit:
                continue
            del run.inflight[ref]
            run.load[call.worker] -= 1
            try:
                ray.cancel(ref)
            except Exception:
                pass
            exc = CallTimeout(f"no answer within {limit:g}s (call_timeout_s): a hung worker? "
                              "raise --call-timeout-s for a slow model")
            for job in self._call_failed(call, exc, run.queue, timed_out=True):
                run.active.pop(job.seq, None)
                yield job.result

    def _admit(self, run: _RunState) -> Iterator[DocumentResult]:
        """Open documents from the source up to max_docs_in_flight; yields those that fail to open."""
        while not run.exhausted and len(run.active) < self.max_docs_in_flight:
            try:
                doc_id, text = next(run.source)
            except StopIteration:
                run.exhausted = True
                return
            job = self.steps.start(doc_id, text, seq=next(run.seq), tokens=run.token_counts.get(doc_id))
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
            if item.input.live and item.input.job.put(item.input.index, text):
                completed.append(item.input.job)
        return completed

    def _call_failed(self, call: _Call, exc: Exception, queue: list[_Item], timed_out: bool = False) -> list[DocumentJob]:
        """Retry a failed batch text by text; a text that fails alone fails its document (returned).

        A timed-out call is retried alone once even when it held one text: the worker may be the culprit.
        """
        if timed_out or isinstance(exc, ray.exceptions.RayActorError):
            self.pool.check_alive(call.worker)  # no new work for it until it answers
        live = [it for it in call.items if it.input.live]
        if len(call.items) > 1 or (timed_out and not any(it.solo for it in live)):
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
        """Send queued texts to free workers: oldest document first, batches of one template and cap.

        `run` keeps up to `batch.max_docs_in_flight` documents open; every text to summarize (a
        chunk, or a group of summaries) waits in one queue, ordered by document then level, so
        older documents finish first while newer ones fill idle workers. A long queue goes out
        in full batches of `generation_batch_size` (chunks of several documents mixed), up to
        TASKS_PER_WORKER calls per actor (the next one waits on the actor: no gap between
        calls). A short one (one document's level, a stream's tail) is split evenly over the
        live actors, the split fixed for the round (`shares`): 12 chunks on 2 actors go out as
        6 + 6, not 6, 3, 2, 1 as the shrinking queue would have it. A call with the pool to
        itself may use the idle actors' threads (`WorkerPool.lone_threads`).
        """
        queue[:] = [it for it in queue if it.input.live]
        live = [w for w in range(len(self.pool)) if self.pool.usable(w)]
        shares: dict[tuple, int] = {}  # call kind -> batch size, fixed for this round: a split of the queue as it was
        while queue and live:
            queue.sort(key=lambda it: it.input.priority())
            head = queue[0]
            kind = [head] if head.solo else [it for it in queue if not it.solo and it.call_kind == head.call_kind]
            size = 1 if head.solo else shares.setdefault(head.call_kind, self._batch_size(len(kind), len(live)))
            free = [w for w in live if load[w] < TASKS_PER_WORKER]
            if not free:
                return
            preferred = [w for w in free if w not in head.avoid]
            if not preferred:
                if any(w not in head.avoid for w in live):
                    return  # a retried text waits for a worker that has not failed it
                preferred = free
            batch = kind[:size]
            worker = min(preferred, key=lambda w: load[w])
            taken = set(map(id, batch))
            queue[:] = [it for it in queue if id(it) not in taken]
            alone = not queue and not inflight
            ref = self.pool.submit(worker, [it.input.text for it in batch], head.input.template,
                                   head.input.max_new_tokens, threads=self.pool.lone_threads(worker) if alone else None)
            inflight[ref] = _Call(worker, batch)
            load[worker] += 1

    def _batch_size(self, queued: int, workers: int) -> int:
        """Full batches while the queue fills every actor; below that, an even share per actor."""
        if queued >= self.batch_size * workers:
            return self.batch_size
        return max(1, min(self.batch_size, math.ceil(queued / workers)))


def prepare_engine(cfg: Config) -> Chunker:
    """Everything checked without Ray, once: the tokenizer, the Chunker (ConfigError if chunks
    cannot fit the prompt) and the adapter (dir, adapter_config.json, weights against the base)."""
    from core.models import check_adapter_fits, load_tokenizer

    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    chunker = Chunker.from_config(tokenizer, cfg)
    if cfg.model.adapter:
        check_adapter_fits(cfg.model)  # before Ray: a mismatch is one line, not worker tracebacks
    return chunker


@contextmanager
def open_engine(cfg: Config, on_progress: Optional[Callable[[Progress], None]] = None, say=None,
                chunker: Optional[Chunker] = None):
    """A ready engine on a fresh worker pool; the pool (and Ray, if started here) closed on exit.

    `chunker` is prepare_engine's (run here when not given), so a bad input fails in a
    second rather than after Ray starts. WorkerError if the workers resolved `dtype`/`device`
    differently (engine.runtime holds what they all resolved).
    """
    from core.models import fp32_cpu_note
    from mapreduce.pool import init_ray

    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    started = time.perf_counter()
    chunker = chunker or prepare_engine(cfg)
    started_ray = init_ray(cfg)
    pool = None
    try:
        pool = WorkerPool(cfg)
        say(f"loading the model on {len(pool)} Ray worker(s) ...")
        if pool.waiting_note:
            say(pool.waiting_note)
        infos = pool.wait_ready(timeout=cfg.mapreduce.start_timeout_s or None)
        runtime = pool_runtime(infos)
        say("workers ready: " + ", ".join(f"{i['device']} {i['dtype']} ({i['threads']} threads)" for i in infos)
            + f" [{time.perf_counter() - started:.1f}s]")
        note = fp32_cpu_note(cfg.model.dtype, runtime)
        if note:
            say(note)
        engine = MapReduceEngine(cfg, pool, on_progress=on_progress, chunker=chunker)
        engine.runtime = runtime
        yield engine
    finally:
        if pool is not None:
            pool.close()
        if started_ray:
            ray.shutdown()
