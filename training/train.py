"""Fine-tune a LoRA summarization adapter with the Hugging Face Trainer.

    python -m training.train --config configs/param.yaml                 # the GPU recipe
    python -m training.train --config configs/smollm2_cpu.yaml --max-steps 20
    torchrun --nproc-per-node 4 -m training.train --config configs/param.yaml   # several GPUs
    python -m training.train --config configs/param.yaml --resume         # continue a run

What it does, in order:
  1. checks the output dir is writable (before any slow work) and not silently reused, and
     that a --resume keeps the run's plan and settings (a finished run says so and exits 0;
     training.resume);
  2. loads rows (hub or local JSONL), drops empty ones, tokenizes them with
     core.prompt.build_training_example (the same truncation the inference code uses);
  3. wraps the base model in a peft LoRA (only the adapter trains);
  4. trains with validation loss every eval_steps, checkpoints every save_steps, and keeps
     train_log.json + loss.png in output_dir up to date at every save and eval (training.logs);
  5. saves the adapter (safetensors), the tokenizer and the resolved config.yaml.

Device: CUDA -> bf16 mixed precision (dtype auto; fp16 on GPUs without bf16); CPU -> fp32.
bitsandbytes optimizers (paged/8-bit) need CUDA, so on CPU they fall back to adamw_torch with
one warning. Under torchrun / accelerate launch every rank runs this same file; only rank 0
writes files. One process on several visible GPUs is refused (the Trainer would silently use
DataParallel). SIGTERM (docker stop, timeouts) is handled like Ctrl-C: logs written, exit 130.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

from core.config import Config, ConfigError, save_config
from core.data import DataError, check_training_splits, drop_empty, load_rows, split_source
from core.errors import UserError, first_line
from core.fingerprint import resolved_runtime
from core.flags import add_config_flags, config_from_args
from core.models import load_base_model, load_tokenizer, name_adapter_base, resolve_device
from core.prompt import build_training_example, check_template_fits
from core.signals import sigterm_as_interrupt
from training.logs import LOSS_PLOT, TRAIN_LOG, _log_files_callback, write_log_files
from training.card import write_model_card
from training.resume import RunFinished, TrainError, _resume_plan_callback, check_output_dir, check_run_settings

log = logging.getLogger("training.train")

CONFIG_FILE = "config.yaml"
_CPU_FALLBACK_OPTIM = "adamw_torch"


# --- setup checks ----------------------------------------------------------------------


def check_single_process_gpus() -> None:
    """One process on several GPUs silently becomes nn.DataParallel: another batch and schedule."""
    import torch

    if "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ:  # torchrun / accelerate launch
        return
    n = torch.cuda.device_count()
    if n > 1:
        raise TrainError(
            f"{n} GPUs visible to one process: the Trainer would use DataParallel ({n}x the batch, "
            f"{n}x fewer steps); run `torchrun --nproc-per-node {n} -m training.train ...`, "
            "or set CUDA_VISIBLE_DEVICES=0 for one GPU"
        )


def pick_optimizer(optim: str, on_cuda: bool) -> str:
    """bitsandbytes optimizers (paged_*, *8bit*) need CUDA; on CPU use adamw_torch."""
    needs_bnb = "paged" in optim or "8bit" in optim or "bnb" in optim
    if needs_bnb and not on_cuda:
        log.warning("optimizer %s needs CUDA (bitsandbytes); using %s on CPU", optim, _CPU_FALLBACK_OPTIM)
        return _CPU_FALLBACK_OPTIM
    return optim


# --- data ------------------------------------------------------------------------------


def tokenize_rows(rows, tokenizer, cfg: Config, what: str):
    """rows -> a Dataset of input_ids/labels/length via build_training_example; logs truncation.

    `length` is what the length-grouped sampler reads; without it the Trainer makes a Python
    pass over every tokenized row at start-up (on every rank).
    """
    d = cfg.data

    def encode(batch):
        out = {"input_ids": [], "labels": [], "length": [], "article_dropped": [], "summary_dropped": []}
        articles = batch[d.article_field]
        templates = batch.get("prompt_template") or [d.prompt_template] * len(articles)  # merge rows carry their own
        for article, summary, template in zip(articles, batch[d.summary_field], templates):
            ex = build_training_example(tokenizer, article, summary, d.max_length, template)
            out["input_ids"].append(ex.input_ids)
            out["labels"].append(ex.labels)
            out["length"].append(len(ex.input_ids))
            out["article_dropped"].append(ex.article_tokens_dropped)
            out["summary_dropped"].append(ex.summary_tokens_dropped)
        return out

    # A fingerprint from what determines the result, so every DDP rank finds rank 0's cache.
    key = f"{rows._fingerprint}|{tokenizer.name_or_path}|{len(tokenizer)}|{d.max_length}|{d.prompt_template}|length"
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


def load_split(cfg: Config, what: str, tokenizer, merges: int = 0):
    """The tokenized train or eval rows (`what`), from the source core.data.split_source picks."""
    d = cfg.data
    source, split = split_source(d, what)
    rows = load_rows(source, split, d.dataset_config)
    rows = drop_empty(rows, d.article_field, d.summary_field)
    if len(rows) == 0:
        raise DataError(f"{what} split {split!r} of {source} has no usable rows")
    if merges:
        rows = with_merge_rows(rows, cfg, merges)
    return tokenize_rows(rows, tokenizer, cfg, what)


def with_merge_rows(rows, cfg: Config, count: int):
    """The news rows plus `count` merge-shaped rows built from their own summaries (shuffled in by the sampler)."""
    import datasets

    from core.data import merge_rows

    d = cfg.data
    made = merge_rows(list(rows[d.summary_field]), count, cfg.training.seed, cfg.mapreduce.merge_template)
    news = rows.select_columns([d.article_field, d.summary_field])
    news = news.add_column("prompt_template", [d.prompt_template] * len(news))
    merged = datasets.Dataset.from_list([{d.article_field: r["article"], d.summary_field: r["summary"],
                                          "prompt_template": r["prompt_template"]} for r in made])
    log.info("train: %d merge-shaped rows added to %d news rows", len(made), len(news))
    return datasets.concatenate_datasets([news, merged.cast(news.features)])


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
        raise ConfigError(f"config key 'lora_target_modules': {first_line(exc)}") from None


# --- the run ---------------------------------------------------------------------------


def training_arguments(cfg: Config, on_cuda: bool, dtype, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    t = cfg.training
    early = t.early_stopping_patience is not None
    by_rouge = has_eval and t.rouge_eval_examples > 0
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
            load_best_model_at_end=early or by_rouge,
            metric_for_best_model="eval_rougeL" if by_rouge else "eval_loss" if early else None,
            greater_is_better=True if by_rouge else False if early else None,
            train_sampling_strategy="group_by_length" if t.group_by_length else "random",
            length_column_name="length",  # tokenize_rows stores it: no pass over the rows to measure them
            seed=t.seed,
            report_to=[],
            remove_unused_columns=False,  # input_ids, labels and length; the collator takes the first two
            label_names=["labels"],
            ddp_find_unused_parameters=False,  # every LoRA weight is used in each step
        )
    except ValueError as exc:  # bad optim / scheduler name, inconsistent steps
        raise ConfigError(f"invalid training settings: {first_line(exc)}") from None


def build_rouge_probe(cfg: Config, tokenizer):
    """The first rouge_eval_examples validation rows as prompts + references (None: off)."""
    from core.prompt import build_prompt_ids
    from training.trainer import RougeProbe

    d, n = cfg.data, cfg.training.rouge_eval_examples
    if n <= 0 or not d.eval_split:
        return None
    rows = drop_empty(load_rows(*split_source(d, "eval"), d.dataset_config), d.article_field, d.summary_field)
    rows = rows.select(range(min(n, len(rows))))
    prompts = [build_prompt_ids(tokenizer, a, cfg.prompt_budget, d.prompt_template) for a in rows[d.article_field]]
    return RougeProbe(prompts, list(rows[d.summary_field]), tokenizer, cfg.generation)


def prepare_data(cfg: Config, args, tokenizer):
    """(train, eval or None, ROUGE probe or None); rank 0 tokenizes first, the others read its cache."""
    d = cfg.data
    check_template_fits(tokenizer, d.prompt_template, d.max_length, "config key 'max_length': a summary token and EOS",
                        room=2, budget_name="max_length")
    with args.main_process_first(desc="load and tokenize data"):
        train_data = load_split(cfg, "train", tokenizer, merges=d.merge_examples)
        if not d.eval_split:
            return train_data, None, None
        eval_data = load_split(cfg, "eval", tokenizer)
        return train_data, eval_data, build_rouge_probe(cfg, tokenizer)


def prepare_lora_model(cfg: Config, device):
    """The base model on `device` wrapped in a trainable LoRA (k-bit prepared if quantized)."""
    model = load_base_model(cfg.model, device, for_training=True)
    model.config.use_cache = False  # no KV cache in training (and it conflicts with checkpointing)
    if cfg.model.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.training.gradient_checkpointing)
    return build_lora_model(model, cfg)


def build_trainer(cfg: Config, args, model, tokenizer, data, resume_from: str | None, title: str):
    """The SummaryTrainer and its callbacks: log files, early stopping, the resume-plan check."""
    from transformers import EarlyStoppingCallback

    from core.collator import SummaryCollator
    from training.trainer import SummaryTrainer

    t = cfg.training
    train_data, eval_data, probe = data
    callbacks = [_log_files_callback(Path(t.output_dir), title)]
    if t.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    if resume_from:
        callbacks.append(_resume_plan_callback(Path(resume_from), t))
    return SummaryTrainer(
        rouge_probe=probe,
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=SummaryCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def save_outputs(trainer, model, tokenizer, cfg: Config, title: str) -> None:
    """After training, on rank 0: the adapter, tokenizer, config.yaml and the final log and plot."""
    output_dir = Path(cfg.training.output_dir)
    args = trainer.args
    model.save_pretrained(str(output_dir), safe_serialization=True)
    name_adapter_base(output_dir, cfg.model.base_model)
    tokenizer.save_pretrained(str(output_dir))
    save_config(cfg, output_dir / CONFIG_FILE)
    state = trainer.state
    end = {"step": state.global_step, "finished": True}  # a later --resume reads it (finished_step)
    if state.best_model_checkpoint:
        end.update({"best_checkpoint": Path(state.best_model_checkpoint).name,
                    "best_metric": args.metric_for_best_model, "best_value": state.best_metric})
    history = [*state.log_history, end]
    write_log_files(history, output_dir, title)
    write_model_card(cfg, history, output_dir)  # in place of peft's template README.md
    evals = [e["eval_loss"] for e in state.log_history if "eval_loss" in e]
    log.info(
        "done: %d steps, adapter + tokenizer + %s + %s + %s saved in %s%s%s",
        state.global_step, CONFIG_FILE, TRAIN_LOG, LOSS_PLOT, output_dir,
        f" (last validation loss {evals[-1]:.4f})" if evals else "",
        f"; kept {Path(state.best_model_checkpoint).name} ({args.metric_for_best_model} {state.best_metric:.4f})"
        if state.best_model_checkpoint else "",
    )


def train(cfg: Config) -> int:
    from transformers import set_seed

    from core.models import resolve_dtype

    t = cfg.training
    output_dir = Path(t.output_dir)
    has_eval = bool(cfg.data.eval_split)  # core.config checked what needs validation rows
    check_training_splits(cfg.data)  # of one local table: train[a:b] slices, validation apart from training
    resume_from = check_output_dir(output_dir, t)

    device = resolve_device(cfg.model.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        check_single_process_gpus()
    check_run_settings(output_dir, cfg, resolved_runtime(cfg.model, device, True), resuming=resume_from is not None)
    args = training_arguments(cfg, on_cuda, resolve_dtype(cfg.model.dtype, device, for_training=True), has_eval)
    set_seed(t.seed)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    data = prepare_data(cfg, args, tokenizer)
    # Each rank loads onto its own device (args.device is cuda:LOCAL_RANK under torchrun).
    model = prepare_lora_model(cfg, args.device if on_cuda else device)
    if args.process_index == 0:
        model.print_trainable_parameters()

    title = f"LoRA fine-tuning of {cfg.model.base_model}"
    trainer = build_trainer(cfg, args, model, tokenizer, data, resume_from, title)
    if resume_from:
        log.info("resuming from %s", resume_from)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except KeyboardInterrupt:
        if trainer.is_world_process_zero():
            write_log_files(trainer.state.log_history, output_dir, title)
            print(f"interrupted: logs in {output_dir}; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    if trainer.is_world_process_zero():
        save_outputs(trainer, model, tokenizer, cfg, title)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description=(
            "Fine-tune a LoRA summarization adapter on CNN/DailyMail-style data (article -> "
            "summary). Every config key is also a flag; a flag overrides the YAML value. "
            "Writes the adapter, tokenizer, config.yaml, train_log.json, loss.png and a README.md model card to --output-dir."
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
    sigterm_as_interrupt()  # docker stop / timeout: the same clean exit as Ctrl-C
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        cfg = config_from_args(args)
        return train(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RunFinished as done:
        if rank0:
            print(done, file=sys.stderr)
        return 0
    except KeyboardInterrupt:  # outside trainer.train (which says more): loading, saving
        if rank0:
            print("interrupted: rerun with --resume to continue from the last checkpoint, if any", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
