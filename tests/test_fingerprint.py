"""core.fingerprint: every output-changing key is hashed by default, scheduling keys never are."""

from __future__ import annotations

import dataclasses
import os

import pytest

from core.config import Config, MapReduceConfig, section_classes
from core.fingerprint import (
    GENERATIONS,
    PLAN_KEYS,
    SCHEDULING_KEYS,
    SUMMARIES,
    TRAINING,
    SettingsError,
    check_runtime,
    resolved_runtime,
    settings_hash,
)


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + ["x"]
    return "x"  # None


def _keys(scope):
    for section, cls in section_classes().items():
        if cls in scope.sections:
            yield from ((section, f.name) for f in dataclasses.fields(cls))


@pytest.mark.parametrize("scope", [SUMMARIES, GENERATIONS, TRAINING], ids=["summaries", "generations", "training"])
def test_each_key_in_scope_changes_the_hash_unless_it_only_schedules(scope):
    base = settings_hash(Config(), scope=scope)
    for section, key in _keys(scope):
        cfg = Config()
        part = getattr(cfg, section)
        setattr(part, key, _changed(getattr(part, key)))
        if key in ("merge_adapter", "map_adapter"):
            cfg.model.adapter = "some/adapter"  # without an adapter nothing is merged or switched off
            base_here = settings_hash(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **{key: True})),
                                      scope=scope)
            assert settings_hash(cfg, scope=scope) != base_here
            continue
        unhashed = key in SCHEDULING_KEYS or key in scope.unread
        assert (settings_hash(cfg, scope=scope) == base) == unhashed, f"{section}.{key}"


def test_a_key_added_to_a_section_later_is_covered_without_touching_the_fingerprint():
    extended = dataclasses.make_dataclass("Extended", [("new_knob", int, dataclasses.field(default=1))],
                                          bases=(MapReduceConfig,))
    cfg = Config()
    cfg.mapreduce = extended()
    first = settings_hash(cfg)
    cfg.mapreduce.new_knob = 2
    assert settings_hash(cfg) != first


def test_scheduling_keys_and_the_plan_are_named_and_out():
    cfg = Config()
    cfg.mapreduce.num_workers, cfg.generation.generation_batch_size, cfg.batch.max_docs_in_flight = 7, 3, 99
    cfg.mapreduce.call_timeout_s, cfg.mapreduce.ray_address = 5, "ray://head:10001"
    assert settings_hash(cfg) == settings_hash(Config())
    cfg.training.max_steps, cfg.training.output_dir, cfg.training.resume = 12, "elsewhere", True
    assert settings_hash(cfg, scope=TRAINING) == settings_hash(Config(), scope=TRAINING)
    assert set(PLAN_KEYS) <= set(TRAINING.unread)


def test_the_resolved_dtype_and_device_change_the_hash():
    cfg = Config()
    bf16 = settings_hash(cfg, resolved={"device": "cpu", "dtype": "bfloat16"})
    assert bf16 != settings_hash(cfg, resolved={"device": "cpu", "dtype": "float32"})
    assert bf16 != settings_hash(cfg, resolved={"device": "cuda", "dtype": "bfloat16"})
    assert bf16 == settings_hash(cfg, resolved={"dtype": "bfloat16", "device": "cpu"})


def test_resolved_runtime_resolves_auto(monkeypatch):
    import core.models as models

    cfg = Config().model
    cfg.device, cfg.dtype = "cpu", "auto"
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
    assert resolved_runtime(cfg) == {"device": "cpu", "dtype": "bfloat16"}
    assert resolved_runtime(cfg, for_training=True) == {"device": "cpu", "dtype": "float32"}
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert resolved_runtime(cfg) == {"device": "cpu", "dtype": "float32"}


def test_adapter_files_are_hashed_by_content(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"w1")
    (adapter / "loss.png").write_bytes(b"plot")
    cfg = Config()
    cfg.model.adapter = str(adapter)
    first = settings_hash(cfg)
    os.utime(weights, ns=(1, 1))  # touched (copied, checked out): the same weights
    assert settings_hash(cfg) == first
    (adapter / "loss.png").write_bytes(b"another plot")
    assert settings_hash(cfg) == first
    weights.write_bytes(b"w2")  # retrained in place
    assert settings_hash(cfg) != first
    retrained = settings_hash(cfg)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    assert settings_hash(cfg) != retrained


def test_check_runtime_refuses_outputs_of_another_resolution():
    cpu_bf16, cpu_fp32 = {"device": "cpu", "dtype": "bfloat16"}, {"device": "cpu", "dtype": "float32"}
    check_runtime([cpu_bf16, cpu_bf16], cpu_bf16, "out.jsonl", "another --output")
    check_runtime([], cpu_fp32, "out.jsonl", "another --output")
    with pytest.raises(SettingsError, match="made with bfloat16 on cpu, but this run resolves to float32 on cpu"
                                            r".*pass --dtype bfloat16 to match them, or another --output"):
        check_runtime([cpu_bf16], cpu_fp32, "out.jsonl", "another --output")


# --- the consumers ----------------------------------------------------------------------


def test_evaluate_hashes_the_dtype_auto_resolves_to_here(monkeypatch):
    import core.models as models
    from evaluation.generations_log import system_setup

    cfg = Config()
    cfg.model.device, cfg.model.dtype = "cpu", "auto"
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
    bf16 = {s: system_setup(cfg, s) for s in ("lead3", "base", "base_chat", "adapter")}
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    fp32 = {s: system_setup(cfg, s) for s in bf16}
    assert bf16["lead3"] == fp32["lead3"]
    assert all(bf16[s] != fp32[s] for s in ("base", "base_chat", "adapter"))
    assert len(set(fp32.values())) == 4
    cfg.model.adapter = "adapters/another"  # only the adapter system reads it
    assert system_setup(cfg, "base") == fp32["base"] and system_setup(cfg, "adapter") != fp32["adapter"]


def test_longdocs_mapreduce_refuses_summaries_its_workers_would_not_have_made(tmp_path, monkeypatch):
    from contextlib import contextmanager

    import evaluation.longdocs as ld
    import mapreduce.engine as engine_module
    from evaluation.generations_log import LongdocLog
    from evaluation.longdocs_data import LongDoc

    class Engine:
        runtime = {"device": "cpu", "dtype": "float32"}

        def run(self, docs):
            raise AssertionError("generated beside summaries of another dtype")

    @contextmanager
    def fake_open_engine(cfg, on_progress=None, say=None):
        yield Engine()

    monkeypatch.setattr(engine_module, "open_engine", fake_open_engine)
    out = LongdocLog(tmp_path / "log.jsonl")
    done, todo = (LongDoc(i, f"text {i}", "ref", 10) for i in ("a", "b"))
    out.add("mapreduce", done, "mr-x", summary="s", runtime={"device": "cpu", "dtype": "bfloat16"})
    with pytest.raises(SettingsError, match="made with bfloat16 on cpu.*--dtype bfloat16.*another --out-dir"):
        ld.run_mapreduce(Config(), [todo], out, "mr-x", progress=False)
