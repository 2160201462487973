"""No-model measures and baselines for long documents: article coverage, lead-k, paragraph leads.

Coverage asks whether a summary of joined articles still carries each article (the last
ones too). Both baselines have the map-reduce summary's length: lead-k reads the opening;
paragraph leads take the first sentence of paragraphs spread over the whole document, the
structure a chunked map-reduce exploits (a blank line opens a new chunk).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Iterable, Optional

from core.rouge import split_sentences, word_count
from core.text import content_words

if TYPE_CHECKING:
    from evaluation.longdocs_data import LongDoc

POSITIONS = ("first", "middle", "last")

# --- coverage -------------------------------------------------------------------------


def content_recall(reference: str, summary: str) -> Optional[float]:
    """ROUGE-1 recall on content words (clipped counts); None when the reference has none."""
    ref = Counter(content_words(reference))
    total = sum(ref.values())
    if not total:
        return None
    got = Counter(content_words(summary))
    return sum(min(n, got[w]) for w, n in ref.items()) / total


def position(index: int, count: int) -> str:
    """first / middle / last; a lone article counts as first."""
    if index == 0:
        return "first"
    return "last" if index == count - 1 else "middle"


def article_coverage(doc: LongDoc, summary: str, threshold: float) -> list[dict]:
    rows = []
    for i, art in enumerate(doc.articles):
        recall = content_recall(art.highlights, summary)
        rows.append({"article": art.id, "position": position(i, len(doc.articles)), "recall": recall,
                     "covered": None if recall is None else recall >= threshold})
    return rows


def aggregate_coverage(rows: Iterable[dict]) -> dict:
    """Share of articles covered, overall and by position ({covered, total} counts too)."""
    counts = {k: [0, 0] for k in ("all", *POSITIONS)}
    for row in rows:
        if row["covered"] is None:
            continue
        for key in ("all", row["position"]):
            counts[key][0] += bool(row["covered"])
            counts[key][1] += 1
    share = {k: (c / n if n else float("nan")) for k, (c, n) in counts.items()}
    return {"covered": share["all"], **{p: share[p] for p in POSITIONS},
            "counts": {k: {"covered": c, "total": n} for k, (c, n) in counts.items()}}


# --- lead-k ---------------------------------------------------------------------------


def lead_k(text: str, words: int) -> str:
    """The opening sentences, the last one cut, to exactly `words` words (or the whole text)."""
    out: list[str] = []
    left = words
    for sentence in split_sentences(text):
        if left <= 0:
            break
        kept = sentence.split()[:left]
        out.append(" ".join(kept))
        left -= len(kept)
    return " ".join(out)


def paragraphs(text: str) -> list[str]:
    """Blank-line paragraphs; a text with fewer than two (a transcript) is cut at each line."""
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    if len(blocks) < 2:
        blocks = [line.strip() for line in text.splitlines() if line.strip()]
    return blocks


def paragraph_leads(text: str, words: int) -> str:
    """First sentences of paragraphs spread evenly over the document, in order, to exactly `words` words.

    While every paragraph's lead fits, all of them, then second sentences round-robin; else
    the leads of evenly spaced paragraphs, as many as the words allow.
    """
    parts = [p for p in (split_sentences(block) for block in paragraphs(text)) if p]
    if not parts or words <= 0:
        return ""
    leads_words = sum(word_count(p[0]) for p in parts)
    if leads_words <= words:
        ranked = [(i, j) for j in range(max(len(p) for p in parts)) for i, p in enumerate(parts) if j < len(p)]
    else:
        count = max(1, min(len(parts), round(words * len(parts) / leads_words)))
        last = len(parts) - 1  # the first and the last paragraph, and evenly between
        ranked = [(round(k * last / (count - 1)) if count > 1 else 0, 0) for k in range(count)]
    kept, left = {}, words
    for i, j in ranked:
        if left <= 0:
            break
        cut = parts[i][j].split()[:left]
        kept[(i, j)] = " ".join(cut)
        left -= len(cut)
    return " ".join(kept[key] for key in sorted(kept))


def leadk_budget(doc: LongDoc, mapreduce_record: Optional[dict]) -> tuple[int, str]:
    """(words, source): the map-reduce summary's length, else the reference's."""
    if mapreduce_record and mapreduce_record.get("error") is None and mapreduce_record.get("summary"):
        return word_count(mapreduce_record["summary"]), "mapreduce"
    return word_count(doc.reference), "reference"
