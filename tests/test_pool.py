"""mapreduce.pool without a Ray cluster: actor devices, what a cluster cannot run, a mixed pool, worker logs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.config import load_config
from mapreduce.pool import WorkerError, actor_device, init_ray, pool_runtime, worker_resources


@pytest.mark.parametrize("device, use_gpu, expected", [
    ("cuda:1", True, "cuda"),  # Ray shows the actor its own GPU(s) only, numbered from 0
    ("cuda:0", True, "cuda"),
    ("cuda", True, "cuda"),
    ("auto", True, "auto"),
    ("auto", False, "cpu"),
    ("cpu", False, "cpu"),
])
def test_actor_device(device, use_gpu, expected):
    assert actor_device(device, use_gpu) == expected


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_cluster_without_gpus_is_refused_in_one_line(device):
    cfg = load_config(None, {"device": device})
    with pytest.raises(WorkerError, match="no GPU") as info:
        worker_resources(cfg, {"CPU": 16.0})
    assert device in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(WorkerError, match="num_gpus_per_worker"):
        worker_resources(load_config(None, {"device": device, "num_gpus_per_worker": 0.0}), {"GPU": 2.0, "CPU": 16.0})


def test_cuda_with_gpus_and_cpu_or_auto_without_them_still_work():
    assert worker_resources(load_config(None, {"device": "cuda:1"}), {"GPU": 2.0, "CPU": 16.0})[:2] == (2, 1.0)
    for device in ("auto", "cpu"):
        assert worker_resources(load_config(None, {"device": device}), {"CPU": 16.0}) == (1, 0.0, 1.0)


def test_pool_runtime_is_what_every_worker_resolved():
    infos = [{"device": "cpu", "dtype": "bfloat16"}, {"device": "cpu", "dtype": "bfloat16"}]
    assert pool_runtime(infos) == {"device": "cpu", "dtype": "bfloat16"}
    assert pool_runtime([{"device": "cuda:0", "dtype": "float16"}]) == {"device": "cuda", "dtype": "float16"}


def test_a_pool_whose_workers_resolved_auto_differently_is_refused():
    infos = [{"device": "cpu", "dtype": "bfloat16"}, {"device": "cpu", "dtype": "float32"}]
    with pytest.raises(WorkerError, match="resolved dtype/device differently: bfloat16 on cpu .1 worker., "
                                          "float32 on cpu .1 worker.*--dtype"):
        pool_runtime(infos)


@pytest.mark.parametrize("worker_logs", [False, True])
def test_worker_logs_reach_the_driver_only_when_asked(monkeypatch, worker_logs):
    import ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert init_ray(load_config(None, {"worker_logs": worker_logs}))
    assert seen["log_to_driver"] is worker_logs


def test_a_worker_that_fails_to_start_says_where_its_logs_are(monkeypatch):
    import ray

    from fakes import FakePool

    def failing_get(refs, timeout=None):
        raise ray.exceptions.ActorDiedError()

    monkeypatch.setattr(ray, "get", failing_get)
    monkeypatch.setattr(ray._private.worker, "_global_node", SimpleNamespace(get_logs_dir_path=lambda: "/tmp/ray/s/logs"))
    with pytest.raises(WorkerError, match=r"a worker failed to start: .*; the workers' own output is in "
                                          r"/tmp/ray/s/logs/worker-\*.err \(or rerun with --worker-logs\)"):
        FakePool(workers=1).wait_ready()
