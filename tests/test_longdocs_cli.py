"""evaluation.longdocs: the reports, the command line (one-line errors, Ctrl-C, --help) and the
whole command end to end on the tiny random model."""

from __future__ import annotations

import json

import pytest

import evaluation.longdocs as ld
from core.data import DataError
from core.rouge import ROUGE_TYPES, rouge_recall_f1
from evaluation.coverage import position
from evaluation.longdocs import main
from evaluation.longdocs_data import Article, LongDoc, load_longdocs
from evaluation.longdocs_report import SCORE_KEYS, build_result, markdown_report, write_reports


# --- reports ----------------------------------------------------------------------------


def _fake_rows() -> tuple[list[LongDoc], dict]:
    arts = [Article(f"a{i}", f"Story {i} .") for i in range(3)]
    docs = [LongDoc(f"j{k}", "text", "ref words here", tokens=6000 + k, articles=arts) for k in range(3)]

    def ok(r1: float, covered: list[bool]) -> dict:
        scores = {key: r1 for key in SCORE_KEYS}
        cov = [{"article": a.id, "position": position(i, 3), "recall": 0.5, "covered": c}
               for i, (a, c) in enumerate(zip(arts, covered))]
        return {"summary": "s", **scores, "words": 10, "seconds": 3.0, "coverage": cov}

    rows = {
        "mapreduce": [ok(0.4, [True, True, True]), ok(0.5, [True, False, True]), {"error": "reduce failed"}],
        "truncate": [ok(0.3, [True, False, False]), ok(0.3, [True, False, False]), ok(0.2, [True, False, False])],
        "leadk": [ok(0.1, [True, False, False])] * 3,
    }
    return docs, rows


def test_report_shape_from_fake_records(tmp_path):
    docs, rows = _fake_rows()
    result = {"data": "joined", "source": "test.jsonl", "coverage_threshold": 0.2,
              **build_result(docs, rows, samples=200)}
    mr = result["systems"]["mapreduce"]
    assert mr["rouge1_recall"] == pytest.approx(0.45) and mr["num_failed"] == 1 and mr["num_scored"] == 2
    diff = result["comparison"]["mapreduce_minus_truncate_rouge1_f1"]
    assert diff["num_paired"] == 2 and diff["mean"] == pytest.approx(0.15) and len(diff["ci95"]) == 2
    assert result["coverage"]["mapreduce"]["counts"]["all"] == {"covered": 5, "total": 6}
    assert result["coverage"]["truncate"]["last"] == 0.0

    md = write_reports(tmp_path, docs, rows, result)
    lines = md.splitlines()
    assert lines[0].startswith("| System | R1 recall | R2 recall | RL recall | R1 F1 | R2 F1 | RL F1 | Words | s/doc | Failures |")
    assert lines[2].startswith("| Map-reduce | 0.4500 |") and lines[2].endswith("| 1 |")
    assert any(line.startswith("- Map-reduce − Truncate (one pass): rouge1_f1 +0.1500, 95% paired bootstrap CI")
               for line in lines)
    assert "| System | Covered | First | Middle | Last |" in md
    assert "| Map-reduce | 83.3% (5/6) | 100.0% (2/2) | 50.0% (1/2) | 100.0% (2/2) |" in md
    assert (tmp_path / "results.md").read_text() == md
    saved = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN became null
    assert set(saved["systems"]) == {"mapreduce", "truncate", "leadk"}
    per_doc = [json.loads(line) for line in (tmp_path / "per_document.jsonl").read_text().splitlines()]
    assert [p["id"] for p in per_doc] == ["j0", "j1", "j2"] and per_doc[2]["systems"]["mapreduce"]["error"]


def test_report_without_coverage_or_pair():
    docs = [LongDoc("d", "text", "ref")]
    result = build_result(docs, {"leadk": [{"error": "empty document"}]}, samples=10)
    md = markdown_report(result)
    assert "Covered" not in md and "Map-reduce −" not in md
    assert "| Lead-k (length-matched) | n/a | n/a |" in md


