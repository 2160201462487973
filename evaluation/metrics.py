"""Evaluation metrics beyond ROUGE: BERTScore F1 and bootstrap intervals.

ROUGE, the sentence splitter and the word count live in core.rouge, so training's
validation probe and the reduce share them without importing this wing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# --- BERTScore ------------------------------------------------------------------------


def resolve_bertscore_encoder(value: str, num_layers: Optional[int]) -> tuple[str, int]:
    """(model_type for bert_score, layer): `embedded:NAME` and local dirs become paths.

    bert_score knows the best layer of hub encoders it lists (roberta-large: 17); for a
    local dir the layer defaults to the encoder's last one. A layer beyond the encoder's
    depth is a config error, said before any generation is spent.
    """
    from core.config import ConfigError
    from core.embedded import resolve_embedded

    model_type = resolve_embedded(value)
    config_file = Path(model_type).expanduser() / "config.json"
    if config_file.exists():
        model_type = str(config_file.parent)
        depth = json.loads(config_file.read_text()).get("num_hidden_layers")
        if num_layers is None:
            num_layers = depth
        if depth is not None and not 0 < num_layers <= depth:
            raise ConfigError(
                f"config key 'bertscore_num_layers' is {num_layers}, but encoder {value!r} has {depth} "
                f"layers (use 1..{depth}, or null for the last)"
            )
        return model_type, num_layers
    if Path(value).expanduser().exists() or value.startswith((".", "/", "~")):
        raise ConfigError(f"config key 'bertscore_model': {value} is not a model dir (no config.json)")
    if num_layers is None:
        from bert_score.utils import model2layers

        if value not in model2layers:
            raise ConfigError(f"config key 'bertscore_num_layers' must be set for encoder {value!r}")
        num_layers = model2layers[value]
    return model_type, num_layers


def bertscore_f1(
    predictions: Sequence[str],
    references: Sequence[str],
    model_type: str,
    num_layers: int,
    device: Optional[str] = None,
    batch_size: int = 32,
) -> list[float]:
    """BERTScore F1 per pair (no baseline rescaling, no idf): bert_score's defaults.

    An empty prediction scores 0 without reaching bert_score: its own empty-string path
    calls a tokenizer method that transformers 5 removed.
    """
    scored = [i for i, p in enumerate(predictions) if p.strip()]
    f1_all = [0.0] * len(predictions)
    if not scored:
        return f1_all
    from bert_score import score

    _, _, f1 = score(
        [predictions[i] for i in scored],
        [references[i] for i in scored],
        model_type=model_type,
        num_layers=num_layers,
        device=device,
        batch_size=batch_size,
        verbose=False,
    )
    for i, value in zip(scored, f1):
        f1_all[i] = float(value)
    return f1_all


# --- bootstrap ------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float], samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling examples with replacement).

    Pass per-example differences (a_i - b_i) to get the interval of a paired difference.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
