"""Test fakes shared by several test modules (no test module imports another).

A chunker that counts words as tokens, summarizers that keep markers, a fake Ray pool: the
document lifecycle and the engine's scheduler run on them with no model and no Ray. And the
argv of a short CPU training run (run_args), for the training tests.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import ray
from conftest import CNNDM_TRAIN, REPO

from core.config import load_config
from mapreduce.chunking import Chunk
from mapreduce.document import DocumentSteps
from mapreduce.pool import WorkerPool

DOC_TEMPLATE, REDUCE_TEMPLATE = "Doc: {article}", "Sum: {article}"
MARKER = re.compile(r"\bM\d{3}\b")
CPU_CONFIG = str(REPO / "configs" / "smollm2_cpu.yaml")  # max_new_tokens 80 allows max_length 128


class WordChunker:
    """Chunker stand-in: a token is a word; chunks are runs of chunk_size words, spans kept."""

    chunk_overlap = 0

    def __init__(self, chunk_size: int):
        self.chunk_size = chunk_size

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_cost(self, text: str, template: str | None = None) -> int:
        return len(text.split())

    def whole(self, text: str, template: str, budget: int) -> Chunk | None:
        if self.count_tokens(text) > budget:
            return None
        start, end = len(text) - len(text.lstrip()), len(text.rstrip())
        return Chunk(0, start, end, text[start:end], self.count_tokens(text))

    def split(self, text: str) -> list[Chunk]:
        words = list(re.finditer(r"\S+", text))
        runs = [words[i:i + self.chunk_size] for i in range(0, len(words), self.chunk_size)]
        return [Chunk(i, r[0].start(), r[-1].end(), text[r[0].start():r[-1].end()], len(r)) for i, r in enumerate(runs)]

    def split_text(self, text: str) -> list[str]:
        return [c.text for c in self.split(text)]


def keep_markers(texts: list[str], template: str, max_new_tokens=None) -> list[str]:
    """A summarizer that keeps only the markers M###, in order: always shrinks, never drops one."""
    return [" ".join(MARKER.findall(t)) for t in texts]


class Recorder:
    def __init__(self, fn=keep_markers):
        self.fn = fn
        self.calls: list[tuple[list[str], str]] = []

    def __call__(self, texts, template, max_new_tokens=None):
        self.calls.append((list(texts), template))
        return self.fn(texts, template)


def words(text: str) -> int:
    """The fakes' token counter: words."""
    return len(text.split())


def partial(i: int, filler: int = 9) -> str:
    """A partial summary: its marker M### then filler words."""
    return " ".join([f"M{i:03d}"] + ["filler"] * filler)


def document(parts: int, filler: int = 9) -> str:
    return "\n\n".join(" ".join([f"M{i:03d}"] + ["filler"] * filler) + "." for i in range(parts))


def steps(events: list | None = None, **overrides) -> DocumentSteps:
    values = {"max_length": 64, "max_new_tokens": 8, "chunk_size": 20, "chunk_overlap": 0,
              "prompt_template": DOC_TEMPLATE, "reduce_template": REDUCE_TEMPLATE, **overrides}
    cfg = load_config(None, values)
    return DocumentSteps(cfg, WordChunker(cfg.mapreduce.chunk_size), on_progress=events.append if events is not None else None)


class _FakeActor:
    """Just enough of an actor handle for WorkerPool's pings: `actor.info.remote()`."""

    def __init__(self, pool: "FakePool", index: int):
        self.info = SimpleNamespace(remote=lambda: pool.ping(index))


