"""A pool of Ray actors, each holding one merged summarization model.

    init_ray(cfg)                 join $RAY_ADDRESS / --ray-address, else start a quiet local cluster
    pool = WorkerPool(cfg)        num_workers actors (default: one per GPU, or one on CPU)
    pool.wait_ready()             surfaces a model that fails to load as one WorkerError
    ref = pool.submit(i, texts, template, max_new_tokens=None, threads=None)   -> ObjectRef of list[str]
    pool.lone_threads(i)          threads a call alone on the pool may take (its node's idle CPU actors')
    pool.check_alive(i)           after a failed call: ping it, without waiting (pool.pings)
    pool.close()

An actor (SummarizerWorker) loads the base model + adapter once with
core.models.load_for_inference, then for every call builds each prompt with
core.prompt.build_prompt_ids (the training template and truncation budget
`max_length - max_new_tokens`) and generates the batch with core.generation. It holds no
summarization logic of its own.

Resources: `num_gpus_per_worker` GPUs per actor (1, or a fraction such as 0.5 to share a
GPU) when the cluster has GPUs and the device is not cpu; otherwise CPU actors, each pinned to
`num_cpus_per_worker` threads (rounded, at least 1) so actors do not fight over cores.
A GPU actor sees only its own GPU(s), as cuda:0...: `device: cuda:N` loads on `cuda` there,
and `device: cuda*` is refused where the actors would get no GPU.

Faults: a crashed actor is restarted (`max_restarts`) and its calls retried
(`max_task_retries`, `retry_exceptions=True`, so Python errors are retried too). The engine
decides what a call that still fails means for its documents. After a failed or timed-out
call the actor is pinged; it gets no new work until the ping answers (a slow restart is
waited for, never retired), and only an actor Ray reports dead for good is dropped.

Logs: the workers' own output (model loading, warnings, tracebacks) stays in Ray's log files
unless `worker_logs` is on; a WorkerError says where those files are.

On a cluster joined by address, the nodes need this package importable (installed, or the
same checkout on their PYTHONPATH); a local cluster inherits the driver's sys.path.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Optional

import ray

from core.config import Config
from core.errors import UserError
from core.signals import keep_sigterm_handler

FAULT_ENV = "MAPREDUCE_TEST_FAULT"  # test hook, see _injected_fault


class WorkerError(UserError, RuntimeError):
    """The worker pool cannot do its job (no actor could start, all died); one line."""


def init_ray(cfg: Config, num_cpus: Optional[int] = None) -> bool:
    """Connect to Ray; True if this call started it (the caller then shuts it down)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.mapreduce.ray_address or os.environ.get("RAY_ADDRESS")
    quiet = dict(log_to_driver=cfg.mapreduce.worker_logs, logging_level=logging.WARNING)
    with keep_sigterm_handler():  # a CLI's SIGTERM-as-Ctrl-C survives ray.init's own handler
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    return True


def _injected_fault(texts: list[str]) -> set[int]:
    """Faults on demand for the fault-tolerance tests, read from $MAPREDUCE_TEST_FAULT.

    Comma-separated: `crash-once:PATH` kills this actor's process on the first call
    anywhere in the pool (creating PATH marks that it happened); `fail-text:WORD` raises
    on every batch holding a text that contains WORD; `empty-text:WORD` returns the
    indices of texts containing WORD, whose summaries the caller then blanks.
    """
    blank: set[int] = set()
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        kind, _, arg = spec.partition(":")
        if kind == "crash-once":
            try:
                fd = os.open(arg, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)
        if kind == "fail-text" and any(arg in t for t in texts):
            raise ValueError(f"injected failure on text containing {arg!r}")
        if kind == "empty-text":
            blank |= {i for i, t in enumerate(texts) if arg in t}
    return blank


