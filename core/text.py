"""Content words: what a summary must carry (names, numbers, events), without function words.

One home for the coverage metric (evaluation.coverage) and for the reduce, which checks that a
chunk's summary says what the chunk says (mapreduce.reduce).
"""

from __future__ import annotations

import re
from functools import lru_cache

# a small English function-word list: coverage should hinge on names, numbers and events
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    s t d ll m re ve""".split()
)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()  # the stemmer rouge_score uses


@lru_cache(maxsize=None)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


def content_words(text: str, stem: bool = True) -> list[str]:
    """Lowercased alphanumeric tokens without stopwords (stemmed): what a summary must carry."""
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]
    return [_stem(w) for w in words] if stem else words


def highlight_sentences(highlights: str) -> list[str]:
    """CNN/DM highlights (one per line, each ending " .") as prose sentences ("... ." -> "....")."""
    found = []
    for line in highlights.splitlines():
        line = re.sub(r"\s+([.!?])$", r"\1", line.strip())
        if line:
            found.append(line if line[-1] in ".!?\"'" else line + ".")
    return found


# an e-text's editorial apparatus, not its content: a summary that reports it misleads the reader
_EDITORIAL = re.compile(
    r"\[(?:Transcriber|Editor)(?:'|\u2019)?s? Note:[^\]]{0,2000}\]"
    r"|^Produced by [^\n]{0,300}?(?:Proofreading Team|Project Gutenberg)(?: at \S+)?", re.I | re.M)


def blank_editorial_notes(text: str) -> str:
    """The text with transcriber's notes and e-text credit lines ("Produced by ... Distributed
    Proofreading Team at ...") turned into spaces, so every character keeps its offset."""
    return _EDITORIAL.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)
