"""mapreduce.pool without a Ray cluster: the device an actor loads on, and what a cluster cannot run."""

from __future__ import annotations

import pytest

from core.config import load_config
from mapreduce.pool import WorkerError, actor_device, worker_resources


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
