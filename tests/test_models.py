"""core.models: an adapter is checked against its base model before anything loads weights."""

from __future__ import annotations

import pytest

from conftest import save_lora_adapter
from core.config import ModelConfig
from core.models import ModelError, check_adapter_fits


def _adapter_for(model_dir, out):
    return save_lora_adapter(model_dir, out, r=4, lora_alpha=8, task_type="CAUSAL_LM",
                             target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])


def test_adapter_fits_its_base_and_not_another(tiny_model_dir, tmp_path):
    from transformers import BertConfig, Qwen2Config

    adapter = _adapter_for(tiny_model_dir, tmp_path / "adapter")
    check_adapter_fits(ModelConfig(base_model=str(tiny_model_dir), adapter=str(adapter)))

    wider = tmp_path / "wider"
    config = Qwen2Config.from_pretrained(str(tiny_model_dir))
    config.hidden_size, config.intermediate_size = 96, 160
    config.save_pretrained(str(wider))
    with pytest.raises(ModelError, match="does not fit base model .* features"):
        check_adapter_fits(ModelConfig(base_model=str(wider), adapter=str(adapter)))

    shallower = tmp_path / "one_layer"
    config = Qwen2Config.from_pretrained(str(tiny_model_dir))
    config.num_hidden_layers, config.layer_types = 1, config.layer_types[:1]
    config.save_pretrained(str(shallower))
    with pytest.raises(ModelError, match="does not fit base model .* no module model.layers.1"):
        check_adapter_fits(ModelConfig(base_model=str(shallower), adapter=str(adapter)))

    encoder = tmp_path / "bert"
    BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128).save_pretrained(str(encoder))
    with pytest.raises(ModelError, match="target_modules.* not modules of base model"):  # BERT has no q_proj
        check_adapter_fits(ModelConfig(base_model=str(encoder), adapter=str(adapter)))

    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="adapter_model.safetensors"):
        check_adapter_fits(ModelConfig(base_model=str(tiny_model_dir), adapter=str(adapter)))


def test_inference_lm_head_gets_contiguous_rows_at_prefill(lively_model_dir):
    """The last-position view would make torch's linear copy the output weight once per row."""
    import torch

    from core.config import ModelConfig
    from core.models import load_base_model

    seen = []
    cfg = ModelConfig(base_model=str(lively_model_dir), device="cpu", dtype="float32")
    model = load_base_model(cfg)
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(100, 5000, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                              min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert seen and all(seen)
    plain = load_base_model(cfg)
    plain.get_output_embeddings()._forward_pre_hooks.clear()  # without it: the same tokens
    with torch.inference_mode():
        slow = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                              min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(fast, slow)


def _edit_config(adapter, **changes):
    import json

    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes, field", [
    ({"target_modules": ["q_proj", "nonexistent_proj"]}, "target_modules.*nonexistent_proj"),
    ({"target_modules": "model\\..*\\.nothing_here"}, "target_modules"),
    ({"target_modules": 7}, "target_modules"),
    ({"r": "sixteen"}, "'r'.*sixteen"),
    ({"r": 4.5}, "'r'"),
    ({"r": 0}, "'r'"),
    ({"r": True}, "'r'"),
    ({"lora_alpha": "big"}, "lora_alpha"),
    ({"peft_type": "PREFIX_TUNING"}, "peft_type"),
])
def test_a_bogus_adapter_config_is_one_line_naming_the_field(tiny_model_dir, tmp_path, changes, field):
    adapter = _adapter_for(tiny_model_dir, tmp_path / "adapter")
    _edit_config(adapter, **changes)
    with pytest.raises(ModelError, match=field) as err:
        check_adapter_fits(ModelConfig(base_model=str(tiny_model_dir), adapter=str(adapter)))
    assert str(adapter) in str(err.value) and "\n" not in str(err.value)


def test_adapter_config_that_is_not_json_is_one_line(tiny_model_dir, tmp_path):
    adapter = _adapter_for(tiny_model_dir, tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text("{r: 4,")
    with pytest.raises(ModelError, match="adapter_config.json.*not valid JSON"):
        check_adapter_fits(ModelConfig(base_model=str(tiny_model_dir), adapter=str(adapter)))


def test_regex_and_all_linear_target_modules_that_match_pass(tiny_model_dir, tmp_path):
    adapter = _adapter_for(tiny_model_dir, tmp_path / "adapter")
    _edit_config(adapter, target_modules=".*\\.(q_proj|v_proj|up_proj|down_proj)")
    check_adapter_fits(ModelConfig(base_model=str(tiny_model_dir), adapter=str(adapter)))
    _edit_config(adapter, target_modules="all-linear", lora_alpha=8.0)
    check_adapter_fits(ModelConfig(base_model=str(tiny_model_dir), adapter=str(adapter)))
