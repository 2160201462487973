"""The Trainer the recipe uses: summary-only logits, and ROUGE-L at each evaluation.

Summary-only logits: the loss covers the summary tokens and EOS only, so the LM head (and
the softmax over the vocabulary) runs only at the positions that predict them. For a
512-token SmolLM2 example that is ~15% of the positions; for Qwen2.5 at 2,048 tokens it
also spares over 1 GB of fp32 logits per sequence.

ROUGE-L: validation loss says little about the summaries greedy decoding will write, so
each evaluation also summarizes a few validation articles with the shipped generation
settings and logs `eval_rougeL`, the metric used to keep the best checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Trainer

from core.prompt import IGNORE_INDEX

log = logging.getLogger("training.trainer")


def summary_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of positions whose logits predict a label, those labels in row-major order)."""
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE_INDEX
    return keep, targets[targets != IGNORE_INDEX]


def summary_loss(model, inputs: dict, num_items_in_batch=None):
    """Cross-entropy over the summary tokens, with the LM head run only where it is needed."""
    keep, targets = summary_positions(inputs["labels"])
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep)
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    total = F.cross_entropy(logits, targets, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if isinstance(count, torch.Tensor):
        count = count.to(total.device)
    return total / count, outputs


@dataclass
class RougeProbe:
    """Validation articles to summarize at each evaluation, with their references."""

    prompts: list[list[int]]
    references: list[str]
    tokenizer: object
    generation: object  # core.config.GenerationConfig


class SummaryTrainer(Trainer):
    def __init__(self, *args, rouge_probe: RougeProbe | None = None, summary_only_logits: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.rouge_probe = rouge_probe
        self.summary_only_logits = summary_only_logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.summary_only_logits:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Same normalization contract as Trainer.compute_loss: divided by the tokens of the
        # whole accumulated batch when the Trainer counted them, else a per-batch mean.
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None
        loss, outputs = summary_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        # here, not in evaluate(): the scores join eval_loss in the one log entry and in the
        # metrics that best-checkpoint selection and early stopping read
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.rouge_probe is not None:
            output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self.rouge_scores().items()})
        return output

    def rouge_scores(self) -> dict[str, float]:
        from core.generation import generate_summaries
        from core.rouge import rouge_scores, word_count

        probe = self.rouge_probe
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            outputs = generate_summaries(model, probe.tokenizer, probe.prompts, probe.generation)
        finally:
            model.train(was_training)
        per_example = [rouge_scores(o, r) for o, r in zip(outputs, probe.references)]
        n = max(1, len(per_example))
        result = {k: sum(s[k] for s in per_example) / n for k in ("rouge1", "rouge2", "rougeL")}
        result["gen_words"] = sum(word_count(o) for o in outputs) / n
        log.info("validation ROUGE on %d articles: %s", len(outputs), ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result
