"""The README's main job, for real: the embedded SmolLM2 + shipped adapter on a 9k-token document."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import LONGDOCS, REPO
from mapreduce.sentences import sentences

pytestmark = pytest.mark.slow

STOPWORDS = set(
    "a an the and or but of to in on at for with from by as is are was were be been being it its this that "
    "these those he she they them his her their we you i not no so if then than there here have has had do "
    "does did will would can could should may might must about into over after before up down out just also "
    "very more most some any all said says one two new who what when where which while".split()
)


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in STOPWORDS}


def _document(doc_id: str) -> str:
    with open(LONGDOCS) as f:
        for line in f:
            row = json.loads(line)
            if row["id"] == doc_id:
                return row["document"]
    raise AssertionError(f"{doc_id} not in {LONGDOCS}")


def test_cli_summarizes_a_real_long_document_with_the_embedded_model(tmp_path, embedded_model_dir):
    text = _document("squality-dev-61434")  # 9,333 Qwen tokens; also examples/long_story.txt
    doc = tmp_path / "story.txt"
    doc.write_text(text)
    cmd = [sys.executable, "-m", "mapreduce.cli", "summarize", "--config", "configs/smollm2_cpu.yaml",
           "--adapter", "adapters/smollm2-cnndm", "--json", "--no-progress", str(doc)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    summary = result["summary"]
    assert summary and summary.strip()
    assert len(summary.split()) >= 10

    # English: mostly alphabetic words of ASCII letters
    words = summary.split()
    alphabetic = [w for w in words if re.fullmatch(r"[A-Za-z][A-Za-z'\-]*[.,;:!?\"]*", w)]
    assert len(alphabetic) / len(words) > 0.7, summary
    assert len(set(re.findall(r"[a-z]+", summary.lower())) & STOPWORDS) >= 3, summary  # function words

    # about this document: shares content words with it
    shared = _content_words(summary) & _content_words(text)
    assert len(shared) >= 3, (shared, summary)

    # and it really was map-reduced: many chunks, a map level, a final level
    tree = result["tree"]
    assert len(tree["chunks"]) >= 10
    names = [level["name"] for level in tree["levels"]]
    assert names[0] == "map"

    # several sentences a reader can use, within the config's length target (summary_words 150),
    # chosen from the last level's outputs (their lead sentences), in document order
    assert 40 <= len(words) <= 150, summary
    last = [o["text"] for o in tree["levels"][-1]["outputs"]]
    paragraphs = summary.split("\n\n")
    assert len(paragraphs) >= 2, summary
    origins = []
    for paragraph in paragraphs:
        found = [i for i, text in enumerate(last) if _made_of_sentences(paragraph, sentences(text))]
        assert found, (paragraph, last)  # the model's own words, nothing added by the reduce
        origins.append(found[0])
    assert origins == sorted(origins)
    # a sentence its chunk does not back (min_support) never reaches the summary
    assert all(s not in sentences(summary) for s in tree["unsupported"])


def _made_of_sentences(paragraph: str, candidates: list[str]) -> bool:
    """The paragraph is some of the candidate sentences, in their order, joined by spaces."""
    rest = paragraph
    for sentence in candidates:
        if rest.startswith(sentence):
            rest = rest[len(sentence):].lstrip()
    return rest == ""
