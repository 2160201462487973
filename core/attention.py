"""Attention for bf16 generation on a CPU: sdpa for prompts, plain matmuls for new tokens.

On a CPU, torch's sdpa kernel is fast for a prompt but slow for one new token in bf16
(a decode step at 16 rows: ~170 ms with sdpa vs ~70 ms this way, SmolLM2-135M, README
"Throughput"). For a single query token this runs each key/value head's query group as one
matmul (no repeat_kv copy of the cache), with the softmax in fp32. Everything else, and
training, goes to transformers' own sdpa. Imported only by core.models when a model is
loaded, so torch at the top costs no start-up; the function itself runs per layer per token.
"""

from __future__ import annotations

import functools

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

CPU_DECODE_ATTENTION = "cpu_decode_gqa"


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    plain = kwargs.get("softcap") is None and kwargs.get("s_aux") is None and not kwargs.get("output_attentions")
    if query.shape[2] != 1 or module.training or not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)).float() * (scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(weights, value).reshape(batch, heads, 1, dim)
    return output.transpose(1, 2).contiguous(), None


@functools.cache
def register() -> str:
    """Make CPU_DECODE_ATTENTION a name `set_attn_implementation` accepts (sdpa's masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(CPU_DECODE_ATTENTION, sdpa_mask)
    return CPU_DECODE_ATTENTION


def use_cpu_decode_attention(model) -> bool:
    """Switch a loaded model to it; False (model untouched) if the model cannot take it."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    try:
        model.set_attn_implementation(register())
    except (ValueError, AttributeError, TypeError):
        return False
    return True
