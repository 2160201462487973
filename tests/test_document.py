"""One document's levels with a fake chunker (words as tokens) and fake summarizers: no Ray, no model."""

from __future__ import annotations

import pytest

from core.config import load_config

from fakes import DOC_TEMPLATE, MARKER, REDUCE_TEMPLATE, Recorder, document, keep_markers, steps
from mapreduce.reduce import JOINER

def test_a_document_that_fits_is_one_final_pass():
    events: list = []
    fake = Recorder()
    text = document(3)
    result = steps(events).run("a", text, fake)
    assert result.ok and result.summary == "M000 M001 M002"
    assert fake.calls == [([text], DOC_TEMPLATE)]
    assert [(lv["name"], lv["template"]) for lv in result.tree["levels"]] == [("final", "document")]
    assert result.tokens == {"document": 30, "chunks": 1, "chunk_tokens": 30, "summary": 3, "empty_summaries": 0}
    assert set(result.timings) == {"chunking_s", "map_s", "reduce_s", "total_s"}
    assert [(e.kind, e.level, e.done, e.total) for e in events] == [
        ("document", "", 0, 1), ("level", "final", 0, 1), ("item", "final", 1, 1), ("finished", "", 0, 0)]


def test_a_long_document_is_mapped_then_reduced_in_order():
    fake = Recorder()
    text = document(10)  # 100 words, chunk_size 20: 5 chunks
    result = steps().run("long", text, fake)
    assert result.ok, result.error
    assert result.summary == " ".join(f"M{i:03d}" for i in range(10))
    levels = result.tree["levels"]
    assert [(lv["name"], lv["template"]) for lv in levels] == [("map", "document"), ("final", "reduce")]
    assert [t for _, t in fake.calls] == [DOC_TEMPLATE, REDUCE_TEMPLATE]
    chunks = result.tree["chunks"]
    assert len(chunks) == 5 and all(text[c["start"]:c["end"]] for c in chunks)
    assert fake.calls[0][0] == [text[c["start"]:c["end"]] for c in chunks]
    assert fake.calls[1][0] == [JOINER.join(keep_markers(fake.calls[0][0], ""))]
    assert levels[0]["input_tokens"] == 100 and len(levels[0]["outputs"]) == 5


def test_collapse_levels_run_until_the_summaries_fit():
    def half(texts, template):  # keeps every other word: shrinks, but slowly
        return [" ".join(t.split()[::2]) for t in texts]

    result = steps(chunk_size=10).run("deep", " ".join(f"w{i}" for i in range(200)), Recorder(half))
    names = [lv["name"] for lv in result.tree["levels"]]
    assert result.ok and names[0] == "map" and names[-1] == "final"
    assert names[1:-1] and all(n.startswith("collapse-") for n in names[1:-1])


def test_a_length_target_keeps_one_summary_per_part():
    result = steps(summary_words=1000).run("t", document(10), Recorder())
    assert [lv["name"] for lv in result.tree["levels"]] == ["map"]
    assert result.summary == JOINER.join(["M000 M001", "M002 M003", "M004 M005", "M006 M007", "M008 M009"])


def test_a_sentence_its_chunk_does_not_back_is_left_out_and_recorded():
    def invents(texts, template):  # the markers, then a news item from nowhere
        return [" ".join(MARKER.findall(t)) + " . Riots erupted across London overnight ." for t in texts]

    result = steps(summary_words=1000).run("t", document(10), Recorder(invents))  # 5 chunks
    assert result.ok and "Riots" not in result.summary and len(MARKER.findall(result.summary)) == 10
    assert result.tree["unsupported"] == ["Riots erupted across London overnight."] * 5
    kept = steps(summary_words=1000, min_support=0).run("t", document(10), Recorder(invents))
    assert kept.summary.count("Riots") == 1 and kept.tree["unsupported"] == []  # said once, not five times


