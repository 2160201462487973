"""core.attention: the CPU bf16 decode path gives sdpa's tokens, and only inference gets it."""

import pytest
import torch

from core.attention import CPU_DECODE_ATTENTION, decode_attention, use_cpu_decode_attention
from core.config import ModelConfig


def _generate(model, ids, mask, new_tokens=6):
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("padded", [False, True])
def test_decode_attention_generates_what_sdpa_generates(lively_model_dir, padded):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(lively_model_dir), dtype=torch.float32).eval()
    ids = torch.randint(100, 5000, (3, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    if padded:  # left padding, as the engine's batches have it
        mask[1, :4] = 0
        mask[2, :9] = 0
    expected = _generate(model, ids, mask)
    assert use_cpu_decode_attention(model)
    assert model.config._attn_implementation == CPU_DECODE_ATTENTION
    assert torch.equal(_generate(model, ids, mask), expected)


def test_decode_attention_matches_sdpa_per_step_with_grouped_heads():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Module(torch.nn.Module):
        num_key_value_groups = 3
        is_causal = True

    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 6, 1, 8, generator=gen)
    key, value = torch.randn(2, 2, 5, 8, generator=gen), torch.randn(2, 2, 5, 8, generator=gen)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., :2] = False  # a left-padded row
    module = Module().eval()
    ours, _ = decode_attention(module, query, key, value, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert ours.shape == theirs.shape == (2, 1, 6, 8)
    assert torch.allclose(ours, theirs, atol=1e-5)
    # a padded key really is left out: changing it changes nothing
    key[0, :, :2] += 100.0
    assert torch.allclose(decode_attention(module, query, key, value, mask, scaling=0.3)[0], ours, atol=1e-5)


def test_cpu_bf16_inference_gets_decode_attention_training_does_not(tiny_model_dir):
    from core.models import load_base_model

    cfg = ModelConfig(base_model=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    inference = load_base_model(cfg)
    assert inference.dtype == torch.bfloat16
    assert inference.config._attn_implementation == CPU_DECODE_ATTENTION
    training = load_base_model(cfg, for_training=True)
    assert training.config._attn_implementation == "sdpa"
    fp32 = load_base_model(ModelConfig(base_model=str(tiny_model_dir), device="cpu", dtype="float32"))
    assert fp32.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_dtype_auto_on_cpu_is_bf16_for_inference_only_where_native(monkeypatch, fast_bf16):
    from core import models

    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: fast_bf16)
    cpu = torch.device("cpu")
    assert models.resolve_dtype("auto", cpu) == (torch.bfloat16 if fast_bf16 else torch.float32)
    assert models.resolve_dtype("auto", cpu, for_training=True) == torch.float32
    assert models.resolve_dtype("float32", cpu) == torch.float32


@pytest.mark.parametrize("dtype_setting, resolved, noted", [
    ("auto", "float32", True),     # a CPU without native bf16: the user is told why it is slow
    ("auto", "bfloat16", False),
    ("float32", "float32", False),  # asked for: nothing to explain
])
def test_open_engine_says_when_a_cpu_without_bf16_left_auto_at_fp32(monkeypatch, dtype_setting, resolved, noted):
    import mapreduce.engine as engine_module
    import mapreduce.pool as pool_module
    from core.config import load_config

    class FakePool:
        waiting_note = None

        def __init__(self, cfg):
            pass

        def __len__(self):
            return 1

        def wait_ready(self, timeout=None):
            return [{"pid": 1, "device": "cpu", "dtype": resolved, "threads": 1}]

        def close(self):
            pass

    monkeypatch.setattr(pool_module, "init_ray", lambda cfg: False)
    monkeypatch.setattr(engine_module, "WorkerPool", FakePool)
    lines = []
    cfg = load_config(None, {"dtype": dtype_setting, "device": "cpu"})
    with engine_module.open_engine(cfg, say=lines.append, chunker=object()):
        pass
    notes = [line for line in lines if line.startswith("note: this CPU has no native bf16")]
    assert len(notes) == int(noted), lines
