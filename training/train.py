"""Fine-tune a LoRA summarization adapter with the Hugging Face Trainer.

    python -m training.train --config configs/param.yaml                 # the GPU recipe
    python -m training.train --config configs/smollm2_cpu.yaml --max-steps 20
    torchrun --nproc-per-node 4 -m training.train --config configs/param.yaml   # several GPUs
    python -m training.train --config configs/param.yaml --resume         # continue a run

What it does, in order:
  1. checks the output dir is writable (before any slow work) and not silently reused;
  2. loads rows (hub or local JSONL), drops empty ones, tokenizes them with
     core.prompt.build_training_example (the same truncation the inference code uses);
  3. wraps the base model in a peft LoRA (only the adapter trains);
  4. trains with validation loss every eval_steps, checkpoints every save_steps, and keeps
     train_log.json + loss.png in output_dir up to date at every save and eval;
  5. saves the adapter (safetensors), the tokenizer and the resolved config.yaml.

Device: CUDA -> bf16 mixed precision (dtype auto); CPU -> fp32. bitsandbytes optimizers
(paged/8-bit) need CUDA, so on CPU they fall back to adamw_torch with one warning. Under
torchrun / accelerate launch every rank runs this same file; only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from core.config import Config, ConfigError, add_config_flags, config_from_args, save_config
from core.data import DataError, drop_empty, load_rows
from core.models import ModelError, load_base_model, load_tokenizer, resolve_device
from core.prompt import build_training_example, template_token_count

log = logging.getLogger("training.train")

TRAIN_LOG = "train_log.json"
LOSS_PLOT = "loss.png"
CONFIG_FILE = "config.yaml"
_CPU_FALLBACK_OPTIM = "adamw_torch"


class TrainError(RuntimeError):
    """A problem with the run itself (output dir, resume); one line for the user."""


# --- setup checks ----------------------------------------------------------------------


def check_output_dir(output_dir: Path, resume: bool) -> str | None:
    """Fail now, not after hours, if output_dir is unusable; return the checkpoint to resume.

    A dir that already holds checkpoints is only reused with --resume: starting afresh
    there would mix two runs and let checkpoint rotation delete the old run's files.
    """
    from transformers.trainer_utils import get_last_checkpoint

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test"):
            pass
    except OSError as exc:
        raise TrainError(f"output dir not writable: {output_dir} ({exc.strerror or exc})") from None
    last = get_last_checkpoint(str(output_dir))
    if resume and last is None:
        log.warning("--resume: no checkpoint-* dir in %s yet, starting from scratch", output_dir)
    if not resume and last is not None:
        raise TrainError(
            f"output dir {output_dir} already holds checkpoints of an earlier run "
            f"(latest {Path(last).name}): pass --resume to continue it, or choose another --output-dir"
        )
    return last if resume else None


def pick_optimizer(optim: str, on_cuda: bool) -> str:
    """bitsandbytes optimizers (paged_*, *8bit*) need CUDA; on CPU use adamw_torch."""
    needs_bnb = "paged" in optim or "8bit" in optim or "bnb" in optim
    if needs_bnb and not on_cuda:
        log.warning("optimizer %s needs CUDA (bitsandbytes); using %s on CPU", optim, _CPU_FALLBACK_OPTIM)
        return _CPU_FALLBACK_OPTIM
    return optim


# --- data ------------------------------------------------------------------------------


def tokenize_rows(rows, tokenizer, cfg: Config, what: str):
    """rows -> a Dataset of input_ids/labels via build_training_example; logs truncation."""
    d = cfg.data

    def encode(batch):
        out = {"input_ids": [], "labels": [], "article_dropped": [], "summary_dropped": []}
        for article, summary in zip(batch[d.article_field], batch[d.summary_field]):
            ex = build_training_example(tokenizer, article, summary, d.max_length, d.prompt_template)
            out["input_ids"].append(ex.input_ids)
            out["labels"].append(ex.labels)
            out["article_dropped"].append(ex.article_tokens_dropped)
            out["summary_dropped"].append(ex.summary_tokens_dropped)
        return out

    # A fingerprint from what determines the result, so every DDP rank finds rank 0's cache.
    key = f"{rows._fingerprint}|{tokenizer.name_or_path}|{len(tokenizer)}|{d.max_length}|{d.prompt_template}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    encoded = rows.map(
        encode, batched=True, remove_columns=rows.column_names,
        new_fingerprint=fingerprint, desc=f"tokenizing {what}",
    )
    article_cut = sum(1 for n in encoded["article_dropped"] if n > 0)
    summary_cut = sum(1 for n in encoded["summary_dropped"] if n > 0)
    log.info(
        "%s: %d examples; article truncated to fit max_length %d in %d (%.1f%%), summary cut in %d",
        what, len(encoded), d.max_length, article_cut, 100 * article_cut / max(1, len(encoded)), summary_cut,
    )
    return encoded.remove_columns(["article_dropped", "summary_dropped"])


def load_split(cfg: Config, source: str, split: str, tokenizer, what: str):
    d = cfg.data
    rows = load_rows(source, split, d.dataset_config)
    rows = drop_empty(rows, d.article_field, d.summary_field)
    if len(rows) == 0:
        raise DataError(f"{what} split {split!r} of {source} has no usable rows")
    return tokenize_rows(rows, tokenizer, cfg, what)


# --- model -----------------------------------------------------------------------------


def build_lora_model(model, cfg: Config):
    """Wrap a causal LM in a trainable peft LoRA adapter described by cfg.lora."""
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    peft_config = LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=list(lora.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:  # e.g. target modules not found in this architecture
        raise ConfigError(f"config key 'lora_target_modules': {str(exc).splitlines()[0]}") from None


# --- logs and plot ---------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_log_files(log_history: list[dict], output_dir: Path, title: str) -> None:
    """train_log.json (every Trainer log entry) and loss.png (train + validation loss)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _write_atomic(output_dir / TRAIN_LOG, json.dumps(log_history, indent=1).encode())
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), label="training loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (cross-entropy per summary token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _write_atomic(output_dir / LOSS_PLOT, buf.getvalue())