@pytest.mark.parametrize("text, message", [
    ("   ", "document is empty"),
    (None, "a document must be text (str, or UTF-8 bytes), got NoneType"),
    (123, "a document must be text (str, or UTF-8 bytes), got int"),
    (b"\xff\xfe", "document is not UTF-8 text (invalid byte at offset 0)"),
    ("\U0001F600 \U0001F389!! \u2764\ufe0f" * 50, "document has no words to summarize (only symbols, emoji or punctuation)"),
])
def test_an_empty_document_is_an_error_result(text, message):
    fake = Recorder()
    result = steps().run("e", text, fake)
    assert (result.summary, result.error) == (None, message) and not fake.calls


def test_an_oversized_document_is_refused_before_any_summary():
    fake = Recorder()
    result = steps(max_document_tokens=50).run("big", document(10), fake)
    assert "above max_document_tokens (50)" in result.error and not fake.calls


def test_an_empty_final_summary_fails_the_document():
    result = steps().run("a", document(2), lambda texts, template, cap: [""] * len(texts))
    assert result.summary is None
    assert result.error.startswith("the model returned an empty summary at the final level (no adapter loaded")
    assert result.tokens["empty_summaries"] == 1


def test_an_empty_map_summary_fails_the_reduce():
    def drop_second(texts, template, cap):
        return ["" if i == 1 else "x" for i in range(len(texts))]

    result = steps().run("a", document(10), drop_second)
    assert result.error.startswith("reduce failed: map: the model returned an empty summary for input 1")


def test_a_failed_input_fails_its_document_with_the_level_named():
    events: list = []
    job = steps(events).start("a", document(10), seq=3)
    inputs = job.open()
    assert [i.priority() for i in inputs[:2]] == [(3, 0, 0), (3, 0, 1)] and all(i.live for i in inputs)
    assert not job.put(0, "M000")
    result = job.fail(1, "ValueError: boom")
    assert result.error == "map input 1 failed after retries: ValueError: boom" and job.result is result
    assert not any(i.live for i in inputs) and events[-1].kind == "finished"


def test_inputs_of_an_earlier_level_are_no_longer_live():
    job = steps().start("a", document(10))
    first = job.open()
    for item in first:
        job.put(item.index, " ".join(MARKER.findall(item.text)))
    second = job.advance()
    assert [i.level_no for i in second] == [1] and second[0].template == REDUCE_TEMPLATE
    assert not any(i.live for i in first) and second[0].live


def test_utf8_bytes_are_read_as_text():
    text = document(3)
    assert steps().run("b", text.encode(), Recorder()).summary == steps().run("s", text, Recorder()).summary


def test_map_calls_are_capped_at_max_new_tokens(tmp_path):
    from mapreduce.document import level_max_new_tokens

    (tmp_path / "cfg.yaml").write_text("mapreduce:\n  map_max_new_tokens: 40\n")
    cfg = load_config(tmp_path / "cfg.yaml", {"max_new_tokens": 24})
    assert (level_max_new_tokens(cfg, "map"), level_max_new_tokens(cfg, "final")) == (24, None)


def test_a_one_pass_summary_is_checked_against_its_document_and_not_padded():
    caps: list = []

    def invents(texts, template, max_new_tokens=None):
        caps.append(max_new_tokens)
        return ["The harbour council approved the budget . Riots erupted across London overnight ."]

    text = "The harbour council approved the budget on Monday."  # 8 words: one pass
    result = steps(max_new_tokens=80, max_length=128).run("short", text, invents)
    assert result.ok and result.summary == "The harbour council approved the budget."
    assert result.tree["unsupported"] == ["Riots erupted across London overnight."]
    assert caps == [8 + 16]  # the document's length and a little slack, not max_new_tokens


def test_an_etexts_credit_line_and_transcribers_note_are_not_summarized():
    credits = "Produced by A. Reader and the Online Distributed Proofreading Team at http://www.pgdp.net"
    note = "[Transcriber's Note: This etext was produced from Worlds of If, July 1963. No renewal.]"
    text = f"{credits}\n\n{note}\n\n" + document(4)
    fake = Recorder()
    result = steps().run("etext", text, fake)
    assert result.ok, result.error
    sent = " ".join(fake.calls[0][0])
    assert "Produced" not in sent and "Transcriber" not in sent and "pgdp" not in sent
    assert result.summary == "M000 M001 M002 M003"
    assert all(text[c["start"]:c["end"]].strip() for c in result.tree["chunks"])  # spans index the text given
