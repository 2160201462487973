"""The CUDA paths, checked with a tiny model on one GPU: one line per check, no network.

    bash bench/gpu_check.sh                 # or: python -m bench.gpu_check --tokenizer DIR
    bash bench/gpu_check.sh --dry-run       # any machine, no GPU, no model: parse what would run

Builds a 2-layer Qwen2 with the real Qwen 2.5 tokenizer (`--tokenizer`, default
../shared/tokenizers/qwen2.5, else shared/ inside the checkout) in a temp dir, then runs,
each in a few seconds:
  bf16-lora       LoRA training steps in bf16 through training.train (loss finite, adapter saved)
  qlora-4bit      the same with 4-bit bitsandbytes weights and paged_adamw_8bit
  generate        batched greedy generation on the GPU (core.generation)
  ray-half-gpu    two Ray actors at num_gpus_per_worker 0.5 share the GPU and both answer
  mapreduce-cli   python -m mapreduce.cli summarize on examples/long_story.txt, JSON out
Prints `PASS name detail` or `FAIL name reason` per check and exits non-zero if any failed.
A check that fails (an exception, or an argparse SystemExit) never stops the ones after it.

--dry-run builds every argv and config each check would use and puts it through the real
parsers and config loading (training.train's and mapreduce.cli's argparse, core.config,
training's setting checks, the prompts and chunks with the real tokenizer), with no model
and no GPU: `DRY name detail` per check, exit 0 when all of them parse.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARAM = REPO / "configs" / "param.yaml"
STORY = REPO / "examples" / "long_story.txt"
RESULTS: list[tuple[str, bool, str]] = []


@dataclass
class Context:
    model: Path  # the tiny model dir (not built in a dry run)
    work: Path
    data: Path  # 20 rows of the --data file
    tokenizer: str
    dry: bool


def _reason(exc: BaseException) -> str:
    """One line: the exception, and the last line of its traceback."""
    last = traceback.format_exc().strip().splitlines()[-1]
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text[:300]} ({last[:200]})"


def check(name: str):
    def wrap(fn):
        def run(ctx: Context) -> None:
            started = time.perf_counter()
            try:
                detail, ok = f"{fn(ctx)} [{time.perf_counter() - started:.1f}s]", True
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit (argparse) too: report it and go on to the next check
                detail, ok = _reason(exc), False
            RESULTS.append((name, ok, detail))
            print(("FAIL " if not ok else "DRY " if ctx.dry else "PASS ") + name + " " + detail, flush=True)
        return run
    return wrap


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parser.parse_args, with argparse's exit turned into a ValueError carrying its error line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit as exc:
        lines = err.getvalue().strip().splitlines()
        raise ValueError(f"{parser.prog}: " + (lines[-1] if lines else f"exit {exc.code}")) from None


def build_tiny_model(tokenizer_dir: str, path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


# --- training ------------------------------------------------------------------------------


def train_args(model: Path, out: Path, data: Path, *extra: str) -> list[str]:
    """training.train's argv; the ROUGE probe uses param.yaml's max_new_tokens (100 of max_length 256)."""
    return ["--config", str(PARAM), "--base-model", str(model), "--dataset", str(data),
            "--train-split", "train[:16]", "--eval-split", "train[16:20]", "--max-length", "256",
            "--max-steps", "4", "--eval-steps", "4", "--save-steps", "4",
            "--logging-steps", "1", "--warmup-steps", "0", "--per-device-train-batch-size", "4",
            "--gradient-accumulation-steps", "1", "--output-dir", str(out), *extra]


def train_config(argv: list[str], dry: bool):
    """The Config training.train would run with: its parser, core.config and its setting checks.

    A dry run builds the TrainingArguments too, on CPU (bf16 itself needs the GPU); a real run
    leaves that to training.train: accelerate's device state is made once per process.
    """
    import torch
    from transformers.training_args import OptimizerNames

    from core.flags import config_from_args
    from core.models import _quantization_config
    from training.train import build_parser, training_arguments

    cfg = config_from_args(parse(build_parser(), argv))  # the training checks run at load
    has_eval = bool(cfg.data.eval_split)
    OptimizerNames(cfg.training.optim)  # on CPU training_arguments swaps a bitsandbytes optimizer out
    _quantization_config(cfg.model, torch.bfloat16)
    if dry:
        training_arguments(cfg, False, torch.float32, has_eval)
    return cfg


def _trained(out: Path) -> str:
    log = json.loads((out / "train_log.json").read_text())
    losses = [e["loss"] for e in log if "loss" in e]
    assert losses and all(l == l and l < 100 for l in losses), f"bad losses {losses}"
    assert (out / "adapter_model.safetensors").exists(), "no adapter saved"
    return f"losses {losses[0]:.3f} -> {losses[-1]:.3f}"


def _train(ctx: Context, out: Path, *extra: str) -> str:
    from training.train import main

    argv = train_args(ctx.model, out, ctx.data, *extra)
    cfg = train_config(argv, ctx.dry)
    if ctx.dry:
        t = cfg.training
        return (f"training.train argv parsed: {t.max_steps} steps, optim {t.optim}, quantization "
                f"{cfg.model.quantization}, ROUGE probe on up to {t.rouge_eval_examples} rows of {cfg.data.eval_split} "
                f"x {cfg.generation.max_new_tokens} new tokens")
    code = main(argv)
    assert code == 0, f"training.train exited {code} (its error line is above)"
    return _trained(out)


@check("bf16-lora")
def bf16_lora(ctx: Context) -> str:
    return _train(ctx, ctx.work / "bf16", "--optim", "adamw_torch")


@check("qlora-4bit")
def qlora(ctx: Context) -> str:
    return _train(ctx, ctx.work / "qlora", "--quantization", "4bit", "--optim", "paged_adamw_8bit")


# --- inference -----------------------------------------------------------------------------


def _config(ctx: Context, **overrides):
    from core.config import load_config

    return load_config(PARAM, {"base_model": str(ctx.model), "max_new_tokens": 16, "max_length": 256, **overrides})


@check("generate")
def generate(ctx: Context) -> str:
    from core.generation import generate_summaries
    from core.prompt import build_prompt_ids

    cfg = _config(ctx)
    rows = [json.loads(line) for line in ctx.data.open()][:6]
    if ctx.dry:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ctx.tokenizer)
        prompts = [build_prompt_ids(tok, r["article"], cfg.prompt_budget) for r in rows]
        assert len(prompts) == 6 and max(map(len, prompts)) <= cfg.prompt_budget
        return f"config loaded; 6 prompts of <= {cfg.prompt_budget} tokens, {cfg.generation.max_new_tokens} new tokens"
    from core.models import load_for_inference

    net, tok = load_for_inference(cfg.model)
    device, dtype = next(net.parameters()).device, next(net.parameters()).dtype
    prompts = [build_prompt_ids(tok, r["article"], cfg.prompt_budget) for r in rows]
    outputs = generate_summaries(net, tok, prompts, cfg.generation, batch_size=3)
    assert device.type == "cuda" and len(outputs) == 6
    return f"{device} {dtype}, 6 prompts in batches of 3"


@check("ray-half-gpu")
def ray_half_gpu(ctx: Context) -> str:
    from mapreduce.pool import worker_resources

    cfg = _config(ctx, num_workers=2, num_gpus_per_worker=0.5)
    plan = worker_resources(cfg, {"GPU": 1.0, "CPU": 16.0})
    assert plan[:2] == (2, 0.5), plan
    if ctx.dry:
        return f"config loaded; on one GPU: {plan[0]} actors x {plan[1]:g} GPU x {plan[2]:g} CPU"
    import ray

    from mapreduce.pool import WorkerPool, init_ray

    started = init_ray(cfg)
    try:
        pool = WorkerPool(cfg)
        infos = pool.wait_ready(timeout=180)  # actors that never get their GPU share: an error, not a hang
        assert len(infos) == 2 and all("cuda" in i["device"] for i in infos), infos
        refs = [pool.submit(w, ["The council met on Monday to discuss the budget."], cfg.data.prompt_template)
                for w in range(2)]
        outputs = ray.get(refs)
        pool.close()
        return f"2 actors on {', '.join(i['device'] for i in infos)}; both answered ({len(outputs)})"
    finally:
        if started:
            ray.shutdown()


def cli_command(model: Path) -> list[str]:
    return [sys.executable, "-m", "mapreduce.cli", "summarize", "--config", str(PARAM),
            "--base-model", str(model), "--max-length", "512", "--max-new-tokens", "32", "--chunk-size", "400",
            "--chunk-overlap", "40", "--summary-words", "60", "--num-gpus-per-worker", "0.5", "--json", "--no-progress",
            str(STORY)]


@check("mapreduce-cli")
def mapreduce_cli(ctx: Context) -> str:
    cmd = cli_command(ctx.model)
    if ctx.dry:
        from transformers import AutoTokenizer

        from core.flags import config_from_args
        from mapreduce.chunking import Chunker
        from mapreduce.cli import build_parser, read_input

        args = parse(build_parser(), cmd[3:])
        cfg = config_from_args(args)
        chunks = Chunker.from_config(AutoTokenizer.from_pretrained(ctx.tokenizer), cfg)
        text = read_input(args.inputs[0])
        return (f"mapreduce.cli argv parsed: chunks of {chunks.chunk_size} tokens, summary_words "
                f"{cfg.mapreduce.summary_words}, {len(text)} characters in")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
    # a random tiny model may write an empty summary (a clean error); the run itself must work
    tree = json.loads(proc.stdout) if proc.stdout.strip() else None
    assert tree is not None or "empty summary" in proc.stderr, proc.stderr[-500:]
    if tree is None:
        return "ran; the random model's summary was empty (reported as an error, as designed)"
    return f"{tree['tokens']['chunks']} chunks, levels {[lv['name'] for lv in tree['tree']['levels']]}"


CHECKS = (bf16_lora, qlora, generate, ray_half_gpu, mapreduce_cli)


# --- the run -------------------------------------------------------------------------------


def _shared(*parts: str) -> str:
    """../shared/PARTS beside the checkout, else shared/PARTS inside it (a copy that carries shared/)."""
    beside, inside = REPO.parent.joinpath("shared", *parts), REPO.joinpath("shared", *parts)
    return str(inside if not beside.exists() and inside.exists() else beside)


def _inputs_missing(args) -> list[str]:
    return [f"{what} not found: {path}" for what, path in (("--tokenizer", args.tokenizer), ("--data", args.data))
            if not Path(path).exists()]


def _cuda_line(dry: bool) -> bool:
    import torch

    if torch.cuda.is_available():
        print(f"PASS cuda {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}", flush=True)
        return True
    print(f"{'DRY' if dry else 'FAIL'} cuda no CUDA device visible (torch {torch.__version__})", flush=True)
    return dry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default=_shared("tokenizers", "qwen2.5"))
    parser.add_argument("--data", default=_shared("data", "cnndm", "train.jsonl"))
    parser.add_argument("--dry-run", action="store_true",
                        help="parse every argv and config the checks would use; no model, no GPU")
    args = parser.parse_args(argv)
    RESULTS.clear()
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("RAY_AUTH_MODE", "disabled"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    missing = _inputs_missing(args)
    if missing:
        print("FAIL inputs " + "; ".join(missing), flush=True)
        return 1
    if not _cuda_line(args.dry_run):
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "rows.jsonl"
        with open(args.data) as src:
            data.write_text("".join(line for _, line in zip(range(20), src)))
        ctx = Context(work / "tiny", work, data, args.tokenizer, args.dry_run)
        if not ctx.dry:
            build_tiny_model(args.tokenizer, ctx.model)
        for run in CHECKS:
            run(ctx)
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} {'parsed' if args.dry_run else 'passed'}, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
