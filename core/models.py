"""Load the base model, tokenizer and adapter.

Base models come from a hub id, a local dir, a .gguf file, or `embedded:smollm2` (fetched
once into the cache by core.embedded). Device and dtype are picked automatically (CUDA:
bf16, or fp16 on GPUs without bf16; CPU: fp32 for training, and for inference bf16 where the
CPU has native bf16 dot products, else fp32) unless the config says otherwise.

Fetching the embedded models is `python -m core.embedded fetch`; `python -m core.models fetch`
still works as an alias (older scripts and the config comments use it).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import ModelConfig
from core.embedded import EMBEDDED_HUB_IDS, EMBEDDED_PREFIX, resolve_embedded
from core.errors import ModelError, first_line

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

    from core.config import Config

log = logging.getLogger(__name__)


def resolve_model_path(base_model: str) -> tuple[str, str | None]:
    """(from_pretrained path or hub id, gguf file name or None)."""
    if base_model.startswith(EMBEDDED_PREFIX):
        return resolve_embedded(base_model), None
    path = Path(base_model).expanduser()
    if base_model.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is not a model dir (no config.json)")
        return str(path), None
    if base_model.startswith((".", "/", "~")):
        raise ModelError(f"base model dir not found: {path}")
    return base_model, None


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device, for_training: bool = False) -> "torch.dtype":
    """auto: bf16 on CUDA (fp16 overflows on Qwen2.5); on a CPU fp32, except bf16 for inference
    where the CPU has native bf16 (AVX512-BF16 or AMX: ~2x the prefill rate, ROUGE unchanged,
    README "Throughput"). CPU training stays fp32."""
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return _auto_cuda_dtype()
        return torch.bfloat16 if not for_training and cpu_has_fast_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@functools.cache
def _auto_cuda_dtype() -> "torch.dtype":
    """bf16 where the GPU has it natively; older GPUs (V100, T4) only emulate it (slow, or fail): fp16."""
    import torch

    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    log.warning("dtype auto: this GPU has no bfloat16 support, using float16 (--dtype float32 if outputs overflow)")
    return torch.float16


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Native bf16 dot products; without them torch emulates bf16 on a CPU, slower than fp32."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def fp32_cpu_note(dtype_setting: str, runtime: dict) -> str | None:
    """One line for a user whose CPU left `dtype: auto` at fp32: why the run is slow and what helps."""
    if dtype_setting != "auto" or runtime.get("device") != "cpu" or runtime.get("dtype") != "float32":
        return None
    return ("note: this CPU has no native bf16 (AVX512-BF16 or AMX), so the model runs in float32, "
            "3-4x slower than on one that has it (make demo: 12 min on an AVX2-only EPYC, 3 min with AVX512-BF16)")


def _hub_error(what: str, target: str, exc: Exception) -> ModelError:
    return ModelError(
        f"cannot load {what} {target!r}: {first_line(exc)} "
        "(not a local dir, and not downloadable here: offline? use a local path or embedded:smollm2)"
    )


def load_tokenizer(cfg: ModelConfig, padding_side: str = "right"):
    from transformers import AutoTokenizer

    source = cfg.adapter if cfg.adapter and _has_tokenizer(cfg.adapter) else None
    path, gguf = resolve_model_path(cfg.base_model)
    try:
        if source:
            tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        else:
            tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:
        raise _hub_error("tokenizer", source or cfg.base_model, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _has_tokenizer(path: str) -> bool:
    p = Path(path)
    return (p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists()


def _quantization_config(cfg: ModelConfig, dtype):
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base_model(cfg: ModelConfig, device=None, for_training: bool = False):
    """The base causal LM on its device, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, for_training)
    if device.type == "cpu" and cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    quant = _quantization_config(cfg, dtype)
    if quant is not None and device.type != "cuda":
        raise ModelError(f"quantization '{cfg.quantization}' needs a CUDA GPU (bitsandbytes)")
    path, gguf = resolve_model_path(cfg.base_model)
    kwargs = dict(dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        kwargs["use_safetensors"] = True
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise _hub_error("base model", cfg.base_model, exc) from None
    if quant is None:
        model.to(device)
    feed_lm_head_contiguous(model)  # training's ROUGE probe generates too
    if device.type == "cpu" and dtype == torch.bfloat16 and not for_training:
        from core.attention import use_cpu_decode_attention

        use_cpu_decode_attention(model)
    model.eval()
    return model


def feed_lm_head_contiguous(model) -> None:
    """Give the output layer a contiguous input at generation's prefill.

    The prefill keeps only the last position's logits (`hidden[:, -1:, :]`, a strided view);
    torch's linear on that view runs a bmm over the weight expanded once per row: at 16 rows
    of SmolLM2 a 0.9 GB bf16 copy and ~2.6 s of a ~13 s map batch on one CPU thread (README
    "Throughput"). A contiguous copy of the 16 hidden rows costs nothing. In training every
    position is kept, the input is already contiguous, and the hook does nothing.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:]) if args and hasattr(args[0], "contiguous") else args


def check_adapter_dir(adapter_dir: str) -> Path:
    """The adapter dir, expanded; ModelError unless it holds peft's adapter_config.json.

    Callers run it before slow work (Ray, generation), not only when the adapter loads.
    """
    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").exists():
        hint = ""
        if os.environ.get("RAY_JOB_ID") and not path.is_absolute():
            hint = (" (under `ray job submit --working-dir`, git-ignored dirs such as outputs/ are not uploaded: "
                    "keep the adapter under adapters/ or pass an absolute path on shared storage)")
        raise ModelError(f"adapter dir not found or has no adapter_config.json: {adapter_dir}{hint}")
    return path


def merges_adapter(cfg: ModelConfig) -> bool:
    """Merge the adapter into the weights for inference, unless they are 4/8-bit (merging re-rounds them)
    or map calls must run without it (a merged adapter cannot be switched off)."""
    return cfg.merge_adapter and cfg.quantization == "none" and cfg.map_adapter


def adapter_used(cfg: "Config", template: str) -> bool:
    """False for a map-prompt call when `map_adapter` is off: the map stays zero-shot, merges use the adapter."""
    return cfg.model.map_adapter or template != cfg.data.prompt_template


def attach_adapter(model, adapter_dir: str, merge: bool = True, trainable: bool = False):
    """Base + peft LoRA adapter; merged into plain weights for inference when `merge`."""
    from peft import PeftModel

    path = check_adapter_dir(adapter_dir)
    model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return model


def portable_base_name(base_model: str) -> str:
    """What an adapter should name as its base: the hub id, not a path on this machine."""
    if base_model.startswith(EMBEDDED_PREFIX):
        return EMBEDDED_HUB_IDS.get(base_model[len(EMBEDDED_PREFIX):], base_model)
    return base_model


def name_adapter_base(adapter_dir: str | Path, base_model: str) -> None:
    """Rewrite adapter_config.json's base_model_name_or_path so PeftModel.from_pretrained works elsewhere."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = portable_base_name(base_model)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_adapter_fits(cfg: ModelConfig) -> None:
    """One line now, not a worker traceback later, for an adapter that cannot attach to the base.

    Checks adapter_config.json (r, lora_alpha, peft_type, and that peft reads it), builds
    the base on the meta device (no weights), then checks that its target_modules name
    modules of the base and that every LoRA tensor in adapter_model.safetensors names a
    module of it with matching in/out features.
    """
    path = check_adapter_dir(cfg.adapter)
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        raise ModelError(f"adapter dir {path} has no adapter_model.safetensors (only safetensors adapters load)")
    config = read_adapter_config(path)
    modules = _meta_modules(cfg)
    check_target_modules(path, config, modules, cfg.base_model)
    _check_adapter_weights(path, weights, modules, cfg.base_model)


def read_adapter_config(path: Path) -> dict:
    """adapter_config.json with its LoRA fields checked; ModelError naming the dir and the field."""
    where = f"adapter {path}: adapter_config.json"
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{where} is not valid JSON ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where} is not valid JSON for an adapter (not an object)")

    def bad(key: str, want: str) -> ModelError:
        return ModelError(f"{where}: field '{key}' must be {want}, got {config.get(key)!r}")

    if config.get("peft_type", "LORA") != "LORA":
        raise bad("peft_type", "LORA (only LoRA adapters load)")
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise bad("r", "a positive integer (the LoRA rank)")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha != alpha:
        raise bad("lora_alpha", "a number")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
            or (targets is None and config.get("target_parameters"))):
        raise bad("target_modules", "a list of module names or a regex")
    try:
        from peft import LoraConfig

        LoraConfig.from_peft_type(**config)
    except Exception as exc:
        raise ModelError(f"{where}: peft cannot read it: {first_line(exc)}") from None
    return config