class FakePool(WorkerPool):
    """The real pool's ping bookkeeping over fake actors; calls are answered at submit time.

    A batch holding `poison` raises, one holding `stall` never answers (its worker stays
    fine). Workers in `hung` never answer (their pings wait behind the hung call, as on a
    one-call-at-a-time actor) until `release(worker)`; workers in `dead` answer pings with
    ActorDiedError. `wait` (a ready ping first: it is a quick call), `get` and `cancel` stand
    in for Ray's (see the engine tests' fixture); `clock` moves only when a wait times out.
    """

    def __init__(self, workers: int = 2, poison: str = "poison", stall: str = "stall"):
        self.actors = [_FakeActor(self, i) for i in range(workers)]
        self.alive = [True] * workers
        self.pings = {}
        self.poison, self.stall = poison, stall
        self.calls: list[tuple[int, list[str], str]] = []
        self.caps: list[object] = []  # max_new_tokens of each call
        self.answers: dict[object, object] = {}
        self.hung: set[int] = set()
        self.dead: set[int] = set()
        self.held: dict[object, int] = {}  # ref -> hung worker
        self.cancelled: list[object] = []
        self.clock = 0.0
        self.use_gpu, self.num_threads = False, 1
        self.infos = [{"node": "n1", "cpus": workers} for _ in range(workers)]  # one node, a core per actor
        self.threads: list[object] = []  # the threads each call asked for (None: the actor's own)
        self.answered: set = set()  # refs collected (ray.get): calls no longer running

    def submit(self, worker, texts, template, max_new_tokens=None, threads=None):
        ref = object()
        self.calls.append((worker, list(texts), template))
        self.caps.append(max_new_tokens)
        self.threads.append(threads)
        if any(self.poison in t for t in texts):
            self.answers[ref] = ValueError("injected failure")
        else:
            self.answers[ref] = keep_markers(texts, template)
        if worker in self.hung:
            self.held[ref] = worker
        if any(self.stall in t for t in texts):
            self.held[ref] = -1  # not the worker's fault: release() leaves it
        return ref

    def ping(self, worker):
        ref = object()
        self.answers[ref] = ray.exceptions.ActorDiedError() if worker in self.dead else {"pid": worker}
        if worker in self.hung:
            self.held[ref] = worker
        return ref

    def release(self, worker):
        self.hung.discard(worker)
        self.held = {ref: w for ref, w in self.held.items() if w != worker}

    def wait(self, refs, num_returns=1, timeout=None):
        ready = sorted((r for r in refs if r not in self.held), key=lambda r: r not in self.pings)
        if ready:
            return ready[:1], [r for r in refs if r is not ready[0]]
        assert timeout is not None, "the scheduler would wait forever"
        self.clock += timeout
        return [], list(refs)

    def get(self, ref):
        self.answered.add(ref)
        answer = self.answers[ref]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def cancel(self, ref):
        self.cancelled.append(ref)


def run_args(model_dir: Path, output_dir: Path, **overrides) -> list[str]:
    """argv for training.train: 8 full-batch steps on 4 CNN/DM rows, loud enough that the loss must fall."""
    values = {
        "config": CPU_CONFIG,
        "base_model": str(model_dir),
        "dataset": str(CNNDM_TRAIN),
        "train_split": "train[:4]",
        "eval_split": "train[1049:1051]",
        "max_length": 128,
        "max_steps": 8,
        "per_device_train_batch_size": 4,  # all 4 rows in every step: plain gradient descent
        "gradient_accumulation_steps": 1,
        "per_device_eval_batch_size": 2,
        "learning_rate": 3e-2,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "lora_dropout": 0.0,
        "logging_steps": 1,
        "eval_steps": 4,
        "save_steps": 4,
        "rouge_eval_examples": 2,
        "optim": "adamw_torch",
        "output_dir": str(output_dir),
    }
    values.update(overrides)
    args = []
    for key, value in values.items():
        if value is True:
            args.append("--" + key.replace("_", "-"))
        else:
            args += ["--" + key.replace("_", "-"), str(value)]
    return args


def lose_a_sigterm() -> None:
    """A SIGTERM whose KeyboardInterrupt is dropped, as when it lands in a finalizer (core.signals)."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        raise AssertionError("SIGTERM did not interrupt")
    except KeyboardInterrupt:
        pass
