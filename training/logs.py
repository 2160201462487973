"""train_log.json and loss.png in a training run's output dir, rewritten at each save and eval."""

from __future__ import annotations

import json
import os
from pathlib import Path

TRAIN_LOG = "train_log.json"
LOSS_PLOT = "loss.png"


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

    def series(key):
        return [(e["step"], e[key]) for e in log_history if key in e and "step" in e]

    train, evals, rouge = series("loss"), series("eval_loss"), series("eval_rougeL")
    fig, axes = plt.subplots(1, 2 if rouge else 1, figsize=(12 if rouge else 7, 4.5), squeeze=False)
    ax = axes[0][0]
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
    if rouge:
        ax = axes[0][1]
        ax.plot(*zip(*rouge), "o-", color="tab:green", label="validation ROUGE-L (greedy summaries)")
        best = max(rouge, key=lambda p: p[1])
        ax.plot(*best, "*", color="tab:red", markersize=14, label=f"best: step {best[0]}, {best[1]:.4f}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("ROUGE-L F1")
        ax.set_title("validation ROUGE-L (the checkpoint kept is the best)")
        ax.grid(alpha=0.3)
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
