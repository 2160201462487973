"""`map_adapter: false`: map-prompt calls run zero-shot, merge calls with the adapter, one loaded model."""

from __future__ import annotations

import pytest

from conftest import save_lora_adapter
from core.fingerprint import settings_hash
from core.prompt import MERGE_TEMPLATE, merge_template
from mapreduce.api import Summarizer

SETTINGS = dict(max_length=160, max_new_tokens=8, chunk_size=100, chunk_overlap=10,
                generation_batch_size=4, num_workers=1, dtype="float32")
TEXT = "The council met on Monday and voted to close the old bridge to lorries."


@pytest.fixture(scope="module")
def live_adapter(lively_model_dir, tmp_path_factory):
    """A LoRA adapter with random (not zero) B matrices, so it changes what the model writes."""
    out = save_lora_adapter(lively_model_dir, tmp_path_factory.mktemp("live_adapter"), seed=3, r=4, lora_alpha=64,
                            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM",
                            init_lora_weights=False)
    return str(out)


def _both_calls(summarizer) -> tuple[str, str]:
    """(map-prompt summary, merge-prompt summary) of TEXT."""
    merge = merge_template(20, MERGE_TEMPLATE)
    return summarizer._generate([TEXT], summarizer.cfg.data.prompt_template)[0], summarizer._generate([TEXT], merge)[0]


def test_map_runs_without_the_adapter_and_merges_with_it(lively_model_dir, live_adapter):
    base = Summarizer.from_config(None, base_model=str(lively_model_dir), **SETTINGS)
    full = Summarizer.from_config(None, base_model=str(lively_model_dir), adapter=live_adapter, **SETTINGS)
    split = Summarizer.from_config(None, base_model=str(lively_model_dir), adapter=live_adapter,
                                   map_adapter=False, **SETTINGS)
    base_map, base_merge = _both_calls(base)
    full_map, full_merge = _both_calls(full)
    assert full_map != base_map and full_merge != base_merge, "the adapter must change both calls for this test to mean anything"
    assert _both_calls(split) == (base_map, full_merge)
    assert hasattr(split.model, "disable_adapter") and not hasattr(full.model, "disable_adapter")  # unmerged / merged


def test_map_adapter_is_in_the_fingerprint_only_when_it_changes_something(live_adapter):
    from core.config import Config

    cfg = Config()
    plain = settings_hash(cfg)
    cfg.model.map_adapter = False
    assert settings_hash(cfg) == plain  # no adapter: nothing to switch off
    cfg.model.adapter = live_adapter
    split = settings_hash(cfg)
    cfg.model.map_adapter = True
    assert settings_hash(cfg) != split
