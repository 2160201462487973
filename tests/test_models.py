"""core.models: an adapter is checked against its base model before anything loads weights."""

from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from core.models import ModelError, check_adapter_fits


def _adapter_for(model_dir, out):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(str(out), safe_serialization=True)
    return out


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

    encoder = tmp_path / "bert"
    BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128).save_pretrained(str(encoder))
    with pytest.raises(ModelError, match="does not fit base model .* no module"):  # BERT has no q_proj
        check_adapter_fits(ModelConfig(base_model=str(encoder), adapter=str(adapter)))

    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="adapter_model.safetensors"):
        check_adapter_fits(ModelConfig(base_model=str(tiny_model_dir), adapter=str(adapter)))