class SummarizerWorker:
    """One model in one process; `summarize(texts, template)` -> one summary per text."""

    def __init__(self, cfg: Config, use_gpu: bool, num_threads: int):
        import torch

        from core.models import load_for_inference

        cfg = copy.deepcopy(cfg)
        cfg.model.device = actor_device(cfg.model.device, use_gpu)
        if not use_gpu:
            cfg.model.num_threads = num_threads
            torch.set_num_threads(num_threads)
        self.model, self.tokenizer = load_for_inference(cfg.model)
        self.cfg = cfg
        self.gen = cfg.generation
        self.max_prompt_tokens = cfg.prompt_budget
        self.device = str(next(self.model.parameters()).device)
        self.dtype = str(getattr(self.model, "dtype", "")).removeprefix("torch.")  # `auto` as it resolved here

    def info(self) -> dict:
        import torch

        return {"pid": os.getpid(), "device": self.device, "dtype": self.dtype, "threads": torch.get_num_threads(),
                "node": ray.get_runtime_context().get_node_id(), "cpus": len(os.sched_getaffinity(0))}

    @ray.method(retry_exceptions=True)
    def summarize(self, texts: list[str], template: str, max_new_tokens: Optional[int] = None,
                  threads: Optional[int] = None) -> list[str]:
        """`threads`: this call only (a lone call borrowing idle actors' cores), then back to the actor's own."""
        import torch

        from core.generation import summarize_texts, with_max_new_tokens
        from core.models import adapter_used

        blank = _injected_fault(texts)
        gen = with_max_new_tokens(self.gen, max_new_tokens)
        own = torch.get_num_threads()
        if threads and self.device == "cpu":
            torch.set_num_threads(threads)
        try:
            summaries = summarize_texts(self.model, self.tokenizer, texts, template, self.max_prompt_tokens, gen,
                                        adapter=adapter_used(self.cfg, template))
        finally:
            torch.set_num_threads(own)
        return [("" if i in blank else s) for i, s in enumerate(summaries)]


def actor_device(device: str, use_gpu: bool) -> str:
    """The device an actor loads on. Ray shows a GPU actor only its own GPU(s), numbered from 0,
    so a configured `cuda:N` there is its first GPU, `cuda`; a CPU actor loads on cpu."""
    if not use_gpu:
        return "cpu"
    return "cuda" if device.startswith("cuda") else device


def worker_resources(cfg: Config, cluster: dict) -> tuple[int, float, float]:
    """(num_workers, gpus per worker, cpus per worker) for a cluster's resources dict.

    WorkerError for `device: cuda*` where the actors would get no GPU (they would run on CPU).
    """
    mr, device = cfg.mapreduce, cfg.model.device
    gpus = float(cluster.get("GPU", 0))
    # device: cpu runs on CPU even on a GPU cluster: reserving GPUs it never uses would block others
    use_gpu = gpus > 0 and mr.num_gpus_per_worker > 0 and device != "cpu"
    if device.startswith("cuda") and not use_gpu:
        why = "the Ray cluster has no GPU" if gpus <= 0 else "num_gpus_per_worker is 0"
        raise WorkerError(f"device {device!r} asked for, but {why}: the workers would run on CPU "
                          "(use device auto or cpu, or a cluster with GPUs)")
    gpus_per = mr.num_gpus_per_worker if use_gpu else 0.0
    if mr.num_workers is not None:
        workers = mr.num_workers
    elif use_gpu:
        workers = max(1, int(gpus / gpus_per + 1e-9))  # not //: 1.0 // 0.1 == 9.0
    else:
        workers = 1
    return workers, gpus_per, mr.num_cpus_per_worker


