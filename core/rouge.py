"""ROUGE, sentence splitting and word counts: one home for training, evaluation and the reduce.

ROUGE uses Google's `rouge_score` with the Porter stemmer, the scorer every CNN/DM paper
reports. ROUGE-L is the LCS over the whole text; ROUGE-Lsum is the summary-level LCS
over sentences, one sentence per line on both sides: CNN/DM highlights are already one
per line, generated text is split into sentences first (`split_sentences`).

Sentence splitting uses nltk's punkt model when its data (`punkt_tab`) is installed
locally, otherwise a regex splitter that knows common abbreviations; nothing is
downloaded at run time and `sentence_splitter_name()` names the one in use so reports
(and resume hashes) can say which.

    split_sentences(text)            the one sentence splitter (public: the reduce may use it)
    word_count(text)                 the one word count: whitespace-separated tokens
    rouge_scores(prediction, ref)    F1 of ROUGE-1/2/L/Lsum (evaluate, the training probe)
    rouge_recall_f1(summary, ref)    recall and F1 of ROUGE-1/2/L (long documents)
"""

from __future__ import annotations

import re
from functools import lru_cache

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")  # rouge_recall_f1's: no Lsum, the summary is not split

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
    """"nltk punkt" or "regex": outputs made with one splitter are not reused with the other."""
    return "nltk punkt" if _punkt() is not None else "regex"


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, stripped, none empty; existing line breaks are always sentence breaks.

    The one splitter of the project (LEAD-3, lead-k, ROUGE-Lsum), so every place that
    cuts text into sentences agrees on where one ends.
    """
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
    """Whitespace-separated words: the one length unit of reports, lead-k budgets and the reduce."""
    return len(text.split())


# --- ROUGE ----------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _rouge_scorer(keys: tuple[str, ...]):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(keys), use_stemmer=True)


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """F-measures of one summary against one reference (newline-separated sentences).

    The reference keeps its own lines (CNN/DM: one highlight per line); the prediction
    is split into sentences, which only matters for ROUGE-Lsum.
    """
    scores = _rouge_scorer(ROUGE_KEYS).score(reference.strip(), one_sentence_per_line(prediction))
    return {key: scores[key].fmeasure for key in ROUGE_KEYS}


def rouge_recall_f1(summary: str, reference: str) -> dict[str, float]:
    """`{type}_recall` and `{type}_f1` of ROUGE-1/2/L: long-document references are long, so recall matters."""
    scores = _rouge_scorer(ROUGE_TYPES).score(reference.strip(), summary)
    return {**{f"{r}_recall": scores[r].recall for r in ROUGE_TYPES},
            **{f"{r}_f1": scores[r].fmeasure for r in ROUGE_TYPES}}
