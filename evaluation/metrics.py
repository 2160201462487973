"""Summary metrics: ROUGE-1/2/L/Lsum, BERTScore F1, lengths and bootstrap intervals.

ROUGE uses Google's `rouge_score` with the Porter stemmer, the scorer every CNN/DM paper
reports. ROUGE-L is the LCS over the whole text; ROUGE-Lsum is the summary-level LCS
over sentences, one sentence per line on both sides: CNN/DM highlights are already one
per line, generated text is split into sentences first (`split_sentences`).

Sentence splitting uses nltk's punkt model when its data (`punkt_tab`) is installed
locally, otherwise a regex splitter; nothing is downloaded at run time and
`SENTENCE_SPLITTER` names the one in use so reports can say which.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# --- sentences ------------------------------------------------------------------------

# Words that end in a period without ending the sentence ("Mr. Smith", "U.S. officials").
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "rev", "gen", "gov", "sen", "rep",
    "col", "lt", "sgt", "capt", "cmdr", "adm", "maj", "mt", "ft", "no", "vs", "etc", "inc",
    "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "u.s", "u.k", "u.n", "e.g", "i.e", "a.m", "p.m", "d.c",
}
# A candidate boundary: . ! or ? (plus closing quotes/brackets), whitespace, then
# something that can start a sentence (capital, digit, opening quote or bracket).
_BOUNDARY = re.compile(r"([.!?][\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_LAST_WORD = re.compile(r"(\S+)$")


def _regex_split(text: str) -> list[str]:
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        end = match.end(1)
        last = _LAST_WORD.search(text[start:end])
        word = last.group(1).rstrip(".!?\"'\u201d\u2019)]").lower() if last else ""
        # "Mr." / "U.S." / a single initial ("John F. Kennedy") do not end a sentence
        if match.group(1).startswith(".") and (word in _ABBREVIATIONS or re.fullmatch(r"[a-z]", word)):
            continue
        sentences.append(text[start:end].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


@lru_cache(maxsize=1)
def _punkt():
    """nltk's English punkt tokenizer if its data is on disk, else None (never downloads)."""
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab/english/")
        from nltk.tokenize import PunktTokenizer

        return PunktTokenizer("english")
    except Exception:  # nltk missing, or its data not installed
        return None


def sentence_splitter_name() -> str:
    return "nltk punkt" if _punkt() is not None else "regex"


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`; existing line breaks are always sentence breaks."""
    punkt = _punkt()
    sentences: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            sentences.extend(punkt.tokenize(line) if punkt is not None else _regex_split(line))
    return sentences


def one_sentence_per_line(text: str) -> str:
    return "\n".join(split_sentences(text))


def word_count(text: str) -> int:
    return len(text.split())


# --- ROUGE ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """F-measures of one summary against one reference (newline-separated sentences).

    The reference keeps its own lines (CNN/DM: one highlight per line); the prediction
    is split into sentences, which only matters for ROUGE-Lsum.
    """
    scores = _rouge_scorer().score(reference.strip(), one_sentence_per_line(prediction))
    return {key: scores[key].fmeasure for key in ROUGE_KEYS}


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