def _meta_modules(cfg: ModelConfig) -> dict:
    """The base model's modules by name, built on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source, gguf = resolve_model_path(cfg.base_model)
    try:
        config = AutoConfig.from_pretrained(source, gguf_file=gguf, trust_remote_code=cfg.trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:
        raise ModelError(f"base model {cfg.base_model!r} is not a causal LM this adapter can attach to: "
                         f"{first_line(exc)}") from None
    return dict(model.named_modules())


def check_target_modules(path: Path, config: dict, modules: dict, base_model: str) -> None:
    """Every target_modules entry names a module of the base (a regex: matches one), as peft matches them."""
    import re

    targets, names = config.get("target_modules"), [n for n in modules if n]
    where = f"adapter {path}: adapter_config.json: field 'target_modules'"
    if targets is None or targets == "all-linear":
        return
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise ModelError(f"{where} is not a valid regex ({exc}): {targets!r}") from None
        if not any(pattern.fullmatch(n) for n in names):
            raise ModelError(f"{where}: the regex {targets!r} matches no module of base model {base_model}")
        return
    missing = sorted(t for t in set(targets) if not any(n == t or n.endswith("." + t) for n in names))
    if missing or not targets:
        raise ModelError(f"{where} names {missing or 'no modules'}: not modules of base model {base_model} "
                         "(a typo, or an adapter for another model?)")


def _check_adapter_weights(path: Path, weights: Path, modules: dict, base_model: str) -> None:
    """Every LoRA tensor names a module of the base, with its in/out features."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as tensors:
        for key in tensors.keys():
            name, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
            if not name:
                continue
            module, shape = modules.get(name), tensors.get_slice(key).get_shape()
            if module is None:
                raise ModelError(f"adapter {path} does not fit base model {base_model}: it has no module {name}")
            want = getattr(module, "in_features", None) if kind.startswith("A") else getattr(module, "out_features", None)
            have = shape[1] if kind.startswith("A") else shape[0]
            if want is not None and have != want:
                raise ModelError(f"adapter {path} does not fit base model {base_model}: {name} has "
                                 f"{want} features, the adapter {have} (an adapter for another model?)")


def load_for_inference(cfg: ModelConfig, with_adapter: bool = True, device=None):
    """(model, tokenizer) ready for generation: adapter attached (merged) if configured."""
    tokenizer = load_tokenizer(cfg, padding_side="left")
    model = load_base_model(cfg, device)
    if with_adapter and cfg.adapter:
        model = attach_adapter(model, cfg.adapter, merge=merges_adapter(cfg))
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    """Alias of `python -m core.embedded fetch` (core.embedded's CLI), kept for older scripts and the configs."""
    from core.embedded import main as embedded_main

    return embedded_main(argv, prog="python -m core.models")


if __name__ == "__main__":
    sys.exit(main())