class WorkerPool:
    """Ray actors with a model each; the engine submits batches and waits on the refs."""

    def __init__(self, cfg: Config, env: Optional[dict[str, str]] = None):
        if not ray.is_initialized():
            raise WorkerError("Ray is not initialized: call mapreduce.pool.init_ray(cfg) first")
        mr = cfg.mapreduce
        cluster = ray.cluster_resources()
        workers, gpus_per, cpus_per = worker_resources(cfg, cluster)
        for name, need, have in (("GPU", gpus_per, cluster.get("GPU", 0)), ("CPU", cpus_per, cluster.get("CPU", 0))):
            if need * workers > have + 1e-9:
                raise WorkerError(
                    f"{workers} workers x {need:g} {name} need {need * workers:g} {name}s, "
                    f"the Ray cluster has {have:g} (lower num_workers or num_{name.lower()}s_per_worker)"
                )
        # resources other jobs/actors hold now: the actors wait for them (say so, don't hang silently)
        free = ray.available_resources()
        self.waiting_note: Optional[str] = None
        for name, need in (("GPU", gpus_per), ("CPU", cpus_per)):
            if need * workers > free.get(name, 0) + 1e-9:
                self.waiting_note = (
                    f"waiting for {need * workers:g} free {name}s (the Ray cluster has {free.get(name, 0):g} free now)"
                )
        self.num_threads = max(1, round(cpus_per))
        self.use_gpu = gpus_per > 0
        options = dict(
            num_cpus=cpus_per,
            num_gpus=gpus_per,
            max_restarts=max(1, mr.max_task_retries),
            max_task_retries=mr.max_task_retries,
        )
        if env:
            options["runtime_env"] = {"env_vars": dict(env)}
        actor_cls = ray.remote(SummarizerWorker)
        self.actors = [
            actor_cls.options(**options).remote(cfg, self.use_gpu, self.num_threads) for _ in range(workers)
        ]
        self.alive = [True] * workers
        self.pings: dict = {}  # ping ref -> worker, for workers checked after a failed call
        self.infos: list[dict] = []  # each actor's info() once ready (pid, device, dtype, threads, node, cpus)

    def __len__(self) -> int:
        return len(self.actors)

    def wait_ready(self, timeout: Optional[float] = None) -> list[dict]:
        """Block until every actor has loaded its model; WorkerError (one line) if one cannot."""
        try:
            self.infos = ray.get([a.info.remote() for a in self.actors], timeout=timeout)
            return self.infos
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(f"workers did not load their models within {timeout:g}s; {worker_logs_hint()}") from None
        except ray.exceptions.RayError as exc:
            raise WorkerError(f"a worker failed to start: {short_error(exc)}; {worker_logs_hint()}") from None

    def submit(self, index: int, texts: list[str], template: str, max_new_tokens: Optional[int] = None,
               threads: Optional[int] = None) -> "ray.ObjectRef":
        return self.actors[index].summarize.remote(list(texts), template, max_new_tokens, threads)

    def lone_threads(self, index: int) -> Optional[int]:
        """Threads for a call that has the pool to itself: its actor's and those of the usable
        CPU actors beside it on its node, up to the node's cores; None where that adds none."""
        if self.use_gpu or not self.infos:
            return None
        node = self.infos[index].get("node")
        beside = [i for i, info in enumerate(self.infos) if self.usable(i) and info.get("node") == node]
        threads = min(self.num_threads * len(beside), self.infos[index].get("cpus") or 1)
        return threads if threads > self.num_threads else None

    def usable(self, index: int) -> bool:
        """Alive, and not waiting for the answer to a ping."""
        return self.alive[index] and index not in self.pings.values()

    def check_alive(self, index: int) -> None:
        """After a failed or timed-out call: ping the actor, without waiting for the answer.

        The ping waits behind a hung call, and for a restart (Ray queues calls to a
        restarting actor); the scheduler waits on it beside its calls (`ping_answered`).
        """
        if self.alive[index] and index not in self.pings.values():
            self.pings[self.actors[index].info.remote()] = index

    def ping_answered(self, ref: "ray.ObjectRef") -> None:
        """A ping is ready: the actor is back, or (an actor error) dead for good."""
        index = self.pings.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.ActorUnavailableError:  # not reachable right now: ask again
            self.check_alive(index)
        except ray.exceptions.RayActorError:  # no restarts left
            self.alive[index] = False

    def close(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []
        self.alive = []
        self.pings = {}


def pool_runtime(infos: list[dict]) -> dict:
    """The device type and dtype every worker resolved; WorkerError if they differ (one run, one setup)."""
    counts: dict[tuple[str, str], int] = {}
    for info in infos:
        key = (info["device"].split(":")[0], info.get("dtype", ""))
        counts[key] = counts.get(key, 0) + 1
    if len(counts) > 1:
        seen = ", ".join(f"{dtype} on {device} ({n} worker{'s' * (n > 1)})" for (device, dtype), n in counts.items())
        raise WorkerError(f"the workers resolved dtype/device differently: {seen}; one run must not mix them, "
                          "pass --dtype and --device explicitly (or use alike machines)")
    (device, dtype), = counts
    return {"device": device, "dtype": dtype}


def worker_logs_hint() -> str:
    """Where the workers' own output went (it reaches this terminal only with worker_logs)."""
    try:
        node = ray._private.worker._global_node  # the driver's node; None on a ray:// client
        logs = node.get_logs_dir_path() if node is not None else None
    except Exception:
        logs = None
    where = f"{logs}/worker-*.err" if logs else "`ray logs` on the cluster"
    return f"the workers' own output is in {where} (or rerun with --worker-logs)"


def short_error(exc: BaseException) -> str:
    """The last meaningful line of an exception (Ray wraps remote tracebacks)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return f"{type(exc).__name__}: {line}" if line and type(exc).__name__ not in line else (line or type(exc).__name__)
