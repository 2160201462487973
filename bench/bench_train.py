"""Training throughput: the plain Trainer path against this project's, side by side.

    python -m bench.bench_train --config configs/smollm2_cpu.yaml --steps 6

Same model, data, LoRA, max_length and batch size; only the two levers differ:
  plain    transformers.Trainer, random batches, logits and loss over every position;
  project  training.trainer.SummaryTrainer: length-grouped batches, the LM head and loss
           only on the summary positions.
Each path runs `--rounds` times, alternating, after one warm-up step; the best round counts
(least disturbed by other jobs). It prints real (non-pad) train tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time


def run_path(cfg, project: bool, steps: int, seed: int) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback

    from core.collator import SummaryCollator
    from core.models import load_tokenizer, resolve_device
    from training.train import prepare_data, prepare_lora_model, training_arguments
    from training.trainer import SummaryTrainer

    cfg.training.group_by_length = project
    cfg.training.max_steps = steps + 1  # + the warm-up step
    cfg.training.seed = seed
    device = resolve_device(cfg.model.device)
    args = training_arguments(cfg, device.type == "cuda", torch.float32, has_eval=False)
    args.save_strategy = "no"
    args.disable_tqdm = True
    args.logging_steps = 1000
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    cfg.data.eval_split = None
    train_data, _, _ = prepare_data(cfg, args, tokenizer)
    torch.manual_seed(seed)
    model = prepare_lora_model(cfg, device)

    collate = SummaryCollator(tokenizer.pad_token_id)
    seen = {"real": 0, "padded": 0}

    def counting_collator(features):
        batch = collate(features)
        seen["real"] += int(batch["attention_mask"].sum())
        seen["padded"] += batch["attention_mask"].numel()
        return batch

    clock = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:  # the warm-up step is not counted
                clock["start"], clock["real0"], clock["padded0"] = time.perf_counter(), seen["real"], seen["padded"]

    kwargs = dict(model=model, args=args, train_dataset=train_data, data_collator=counting_collator, callbacks=[Clock()])
    trainer = SummaryTrainer(summary_only_logits=True, **kwargs) if project else Trainer(**kwargs)
    trainer.train()
    seconds = time.perf_counter() - clock["start"]
    # the collator runs one batch ahead of the step; both paths are counted the same way
    real, padded = seen["real"] - clock["real0"], seen["padded"] - clock["padded0"]
    return {"seconds": seconds, "tokens_per_s": real / seconds, "padding": 1 - real / max(1, padded)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/smollm2_cpu.yaml")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (default: the config's, else all)")
    args = parser.parse_args(argv)

    import torch

    from core.config import load_config
    from core.errors import UserError

    try:
        cfg = load_config(args.config)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    threads = args.num_threads or cfg.model.num_threads
    if threads:
        torch.set_num_threads(threads)
    print(
        f"model {cfg.model.base_model}, max_length {cfg.data.max_length}, batch "
        f"{cfg.training.per_device_train_batch_size}, {args.steps} steps x {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads"
    )
    best: dict[str, dict] = {}
    try:
        for round_ in range(args.rounds):
            for name, project in (("plain", False), ("project", True)):
                result = run_path(load_config(args.config), project, args.steps, seed=round_)
                print(f"round {round_ + 1} {name:8s} {result['tokens_per_s']:7.1f} train tokens/s "
                      f"({result['seconds']:.1f} s, padding {result['padding']:.1%})", flush=True)
                if name not in best or result["tokens_per_s"] > best[name]["tokens_per_s"]:
                    best[name] = result
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ratio = best["project"]["tokens_per_s"] / best["plain"]["tokens_per_s"]
    print(f"best: plain {best['plain']['tokens_per_s']:.1f} tokens/s, project "
          f"{best['project']['tokens_per_s']:.1f} tokens/s -> {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
