"""evaluation.longdocs and its parts: joined documents, coverage, lead-k, the resume log, the systems' order.

The tests fake the model systems (no Ray, no model); the reports, the CLI and the slow end-to-end
run are in test_longdocs_cli.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import evaluation.longdocs as ld
from core.data import DataError
from core.text import content_words
from evaluation.coverage import aggregate_coverage, article_coverage, content_recall, lead_k, leadk_budget, position
from evaluation.generations_log import LongdocLog
from evaluation.longdocs import main
from evaluation.longdocs_data import JOINER, Article, LongDoc, join_articles, load_joined, load_longdocs
from tests.conftest import CNNDM_TEST, LONGDOCS


def _words(text: str) -> int:
    return len(text.split())


def _row(i: int, n_words: int) -> dict:
    return {"id": f"a{i}", "article": " ".join([f"w{i}"] * n_words), "highlights": f"h{i} one .\nh{i} two ."}


# --- joined documents -------------------------------------------------------------------


def test_join_articles_bounds_order_and_references():
    rows = [_row(i, n) for i, n in enumerate([4, 5, 3, 9, 2, 2, 2, 6, 7, 1, 8])]
    docs = join_articles(rows, _words, min_tokens=8, max_tokens=12, limit=10)
    assert docs == join_articles(rows, _words, 8, 12, 10)  # deterministic
    seen: list[int] = []
    for doc in docs:
        idx = [int(a.id[1:]) for a in doc.articles]
        assert idx == list(range(idx[0], idx[0] + len(idx)))  # consecutive articles
        assert 8 <= doc.tokens <= 12 and doc.tokens == _words(doc.text)
        assert doc.text == JOINER.join(rows[i]["article"] for i in idx)
        assert doc.reference == "\n".join(rows[i]["highlights"] for i in idx)
        assert [a.highlights for a in doc.articles] == [rows[i]["highlights"] for i in idx]
        seen.extend(idx)
    assert seen == sorted(set(seen))  # in file order, no article used twice
    assert len({d.id for d in docs}) == len(docs)
    assert len(join_articles(rows, _words, 8, 12, limit=2)) == 2


def test_join_articles_restarts_a_group_that_overshoots_and_skips_giants():
    rows = [_row(0, 6), _row(1, 12), _row(2, 30), _row(3, 11), _row(4, 0), _row(5, 4), _row(6, 7)]
    docs = join_articles(rows, _words, min_tokens=10, max_tokens=15, limit=5)
    # a0+a1 = 18 > 15: a0 dropped, a1 alone; a2 too long; a3 alone; a4 empty breaks the run
    assert [[a.id for a in d.articles] for d in docs] == [["a1"], ["a3"], ["a5", "a6"]]


def test_load_joined_counts_model_tokens(qwen_tokenizer):
    docs = load_joined(CNNDM_TEST, qwen_tokenizer, 1500, 3000, limit=3)
    assert len(docs) == 3
    order = {json.loads(line)["id"]: i for i, line in enumerate(CNNDM_TEST.open())}
    last = -1
    for doc in docs:
        assert doc.tokens == len(qwen_tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        assert 1500 <= doc.tokens <= 3000 and len(doc.articles) >= 2
        idx = [order[a.id] for a in doc.articles]
        assert idx == list(range(idx[0], idx[0] + len(idx))) and idx[0] > last
        last = idx[-1]


def test_load_longdocs_limit_and_bad_files(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "document": f"doc {i}", "summary": "s", "qwen_tokens": 9}) + "\n"
                            for i in range(5)))
    docs = load_longdocs(path, limit=3)
    assert [d.id for d in docs] == ["0", "1", "2"] and docs[0].tokens == 9 and not docs[0].articles
    with pytest.raises(DataError, match="not found"):
        load_longdocs(tmp_path / "missing.jsonl", 3)
    path.write_text(json.dumps({"id": 1, "document": "x"}) + "\n")
    with pytest.raises(DataError, match="line 1: missing field"):
        load_longdocs(path, 3)


# --- coverage ---------------------------------------------------------------------------


def test_content_words_drop_case_punctuation_stopwords_and_stem():
    assert content_words("The Senators were RUNNING, for the 2 seats!", stem=False) == ["senators", "running", "2", "seats"]
    assert content_words("The Senators were RUNNING, for the 2 seats!") == ["senat", "run", "2", "seat"]


def test_content_recall_clips_counts():
    assert content_recall("storm storm hits coast .", "The storm hit the coast") == pytest.approx(3 / 4)
    assert content_recall("storm", "storm storm storm") == 1.0
    assert content_recall("the of and .", "anything") is None
    assert content_recall("Paris flood", "") == 0.0


def test_article_coverage_positions_and_threshold():
    arts = [Article("x", "Volcano erupts in Iceland ."), Article("y", "Bank raises interest rates ."),
            Article("z", "Team wins the cup final .")]
    doc = LongDoc("d", "text", "ref", articles=arts)
    rows = article_coverage(doc, "An Icelandic volcano erupted; the team won the final.", threshold=0.5)
    assert [r["position"] for r in rows] == ["first", "middle", "last"]
    assert [r["covered"] for r in rows] == [True, False, True]
    assert [position(0, 1), position(1, 2), position(1, 3)] == ["first", "last", "middle"]


def test_aggregate_coverage_shares_by_position():
    rows = [
        {"position": "first", "covered": True}, {"position": "middle", "covered": False},
        {"position": "middle", "covered": True}, {"position": "last", "covered": False},
        {"position": "first", "covered": True}, {"position": "last", "covered": None},  # no content words
    ]
    agg = aggregate_coverage(rows)
    assert agg["covered"] == pytest.approx(3 / 5)
    assert (agg["first"], agg["middle"], agg["last"]) == (1.0, 0.5, 0.0)
    assert agg["counts"]["all"] == {"covered": 3, "total": 5}
    assert math.isnan(aggregate_coverage([{"position": "first", "covered": True}])["middle"])


# --- lead-k -----------------------------------------------------------------------------


def test_lead_k_matches_the_word_budget_exactly():
    text = "One two three. Four five six seven. Eight nine."
    assert lead_k(text, 5) == "One two three. Four five"
    assert lead_k(text, 3) == "One two three."
    assert _words(lead_k(text, 2)) == 2
    assert lead_k(text, 100) == text  # shorter document: all of it
    assert lead_k(text, 0) == ""


def test_leadk_budget_follows_mapreduce_else_reference():
    doc = LongDoc("d", "text", "one two three four")
    assert leadk_budget(doc, {"summary": "a b c d e f", "error": None}) == (6, "mapreduce")
    assert leadk_budget(doc, {"summary": None, "error": "reduce failed"}) == (4, "reference")
    assert leadk_budget(doc, None) == (4, "reference")


# --- the resume log ---------------------------------------------------------------------


def test_generation_log_reuses_only_matching_finished_records(tmp_path):
    path = tmp_path / "log.jsonl"
    a, b = LongDoc("a", "text a", "r"), LongDoc("b", "text b", "r")
    out = LongdocLog(path)
    out.add("truncate", a, "s1", summary="sum a", seconds=1.0)
    out.add("truncate", b, "s1", error="boom")
    out.close()
    with path.open("a") as f:
        f.write('{"system": "truncate", "id": "b", "se')  # cut short by a crash
    again = LongdocLog(path)
    assert again.done("truncate", a, "s1") and again.get("truncate", a, "s1")["summary"] == "sum a"
    assert not again.done("truncate", b, "s1") and again.get("truncate", b, "s1")["error"] == "boom"
    assert not again.done("truncate", a, "s2")  # other settings
    assert not again.done("truncate", LongDoc("a", "edited text", "r"), "s1")  # other document text


def test_generation_log_appends_after_a_torn_line_without_losing_the_new_record(tmp_path):
    path = tmp_path / ld.LOG_FILE
    a, b = LongDoc("a", "text a", "r"), LongDoc("b", "text b", "r")
    path.write_text('{"system": "truncate", "id": "b", "se')  # cut short by a crash, no newline
    out = LongdocLog(path)
    out.add("truncate", a, "s1", summary="sum a")
    out.close()
    assert LongdocLog(path).done("truncate", a, "s1") and not LongdocLog(path).done("truncate", b, "s1")


class _FakeSystems:
    """Stands in for the Ray and in-process model systems; records what each was asked to do."""

    def __init__(self, monkeypatch, setups=("mr1", "tr1", "wh1")):
        self.calls: dict[str, list[list[str]]] = {"mapreduce": [], "truncate": [], "whole": []}
        self.setups = dict(zip(("mapreduce", "truncate", "whole"), setups))
        monkeypatch.setattr(ld, "model_setups", lambda cfg: dict(self.setups))
        self.prefix = {"mapreduce": "map reduce summary of", "truncate": "truncated summary", "whole": "whole"}
        for system in self.calls:
            monkeypatch.setattr(ld, f"run_{system}", self._runner(system))

    def _runner(self, system):
        def run(cfg, todo, out, setup, progress):
            prefix = self.prefix[system]
            self.calls[system].append([d.id for d in todo])
            for d in todo:
                if "fail" in d.text and system == "mapreduce":
                    out.add(system, d, setup, error="reduce failed: too deep", seconds=0.5)
                else:
                    out.add(system, d, setup, summary=f"{prefix} {d.text}", seconds=2.0)
        return run


def _longdocs_file(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "long.jsonl"
    rows = [{"id": f"d{i}", "document": f"Document {i} opens here. It goes on at length. " * 3
             + ("fail" if i == 1 else ""), "summary": f"Document {i} goes on.", "qwen_tokens": 100 + i}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _log_lines(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / ld.LOG_FILE).read_text().splitlines()]


def test_rerun_redoes_only_missing_work_and_settings_changes(tmp_path, monkeypatch, capsys):
    fake = _FakeSystems(monkeypatch)
    data, out_dir = _longdocs_file(tmp_path), tmp_path / "out"
    args = ["--longdocs-file", str(data), "--out-dir", str(out_dir), "--no-progress",
            "--systems", "mapreduce,truncate,leadk"]
    assert main(args + ["--limit", "3"]) == 0
    assert fake.calls == {"mapreduce": [["d0", "d1", "d2"]], "truncate": [["d0", "d1", "d2"]], "whole": []}
    first = _log_lines(out_dir)
    assert len(first) == 9 and all(r["setup"] and r["doc_sha"] for r in first)
    leadk = {r["id"]: r for r in first if r["system"] == "leadk"}
    mr_d0 = next(r for r in first if r["system"] == "mapreduce" and r["id"] == "d0")
    assert (leadk["d0"]["words_budget"], leadk["d0"]["budget_source"]) == (_words(mr_d0["summary"]), "mapreduce")
    assert (leadk["d1"]["words_budget"], leadk["d1"]["budget_source"]) == (4, "reference")  # d1 failed map-reduce

    assert main(args + ["--limit", "4"]) == 0  # one more document; failed d1 is retried
    assert fake.calls["mapreduce"][-1] == ["d1", "d3"] and fake.calls["truncate"][-1] == ["d3"]
    second = _log_lines(out_dir)[9:]
    assert sorted((r["system"], r["id"]) for r in second) == [
        ("leadk", "d3"), ("mapreduce", "d1"), ("mapreduce", "d3"), ("truncate", "d3")]

    fake.setups["truncate"] = "tr2"  # e.g. another max_new_tokens: truncate is redone, nothing else
    assert main(args + ["--limit", "4"]) == 0
    assert fake.calls["truncate"][-1] == ["d0", "d1", "d2", "d3"]
    assert fake.calls["mapreduce"][-1] == ["d1"]  # still failing, so still retried
    assert len(_log_lines(out_dir)) == 9 + 4 + 5
    result = json.loads((out_dir / "results.json").read_text())
    assert result["systems"]["mapreduce"]["num_failed"] == 1 and result["systems"]["truncate"]["num_scored"] == 4
    assert result["comparison"]["mapreduce_minus_truncate_rouge1_f1"]["num_paired"] == 3
    assert set(result["comparison"]) == {f"mapreduce_minus_{s}_{k}" for s in ("truncate", "leadk")
                                         for k in ("rouge1_f1", "rougeL_f1")}
    assert "| Map-reduce |" in capsys.readouterr().out


def test_leadk_is_redone_when_the_mapreduce_length_changes(tmp_path, monkeypatch):
    fake = _FakeSystems(monkeypatch)
    data, out_dir = _longdocs_file(tmp_path, n=1), tmp_path / "out"
    args = ["--longdocs-file", str(data), "--out-dir", str(out_dir), "--no-progress", "--systems", "mapreduce,leadk"]
    assert main(args) == 0
    n = len(_log_lines(out_dir))
    assert main(args) == 0 and len(_log_lines(out_dir)) == n  # nothing redone
    fake.setups["mapreduce"] = "mr2"
    assert main(args) == 0
    new = _log_lines(out_dir)[n:]
    assert [r["system"] for r in new] == ["mapreduce"]  # a summary of the same length: leadk kept
    fake.setups["mapreduce"], fake.prefix["mapreduce"] = "mr3", "a longer map reduce summary of"
    assert main(args) == 0
    new = _log_lines(out_dir)[n + 1:]
    assert [r["system"] for r in new] == ["mapreduce", "leadk"]
    assert new[1]["words_budget"] == _words(new[0]["summary"]) and new[1]["budget_source"] == "mapreduce"
    assert not fake.calls["truncate"]


def test_every_system_runs_and_is_compared_on_f1(tmp_path, monkeypatch, capsys):
    fake = _FakeSystems(monkeypatch)
    data, out_dir = _longdocs_file(tmp_path, n=3), tmp_path / "out"
    assert main(["--longdocs-file", str(data), "--out-dir", str(out_dir), "--no-progress"]) == 0
    assert all(calls == [["d0", "d1", "d2"]] for calls in fake.calls.values())
    result = json.loads((out_dir / "results.json").read_text())
    assert list(result["systems"]) == ["mapreduce", "whole", "truncate", "leadk", "paralead"]
    pl = [json.loads(line)["systems"]["paralead"] for line in (out_dir / "per_document.jsonl").read_text().splitlines()]
    lk = [json.loads(line)["systems"]["leadk"] for line in (out_dir / "per_document.jsonl").read_text().splitlines()]
    assert [p["words"] for p in pl] == [k["words"] for k in lk]  # both cut to the same length
    assert "mapreduce_minus_paralead_rougeL_f1" in result["comparison"]
    assert "Paragraph leads (length-matched)" in capsys.readouterr().out


def test_paragraph_leads_spread_over_the_document():
    from evaluation.coverage import paragraph_leads

    text = "\n\n".join(f"Lead {i} says a thing. Then more of part {i}." for i in range(10))
    short = paragraph_leads(text, 10)  # room for about two leads: the first and the last paragraph
    assert short.startswith("Lead 0 says") and "Lead 9" in short and len(short.split()) == 10
    everything = paragraph_leads(text, 1000)
    assert everything.split() == text.split()  # all of it fits: every sentence, in document order
    leads = paragraph_leads(text, 50)  # every lead (5 words each) fits: leads only, in order
    assert leads == " ".join(f"Lead {i} says a thing." for i in range(10))


def _no_model(*args, **kwargs):
    raise AssertionError("a model system ran")


def test_leadk_alone_on_real_longdocs_needs_no_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ld, "run_mapreduce", _no_model)
    monkeypatch.setattr(ld, "run_truncate", _no_model)
    out_dir = tmp_path / "out"
    assert main(["--systems", "leadk", "--limit", "3", "--longdocs-file", str(LONGDOCS),
                 "--out-dir", str(out_dir), "--no-progress"]) == 0
    result = json.loads((out_dir / "results.json").read_text())
    assert result["num_documents"] == 3 and list(result["systems"]) == ["leadk"] and "coverage" not in result
    refs = [json.loads(line)["summary"] for _, line in zip(range(3), LONGDOCS.open())]
    per_doc = [json.loads(line) for line in (out_dir / "per_document.jsonl").read_text().splitlines()]
    assert [p["systems"]["leadk"]["words"] for p in per_doc] == [_words(r) for r in refs]  # no map-reduce yet
    assert result["systems"]["leadk"]["rouge1_recall"] > 0
    assert "| Lead-k (length-matched) |" in capsys.readouterr().out


def test_joined_mode_leadk_reports_coverage(tmp_path, monkeypatch, qwen_tokenizer, capsys):
    import core.models

    monkeypatch.setattr(core.models, "load_tokenizer", lambda cfg, padding_side="right": qwen_tokenizer)
    monkeypatch.setattr(ld, "run_mapreduce", _no_model)
    monkeypatch.setattr(ld, "run_truncate", _no_model)
    out_dir = tmp_path / "out"
    assert main(["--data", "joined", "--systems", "leadk", "--limit", "2", "--min-tokens", "1500",
                 "--max-tokens", "3000", "--out-dir", str(out_dir), "--no-progress"]) == 0
    result = json.loads((out_dir / "results.json").read_text())
    cov = result["coverage"]["leadk"]
    assert cov["counts"]["first"]["total"] == 2 and cov["counts"]["last"]["total"] == 2
    assert cov["first"] >= cov["last"]  # a lead covers the opening article first
    assert result["min_tokens"] == 1500 and result["coverage_threshold"] == 0.2
    assert "| Lead-k (length-matched) |" in capsys.readouterr().out


def test_truncate_retries_a_failed_batch_one_document_at_a_time(tmp_path, monkeypatch, qwen_tokenizer):
    import core.generation

    bad = qwen_tokenizer("poison", add_special_tokens=False)["input_ids"][0]

    def fake_generate(model, tokenizer, prompts, gen):
        if len(prompts) > 1:  # the longer batch finishes, the next (with the poison) runs out of memory
            if any(bad in p for p in prompts):
                raise RuntimeError("CUDA out of memory")
            return ["first summary"] * len(prompts)
        if bad in prompts[0]:
            raise RuntimeError("boom\nmore detail")
        return ["alone summary"]

    import evaluation.longdocs_systems as systems

    monkeypatch.setattr(systems, "load_model", lambda cfg, system: (object(), qwen_tokenizer))
    monkeypatch.setattr(core.generation, "generate_batch", fake_generate)
    docs = [LongDoc("a", "Alpha text, longer than the two short ones.", "r"), LongDoc("b", "   ", "r"),
            LongDoc("c", "Gamma text.", "r"), LongDoc("d", "poison text.", "r"),
            LongDoc("e", "Epsilon text, longer than the two short ones.", "r")]
    out = LongdocLog(tmp_path / "log.jsonl")
    from core.config import load_config

    cfg = load_config(None, {"max_length": 256, "max_new_tokens": 16, "generation_batch_size": 2})
    ld.run_truncate(cfg, docs, out, "s", progress=False)
    recs = {d.id: out.get("truncate", d, "s") for d in docs}
    assert recs["a"]["summary"] == "first summary" and recs["a"]["seconds"] >= 0 and recs["a"]["prompt_tokens"] > 0
    assert recs["e"]["summary"] == "first summary"
    assert recs["b"]["error"] == "empty document"
    assert recs["c"]["summary"] == "alone summary" and recs["c"]["error"] is None
    assert recs["d"]["summary"] is None and recs["d"]["error"] == "generation failed: RuntimeError: boom"
    assert recs["d"]["seconds"] is None
