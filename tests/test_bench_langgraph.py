"""bench.bench_langgraph: the planned runs, the LangGraph recipe's graph, one plan on a tiny model.

The bench extra (requirements-bench.txt: langgraph and its parts) is optional: without it this
module is skipped. No Ray here: the engine's run is a stand-in Run.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("langgraph",
                    reason="the bench extra is not installed: pip install --no-deps -r requirements-bench.txt")

import bench.bench_langgraph as blg  # noqa: E402
import bench.langgraph_recipe as recipe  # noqa: E402
from bench.bench_longdocs import Run  # noqa: E402
from bench.limit import Tally  # noqa: E402
from conftest import CNNDM_TEST  # noqa: E402
from core.config import load_config  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402


def words(text: str) -> int:
    return len(text.split())


# --- the planned runs ----------------------------------------------------------------


def test_dry_run_prints_the_four_planned_runs_and_loads_no_model(embedded_model_dir, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr("core.models.load_base_model", no_model)
    monkeypatch.setattr(blg, "load_baseline_model", no_model)
    assert blg.main(["--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan ")]
    assert [line.split(":")[0] for line in lines] == [
        "plan 1/4 recipe/float32", "plan 2/4 recipe/bfloat16", "plan 3/4 config/float32", "plan 4/4 config/bfloat16"]
    recipe_line, config_line = lines[0], lines[2]
    assert "row 2 qmsum-test-ES2004b" in recipe_line
    assert "of 1024/128 tokens; new tokens map 128, other 128; summary_words 0;" in recipe_line
    assert "repetition_penalty 1.0, no_repeat_ngram_size 0; dtype float32; model embedded:smollm2" in recipe_line
    assert "of 380/40 tokens; new tokens map 40, other 80; summary_words 150;" in config_line
    assert "dtype bfloat16" in lines[3] and "--settings config --dtype bfloat16" in lines[3]
    assert "generate_summary -> collect_summaries -> collapse_summaries -> generate_final_summary" in recipe_line


def test_a_config_flag_wins_over_the_settings_and_the_dtype_is_each_plans():
    args = blg.build_parser().parse_args(["--settings", "recipe", "--dtype", "bfloat16", "--chunk-size", "900"])
    (plan,) = blg.build_plans(args)
    assert plan.name == "recipe/bfloat16" and plan.cfg.model.dtype == "bfloat16"
    assert plan.cfg.mapreduce.chunk_size == 900 and plan.cfg.mapreduce.chunk_overlap == 128
    assert recipe.recipe_caps(plan.cfg) == {"map": 128, "reduce": 128}
    assert plan.command() == "python -m bench.bench_langgraph --settings recipe --dtype bfloat16 --chunk-size 900"


def test_a_missing_row_is_one_error_line(capsys):
    assert blg.main(["--dry-run", "--row", "100000"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


# --- the recipe's graph, on a fake model ---------------------------------------------


class FakeLLM:
    """RunnableLambdas that answer with the first words of their text, and record what they got."""

    def __init__(self, map_words: int, reduce_words: int):
        self.map_inputs: list[str] = []
        self.reduce_inputs: list[str] = []
        self.map = RunnableLambda(lambda prompt: self._answer(prompt, self.map_inputs, map_words))
        self.reduce = RunnableLambda(lambda prompt: self._answer(prompt, self.reduce_inputs, reduce_words))

    @staticmethod
    def _answer(prompt, seen: list[str], n: int) -> str:
        content = prompt.messages[-1].content
        if content.startswith("Write a concise summary"):
            text = content.split("\n\n", 1)[1]
        else:
            text = content.split("The following is a set of summaries:\n", 1)[1].split("\nTake these", 1)[0]
        seen.append(text)
        return " ".join(text.split()[:n])


def chunks(n: int, size: int = 40) -> list[str]:
    return [" ".join(f"c{i}w{j}" for j in range(size)) for i in range(n)]


def test_the_recipe_maps_every_chunk_collapses_under_token_max_and_writes_one_final_summary():
    contents = chunks(12)
    fake = FakeLLM(map_words=10, reduce_words=20)
    graph = recipe.build_recipe_graph(fake.map, fake.reduce, words, token_max=50)
    state = recipe.summarize_with_recipe(graph, contents)
    assert sorted(fake.map_inputs) == sorted(contents)  # every chunk mapped once (in parallel: any order)
    assert state["summaries"] == [" ".join(c.split()[:10]) for c in contents]  # in document order
    # 12 x 10 words > 50: groups of 5, 5, 2 -> 3 x 20 = 60 > 50: groups of 2, 1 -> 40 <= 50: final
    assert state["collapse_rounds"] == 2
    assert [words(t) for t in fake.reduce_inputs[:3]] == [50, 50, 20]
    assert all(words(t) <= 50 for t in fake.reduce_inputs)
    assert sum(words(d.page_content) for d in state["collapsed_summaries"]) <= 50
    assert len(fake.reduce_inputs) == 3 + 2 + 1  # the last reduce is the final one
    assert fake.reduce_inputs[-1] == recipe.docs_text(state["collapsed_summaries"])
    assert state["final_summary"] == " ".join(fake.reduce_inputs[-1].split()[:20])
    assert state["final_summary"].startswith("c0w0")


def test_summaries_under_token_max_go_straight_to_the_final_summary():
    fake = FakeLLM(map_words=5, reduce_words=8)
    state = recipe.summarize_with_recipe(recipe.build_recipe_graph(fake.map, fake.reduce, words), chunks(3))
    assert state.get("collapse_rounds", 0) == 0 and len(fake.reduce_inputs) == 1
    assert words(state["final_summary"]) == 8


def test_split_list_of_docs_keeps_order_and_refuses_one_doc_over_token_max():
    from langchain_core.documents import Document

    docs = [Document(page_content=t) for t in ("a b c", "d e", "f g h i", "j")]
    length = lambda group: sum(words(d.page_content) for d in group)  # noqa: E731
    groups = recipe.split_list_of_docs(docs, length, 5)
    assert [[d.page_content for d in g] for g in groups] == [["a b c", "d e"], ["f g h i", "j"]]
    with pytest.raises(ValueError, match="single document"):
        recipe.split_list_of_docs([Document(page_content="a b c d e f")], length, 5)


# --- one plan on a tiny model --------------------------------------------------------


def _document(articles: int = 2) -> str:
    rows = [json.loads(line) for _, line in zip(range(articles), CNNDM_TEST.open())]
    return "\n\n".join(" ".join(r["article"].split()[:150]) for r in rows)


def test_one_plan_runs_the_recipe_on_the_engines_chunks_and_reports(lively_model_dir, monkeypatch, capsys):
    from core.models import load_tokenizer
    from mapreduce.chunking import Chunker
    from mapreduce.document import DocumentSteps

    cfg = load_config(None, dict(base_model=str(lively_model_dir), max_length=160, max_new_tokens=12, chunk_size=100,
                                 chunk_overlap=10, map_max_new_tokens=8, generation_batch_size=4, num_workers=1,
                                 num_cpus_per_worker=1.0, device="cpu", dtype="float32", no_repeat_ngram_size=3))
    shapes = [{"name": "map", "texts": 4, "prompt_tokens": 500, "output_tokens": [8, 8, 6, 8]},
              {"name": "final", "texts": 1, "prompt_tokens": 100, "output_tokens": [10]}]
    engine = Run("engine", 2.0, 1, 0, Tally(5, 600, 40), [None], "n/a",
                 {"batch_size": 4, "workers": [], "level_shapes": [shapes]})
    monkeypatch.setattr(blg, "run_engine", lambda cfg, docs: engine)
    doc = ("a", _document())
    result = blg.run_plan(blg.Plan("config", "float32", cfg), doc, None)

    recipe_row, engine_row, limit_row = result["rows"]
    assert [row["run"] for row in result["rows"]] == ["recipe", "engine", "limit"]
    model_steps = DocumentSteps(cfg, Chunker.from_config(load_tokenizer(cfg.model, padding_side="left"), cfg))
    assert recipe_row["chunks"] == len(model_steps.chunk(doc[1])) > 1  # the engine's chunks
    metered, tokens = recipe_row["metered"], recipe_row["tokens"]
    assert recipe_row["failed"] == 0 and recipe_row["collapse_rounds"] == 0
    assert metered["calls"] == metered["rows"] == tokens["texts"] == recipe_row["chunks"] + 1  # map + final
    assert metered["prompt_tokens"] == tokens["prompt_tokens"]  # the counted prompts are the real ones
    assert metered["steps"] <= recipe_row["chunks"] * 8 + 12  # the caps: 8 per map call, 12 for the final
    assert abs(tokens["generated_tokens"] - metered["generated_tokens"]) <= 0.2 * metered["generated_tokens"]
    assert isinstance(recipe_row["summary"], str)
    assert limit_row["share_of_limit"] == 1.0 and 0 < recipe_row["share_of_limit"]

    blg.print_report([result])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["plan", "run", "seconds", "engine", "vs", "recipe", "share", "of", "limit", "peak",
                              "RSS", "per", "process"]
    cells = {line.split()[1]: line.split() for line in out[1:4]}
    assert cells["recipe"][0] == "config/float32" and cells["recipe"][3] == "1.00x"
    assert cells["engine"][3] == f"{recipe_row['seconds'] / 2.0:.2f}x" and cells["limit"][3] == "-"
    assert out[4].startswith("config/float32: limit prefill ") and f"{recipe_row['chunks']} chunks" in out[4]
    assert result["ordered_bound_s"] >= limit_row["seconds"] > 0  # levels in order: never under the limit
    assert out[5].startswith("config/float32: the engine's levels in order (map 4, final 1 texts)")
    assert out[5].endswith(f"the engine's share of that bound {result['ordered_bound_s'] / 2.0:.2f}")
