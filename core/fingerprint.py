"""One settings fingerprint for every resumable output: which settings made it.

    settings_hash(cfg, resolved=None, extra=None, scope=SUMMARIES)   # a short hash
    output_settings(cfg, resolved, extra, scope)                      # what it hashes, key -> value
    resolved_runtime(cfg.model)                                       # {"device": "cpu", "dtype": "bfloat16"}

The batch job's rows, evaluate's and longdocs' generation logs and a training run's
checkpoints are reused only under the same hash. It covers EVERY key of the sections an
output is made from (its Scope), so a key added to a section later is covered without a
change here; only the keys named below are left out, each because it cannot change an
output. `dtype: auto` and `device: auto` resolve per machine, so the resolved values are
hashed too wherever they are known (`resolved`); where only Ray workers know them (the
batch job, longdocs' map-reduce) they are recorded beside each output and checked with
check_runtime instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from core.config import (BatchConfig, DataConfig, GenerationConfig, LoraConfig, MapReduceConfig, ModelConfig,
                         TrainingConfig, section_classes)
from core.errors import UserError

# Keys that only schedule work or name where it goes; none can change what a model writes.
SCHEDULING_KEYS = (
    # model: actors set their own threads; a thread count only reorders float sums, like a batch size
    "num_threads",
    # generation: prompts per generate call (the engine mixes documents in a batch anyway)
    "generation_batch_size",
    # mapreduce: where and how many actors, and how long to wait for them
    "num_workers", "num_gpus_per_worker", "num_cpus_per_worker", "ray_address",
    "max_task_retries", "call_timeout_s", "start_timeout_s", "worker_logs",
    # mapreduce: a size gate; a document it lets through is summarized the same, a refused one
    # is an error row, which a rerun retries anyway
    "max_document_tokens",
    # batch: documents open at once
    "max_docs_in_flight",
    # training: where the run goes, whether it resumes, log cadence, checkpoints kept on disk,
    # eval batch size, and recomputing activations (the same gradients, less memory)
    "output_dir", "resume", "logging_steps", "save_total_limit", "per_device_eval_batch_size",
    "gradient_checkpointing",
)
# training: the run's plan (total steps); training.resume.check_resume_plan has its own rule for it
PLAN_KEYS = ("max_steps", "num_train_epochs")
# data keys that pick the training, validation or test rows (and their fields) of a dataset
TRAINING_ROWS = ("train_split", "eval_split", "eval_dataset", "merge_examples")
TEST_ROWS = ("test_split", "test_dataset")
ROW_SOURCES = ("dataset", "dataset_config", "article_field", "summary_field")
# files of an adapter dir that inference reads (its logs, plots and READMEs are not)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class Scope:
    """The config sections (their dataclasses) an output is made from, and keys of them it never reads."""

    sections: tuple[type, ...]
    unread: tuple[str, ...] = ()


# summaries of the batch job and longdocs' map-reduce: documents come from its own input,
# not from the dataset keys (the evaluation section is scoring only, recomputed every run)
SUMMARIES = Scope((ModelConfig, DataConfig, GenerationConfig, MapReduceConfig, BatchConfig),
                  TRAINING_ROWS + TEST_ROWS + ROW_SOURCES)
# evaluate's generations, by test example id (so the test rows count); references are not read
GENERATIONS = Scope((ModelConfig, DataConfig, GenerationConfig), TRAINING_ROWS + ("summary_field",))
# a training run: generation settings drive its ROUGE probe, which picks the kept checkpoint
TRAINING = Scope((ModelConfig, LoraConfig, DataConfig, TrainingConfig, GenerationConfig), TEST_ROWS + PLAN_KEYS)


class SettingsError(UserError, ValueError):
    """Outputs made with other settings would be mixed in; one line for the user."""


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _cached_digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha1, once per (path, size, mtime): an adapter is hashed once per process."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()[:16]


def adapter_digest(adapter: Optional[str]) -> dict[str, str]:
    """file name -> content hash, for the adapter files inference reads (retrained in place: new hash)."""
    if not adapter:
        return {}
    folder = Path(adapter).expanduser()
    return {name: _file_digest(folder / name) for name in ADAPTER_FILES if (folder / name).is_file()}


def output_settings(cfg, resolved: Optional[dict] = None, extra: Optional[dict] = None,
                    scope: Scope = SUMMARIES) -> dict[str, Any]:
    """key -> value of every key in scope that can change an output, plus `resolved` and `extra`."""
    left_out = set(SCHEDULING_KEYS) | set(scope.unread)
    settings: dict[str, Any] = {}
    for section in (name for name, cls in section_classes().items() if cls in scope.sections):
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            if key not in left_out:
                settings[key] = value
    if "adapter" in settings:
        adapter = settings["adapter"]
        settings["adapter"] = os.path.normpath(adapter) if adapter else None
        settings["adapter_files"] = adapter_digest(adapter)
        if not adapter:
            settings.pop("merge_adapter", None)  # nothing to merge
        if not adapter or settings.get("map_adapter", True):
            settings.pop("map_adapter", None)  # its default: outputs made before the key existed still match
    if resolved:
        settings["resolved"] = dict(resolved)
    if extra:
        settings["extra"] = dict(extra)
    return settings


def value_hash(value: Any) -> str:
    """A short sha1 of any JSON-able value (sorted keys)."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def settings_hash(cfg, resolved: Optional[dict] = None, extra: Optional[dict] = None,
                  scope: Scope = SUMMARIES) -> str:
    """A short hash of output_settings: equal only when every output-changing setting is."""
    return value_hash(output_settings(cfg, resolved, extra, scope))


def resolved_runtime(model_cfg, device=None, for_training: bool = False) -> dict[str, str]:
    """The device type and dtype this process loads the model with (`auto` resolved, as core.models does)."""
    from core.models import resolve_device, resolve_dtype

    device = device or resolve_device(model_cfg.device)
    dtype = resolve_dtype(model_cfg.dtype, device, for_training)
    return {"device": device.type, "dtype": str(dtype).removeprefix("torch.")}


def describe_runtime(runtime: Optional[dict]) -> str:
    return f"{runtime['dtype']} on {runtime['device']}" if runtime else "an unrecorded dtype and device"


def check_runtime(recorded: Iterable[Optional[dict]], current: dict, where: str, fresh: str) -> None:
    """SettingsError if outputs in `where` were made with another resolved dtype or device than `current`."""
    other = {json.dumps(r, sort_keys=True): r for r in recorded if r != current}
    if not other:
        return
    old = next(iter(other.values()))
    hint = f"pass --dtype {old['dtype']}" if old and old.get("device") == current["device"] else "run it where they ran"
    raise SettingsError(
        f"{where} holds outputs made with {describe_runtime(old)}, but this run resolves to "
        f"{describe_runtime(current)} (dtype/device auto depend on the machine): {hint} to match them, or {fresh}"
    )