def test_rouge_f1_matches_evaluation_metrics():
    from core.rouge import rouge_scores

    pred, ref = "The storm hit the coast on Monday.", "A storm hits the coast .\nThousands lose power ."
    ours, theirs = rouge_recall_f1(pred, ref), rouge_scores(pred, ref)
    for key in ROUGE_TYPES:
        assert ours[f"{key}_f1"] == pytest.approx(theirs[key])
    assert ours["rouge1_recall"] < ours["rouge1_f1"]  # the reference is longer than the summary


# --- the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--longdocs-file", "/nonexistent/long.jsonl"], "error: file not found: /nonexistent/long.jsonl"),
        (["--systems", "mapreduce,oracle"], "error: --systems: choose from"),
        (["--data", "joined", "--min-tokens", "9000", "--max-tokens", "8000"], "error: need 0 < --min-tokens"),
        (["--chunk-size", "10", "--chunk-overlap", "20"], "error: config key 'chunk_overlap'"),
        (["--config", "/nonexistent.yaml"], "error: config file not found"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, extra, message):
    assert main(["--out-dir", str(tmp_path), "--no-progress", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert "Traceback" not in "\n".join(err)


def test_a_longdocs_file_that_is_not_utf8_is_one_line_without_resume_advice(tmp_path, capsys):
    data, out_dir = tmp_path / "latin1.jsonl", tmp_path / "out"
    good = json.dumps({"id": "a", "document": "fine", "summary": "s"}) + "\n"
    data.write_bytes(good.encode() + b'{"id": "b", "document": "caf\xe9", "summary": "s"}\n')
    assert main(["--longdocs-file", str(data), "--out-dir", str(out_dir), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {data}: not UTF-8"), err
    assert f"byte {len(good) + 28}" in err[0] and "line 2" in err[0]
    assert "resume" not in err[0] and not out_dir.exists()
    with pytest.raises(DataError, match="not UTF-8"):
        load_longdocs(data, 1)  # the bad row is beyond the limit, but the file is read in blocks


def test_ctrl_c_prints_a_resume_hint(tmp_path, monkeypatch, capsys):
    def interrupted(cfg, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ld, "evaluate_long", interrupted)
    assert main(["--out-dir", str(tmp_path)]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_help_names_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--longdocs-file", "--test-file", "--limit", "--min-tokens", "--max-tokens",
                 "--coverage-threshold", "--systems", "--out-dir", "--chunk-size", "--adapter"):
        assert flag in text


# --- end to end -------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_joined_on_the_tiny_model(tmp_path, lively_model_dir, capsys):
    out_dir = tmp_path / "out"
    args = [
        "--base-model", str(lively_model_dir), "--device", "cpu", "--dtype", "float32",
        "--max-length", "128", "--max-new-tokens", "8", "--chunk-size", "60", "--chunk-overlap", "8",
        "--num-workers", "1", "--data", "joined", "--min-tokens", "1200", "--max-tokens", "4000",
        "--limit", "2", "--bootstrap-samples", "50", "--out-dir", str(out_dir), "--no-progress",
    ]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    result = json.loads((out_dir / "results.json").read_text())
    systems = {"mapreduce", "truncate", "leadk", "paralead", "whole"}  # the default: every system
    assert result["num_documents"] == 2 and set(result["systems"]) == systems
    assert set(result["coverage"]) == systems
    assert {f"mapreduce_minus_{s}_rougeL_f1" for s in systems - {"mapreduce"}} <= set(result["comparison"])
    assert printed.strip() == (out_dir / "results.md").read_text().strip()
    assert "| System | Covered | First | Middle | Last |" in printed
    lines = (out_dir / ld.LOG_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["system"] for line in lines) == [s for s in sorted(systems) for _ in range(2)]
    assert main(args) == 0  # resume: nothing is generated again
    assert (out_dir / ld.LOG_FILE).read_text().splitlines() == lines
