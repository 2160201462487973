"""README.md of a trained adapter: what it is and how it was made, from the run's own config and log.

peft's save_pretrained writes a template card ("[More Information Needed]" in every field);
a user opening an adapter dir should read the base model, the prompt, the data, the recipe
and the validation curve instead, and where the test-set figures come from.
"""

from __future__ import annotations

from pathlib import Path

from core.config import Config
from core.models import portable_base_name

CARD_FILE = "README.md"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", "\\n")


def recipe_rows(cfg: Config, steps: int) -> list[tuple[str, str]]:
    d, lora, t = cfg.data, cfg.lora, cfg.training
    data = ", ".join(f"`{p}`" for p in d.dataset) + f"; training rows `{d.train_split}`"
    if d.eval_split:
        data += f", validation rows `{d.eval_split}`"
    if d.merge_examples:
        data += f"; plus {d.merge_examples} merge-shaped rows built from the training highlights"
    rows_per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    return [
        ("base model", f"`{cfg.model.base_model}` (`adapter_config.json` names `{portable_base_name(cfg.model.base_model)}`)"),
        ("LoRA", f"r {lora.lora_r}, alpha {lora.lora_alpha}, dropout {lora.lora_dropout} on "
                 + ", ".join(lora.lora_target_modules)),
        ("prompt", f"`{_cell(d.prompt_template)}`"),
        ("data", data),
        ("sequence", f"prompt + summary + EOS cut to {d.max_length} tokens (the article cut from its end); "
                     "loss on the summary and EOS only"),
        ("schedule", f"{steps} steps x {rows_per_step} rows, {t.optim} lr {t.learning_rate:g} {t.lr_scheduler_type}, "
                     f"warmup {t.warmup_steps}, weight decay {t.weight_decay:g}"),
    ]


def validation_table(history: list[dict]) -> list[str]:
    evals = [e for e in history if "eval_loss" in e and "step" in e]
    if not evals:
        return ["No validation was run."]
    rows = [("validation loss", "eval_loss", "{:.3f}"), ("validation ROUGE-L", "eval_rougeL", "{:.4f}"),
            ("words per summary", "eval_gen_words", "{:.1f}")]
    lines = ["| step | " + " | ".join(str(e["step"]) for e in evals) + " |", "|---|" + "---|" * len(evals)]
    for label, key, fmt in rows:
        if all(key in e for e in evals):
            lines.append(f"| {label} | " + " | ".join(fmt.format(e[key]) for e in evals) + " |")
    return lines


def write_model_card(cfg: Config, history: list[dict], output_dir: Path) -> Path:
    """Replace peft's template README.md; `history` ends with the run's {"finished": True, ...} entry."""
    end = history[-1]
    steps = end["step"]
    kept = (f"{end['best_checkpoint']} ({end['best_metric']} {end['best_value']:.4f}), the best validation checkpoint"
            if end.get("best_checkpoint") else f"the weights after step {steps}")
    lines = [
        f"# {output_dir.name}: a LoRA summarization adapter for {cfg.model.base_model}",
        "",
        "Trained with this repository: `python -m training.train --config config.yaml` "
        "(`config.yaml` beside this file is the run's resolved config).",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in recipe_rows(cfg, steps)),
        f"| weights here | {kept} |",
        "",
        *validation_table(history),
        "",
        "`train_log.json` holds every log entry, `loss.png` the loss and ROUGE-L curves. Test-set figures: "
        f"`python -m evaluation.evaluate --config {output_dir}/config.yaml --adapter {output_dir} "
        "--systems lead3,base,adapter` (none recorded here).",
    ]
    path = output_dir / CARD_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