def _log_files_callback(output_dir: Path, title: str):
    from transformers import TrainerCallback

    class LogFilesCallback(TrainerCallback):
        """Rewrite train_log.json and loss.png at each save and eval (rank 0 only)."""

        def _write(self, state):
            if state.is_world_process_zero:
                write_log_files(state.log_history, output_dir, title)

        def on_save(self, args, state, control, **kwargs):
            self._write(state)

        def on_evaluate(self, args, state, control, **kwargs):
            self._write(state)

    return LogFilesCallback()


# --- the run ---------------------------------------------------------------------------


def training_arguments(cfg: Config, on_cuda: bool, dtype, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    t = cfg.training
    early = t.early_stopping_patience is not None
    try:
        return TrainingArguments(
            output_dir=t.output_dir,
            per_device_train_batch_size=t.per_device_train_batch_size,
            per_device_eval_batch_size=t.per_device_eval_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            learning_rate=t.learning_rate,
            lr_scheduler_type=t.lr_scheduler_type,
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            num_train_epochs=t.num_train_epochs,
            max_steps=t.max_steps,
            optim=pick_optimizer(t.optim, on_cuda),
            max_grad_norm=t.max_grad_norm,
            bf16=on_cuda and dtype == torch.bfloat16,
            fp16=on_cuda and dtype == torch.float16,
            use_cpu=not on_cuda,
            activation_checkpointing=t.gradient_checkpointing,
            logging_strategy="steps",
            logging_steps=t.logging_steps,
            logging_first_step=True,
            disable_tqdm=False,
            eval_strategy="steps" if has_eval else "no",
            eval_steps=t.eval_steps if has_eval else None,
            save_strategy="steps",
            save_steps=t.save_steps,
            save_total_limit=t.save_total_limit,
            load_best_model_at_end=early,
            metric_for_best_model="eval_loss" if early else None,
            greater_is_better=False if early else None,
            seed=t.seed,
            report_to=[],
            remove_unused_columns=False,  # the dataset holds exactly input_ids and labels
            label_names=["labels"],
            ddp_find_unused_parameters=False,  # every LoRA weight is used in each step
        )
    except ValueError as exc:  # bad optim / scheduler name, inconsistent steps
        raise ConfigError(f"invalid training settings: {str(exc).strip().splitlines()[0]}") from None


def _check_settings(cfg: Config, has_eval: bool) -> None:
    t = cfg.training
    if t.early_stopping_patience is not None:
        if not has_eval:
            raise ConfigError("config key 'early_stopping_patience' needs an eval_split (validation loss)")
        if t.save_steps % t.eval_steps:
            raise ConfigError(
                f"config key 'early_stopping_patience' needs save_steps ({t.save_steps}) "
                f"to be a multiple of eval_steps ({t.eval_steps})"
            )


def train(cfg: Config) -> int:
    from transformers import EarlyStoppingCallback, Trainer, set_seed

    from core.collator import SummaryCollator
    from core.models import resolve_dtype

    t, d = cfg.training, cfg.data
    output_dir = Path(t.output_dir)
    has_eval = bool(d.eval_split)
    _check_settings(cfg, has_eval)
    resume_from = check_output_dir(output_dir, t.resume)

    device = resolve_device(cfg.model.device)
    on_cuda = device.type == "cuda"
    dtype = resolve_dtype(cfg.model.dtype, device)
    args = training_arguments(cfg, on_cuda, dtype, has_eval)
    set_seed(t.seed)

    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    budget = template_token_count(tokenizer, d.prompt_template) + 2  # + one summary token + EOS
    if d.max_length < budget:
        raise ConfigError(f"config key 'max_length' ({d.max_length}) is below the prompt template ({budget} tokens)")
    # Rank 0 tokenizes first and caches; the other ranks then read its cache.
    with args.main_process_first(desc="load and tokenize data"):
        train_data = load_split(cfg, d.dataset, d.train_split, tokenizer, "train")
        eval_data = load_split(cfg, d.eval_dataset or d.dataset, d.eval_split, tokenizer, "eval") if has_eval else None

    # Each rank loads onto its own device (args.device is cuda:LOCAL_RANK under torchrun).
    model = load_base_model(cfg.model, args.device if on_cuda else device)
    model.config.use_cache = False  # no KV cache in training (and it conflicts with checkpointing)
    if cfg.model.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    model = build_lora_model(model, cfg)
    if args.process_index == 0:
        model.print_trainable_parameters()

    callbacks = [_log_files_callback(output_dir, f"LoRA fine-tuning of {cfg.model.base_model}")]
    if t.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=SummaryCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if resume_from:
        log.info("resuming from %s", resume_from)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except KeyboardInterrupt:
        if trainer.is_world_process_zero():
            write_log_files(trainer.state.log_history, output_dir, f"LoRA fine-tuning of {cfg.model.base_model}")
            print(f"interrupted: logs in {output_dir}; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130

    if trainer.is_world_process_zero():
        model.save_pretrained(str(output_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(output_dir))
        save_config(cfg, output_dir / CONFIG_FILE)
        write_log_files(trainer.state.log_history, output_dir, f"LoRA fine-tuning of {cfg.model.base_model}")
        evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
        log.info(
            "done: %d steps, adapter + tokenizer + %s + %s + %s saved in %s%s",
            trainer.state.global_step, CONFIG_FILE, TRAIN_LOG, LOSS_PLOT, output_dir,
            f" (last validation loss {evals[-1]:.4f})" if evals else "",
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=(
            "Fine-tune a LoRA summarization adapter on CNN/DailyMail-style data (article -> "
            "summary). Every config key is also a flag; a flag overrides the YAML value. "
            "Writes the adapter, tokenizer, config.yaml, train_log.json and loss.png to --output-dir."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_flags(parser, sections=("model", "lora", "data", "training"))
    return parser


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in ("training", "core"):
        logging.getLogger(name).setLevel(logging.INFO if rank == 0 else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        cfg = config_from_args(args)
        return train(cfg)
    except (ConfigError, DataError, ModelError, TrainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
