"""Shared fixtures: the real Qwen 2.5 tokenizer and tiny random models built on the spot."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
QWEN_TOKENIZER = SHARED / "tokenizers" / "qwen2.5"
CNNDM_TRAIN = SHARED / "data" / "cnndm" / "train.jsonl"
CNNDM_TEST = SHARED / "data" / "cnndm" / "test.jsonl"
LONGDOCS = SHARED / "data" / "longdocs" / "longdocs.jsonl"


@pytest.fixture(autouse=True)
def forget_sigterm():
    """A test that sent itself SIGTERM leaves it recorded (core.signals): the next test must not see it."""
    yield
    from core.signals import clear_interrupt

    clear_interrupt()


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))


def build_tiny_qwen(path: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 Qwen2 with the real Qwen tokenizer, saved as a model dir."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"))


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted by `python -m core.embedded fetch` (CI runs it)."""
    from core.embedded import embedded_model_dir as locate

    path = locate("smollm2")
    if not (path / "fetch_ok.json").exists():
        pytest.fail(f"embedded model missing at {path}: run `python -m core.embedded fetch` first")
    return path


def spread_weights(model, seed: int = 1):
    """Redraw a tiny model's matrices with a wide spread so greedy outputs depend on the prompt.

    At the default init (std 0.02) the 2-layer model emits one repeated token whatever the
    prompt, which cannot show that outputs come back in the right order.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                std = 0.5 if "embed" in name else 0.2
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model


def save_lora_adapter(model_dir: Path, out: Path, seed: int | None = None, **lora) -> Path:
    """A peft LoRA adapter for `model_dir`, saved (safetensors) to `out`; `lora`: LoraConfig's fields.

    With init_lora_weights=False its B matrices are random, not zero, so it changes outputs.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    get_peft_model(model, LoraConfig(**lora)).save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def lively_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Qwen2 with spread weights (prompt-dependent greedy outputs), saved as a model dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("lively_qwen")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    spread_weights(model).save_pretrained(str(path), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(path))
    return path
