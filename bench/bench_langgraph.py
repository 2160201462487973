"""Benchmark: the Ray engine against its peer, LangGraph's map-reduce summarization recipe.

    python -m bench.bench_langgraph [--settings recipe config] [--dtype float32 bfloat16]
        [--config configs/smollm2_cpu.yaml] [--longdocs-file ../shared/data/longdocs/longdocs.jsonl]
        [--row 2] [--max-concurrency N] [--json PATH] [--dry-run] [config flags]

Needs the bench extra: `pip install --no-deps -r requirements-bench.txt` (langgraph and its parts).

The peer is LangChain's "summarize text" how-to as a LangGraph StateGraph (bench.langgraph_recipe):
a Send per chunk (map), collapse_summaries while the summaries exceed token_max (1,000 tokens:
consecutive groups that fit, each summarized again), then generate_final_summary, with the
recipe's prompts. Its model is a transformers pipeline("text-generation") in a RunnableLambda,
fed the prompt as text as langchain_huggingface.HuggingFacePipeline does (no release of that
package allows huggingface_hub 2, which this project runs); the recipe's token counts are the
model's own tokenizer's.

The same for both sides: the document (row --row of the long-document file, default the
second), the model (core.models.load_for_inference: base model, adapter if --adapter, dtype),
the chunks (mapreduce.chunking.Chunker.from_config: identical boundaries), the new-token caps
(map_max_new_tokens for map calls, max_new_tokens for the rest: core.generation.with_max_new_tokens)
and the decoding (core.generation.hf_generation_config: greedy, every setting explicit;
repetition control on the generated tokens only). The prompts are each side's own.

Settings (--settings), each run in every --dtype (float32, bfloat16):
  recipe  the recipe's: 1,024/128-token chunks, 128 new tokens for every call, summary_words 0
          (the engine's reduce is a model collapse and final too), greedy plain (repetition_penalty
          1.0, no_repeat_ngram_size 0); max_length 1,216 so that a chunk, its template and 128 fit.
  config  the config file as it is (configs/smollm2_cpu.yaml: 380/40 chunks, map cap 40,
          summary_words 150: the engine selects sentences, the recipe still collapses and reduces).
A config flag given on the command line wins over both.

One planned run (settings x dtype), in one process: the recipe with the engine's threads
(bench_longdocs.load_baseline_model), the limit measured on the recipe's median prompt
(bench.limit.measure_limit), then the engine on Ray actors (bench_longdocs.run_engine).
Tokens a run processed come from its calls, counted as bench.limit counts levels
(count_levels); each run's share of the limit is limit_seconds / its seconds. The table: plan,
run, seconds, engine vs recipe (the recipe's seconds / the run's), share of limit, peak RSS;
then, per plan, the bound of the engine's levels run in order (bench.level_bound: a level
waits for the one before and decodes at most its own texts' rows) and the engine's share of it.
`--dry-run` builds every plan's config, chunker and chunks, the engine's document steps and the
recipe's graph (a tokenizer, no model), prints one line per planned run and exits 0.
Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from langchain_core.runnables import RunnableLambda

from bench.bench_longdocs import (DEFAULT_LONGDOCS, BenchError, GenerateMeter, Run, _rss_cell, bench_main,
                                  first_documents, limit_row, load_baseline_model, run_engine, run_row, say,
                                  self_peak_rss_mib, write_figures)
from bench.limit import count_levels, engine_threads, measure_limit
from bench.langgraph_recipe import TOKEN_MAX, build_recipe_graph, pipeline_llm, recipe_caps, summarize_with_recipe
from bench.level_bound import ordered_seconds
from core.config import Config, key_index, load_config
from core.errors import first_line
from core.flags import add_config_flags

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "smollm2_cpu.yaml"
SETTINGS = {
    # max_length: a 1,024-token chunk + its template + 128 new tokens fit; the engine's collapse packs
    # groups to chunk_size (1,024 tokens), the recipe's to token_max (1,000)
    "recipe": {"chunk_size": 1024, "chunk_overlap": 128, "max_new_tokens": 128, "map_max_new_tokens": 128,
               "summary_words": 0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "max_length": 1216},
    "config": {},  # the config file as it is
}
DTYPES = ("float32", "bfloat16")
OWN_FLAGS = ("settings", "dtypes", "row", "longdocs_file", "max_concurrency", "json", "dry_run", "config")


# --- the recipe's run ----------------------------------------------------------------


def recipe_levels(calls: list[dict]) -> list[dict]:
    """The recipe's calls as levels that bench.limit.count_levels reads (prompt tokens whole)."""
    levels = []
    for kind in ("map", "reduce"):
        mine = [call for call in calls if call["kind"] == kind]
        levels.append({"name": kind, "template": "recipe", "inputs": [{"tokens": c["prompt_tokens"]} for c in mine],
                       "outputs": [{"tokens": c["output_tokens"]} for c in mine]})
    return levels


def run_recipe(cfg: Config, model, tokenizer, steps, doc: tuple[str, str],
               max_concurrency: Optional[int] = None) -> tuple[Run, GenerateMeter]:
    """The recipe graph on the engine's chunks of one document (steps: a DocumentSteps), timed."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    calls: list[dict] = []
    count_tokens = steps.chunker.count_tokens
    llms = {kind: pipeline_llm(pipe, cfg, kind, calls, count_tokens) for kind in ("map", "reduce")}
    graph = build_recipe_graph(llms["map"], llms["reduce"], count_tokens)
    contents = [chunk.text for chunk in steps.chunk(doc[1])]  # the engine's own chunks, one pass included
    state, failed = {}, 0
    with GenerateMeter().attach(model) as meter:
        started = time.perf_counter()
        try:
            state = summarize_with_recipe(graph, contents, max_concurrency)
        except Exception as exc:  # a failed recipe is a row marked failed, as a failed engine document is
            failed = 1
            say(f"recipe: {doc[0]} failed: {type(exc).__name__}: {first_line(exc)}")
        seconds = time.perf_counter() - started
    say(f"recipe: {doc[0]}: {len(contents)} chunks, {state.get('collapse_rounds', 0)} collapse round(s), "
        f"{len(calls)} calls in {seconds:.1f}s")
    metered = {k: getattr(meter, k) for k in ("calls", "rows", "prompt_tokens", "steps", "generated_tokens")}
    tally = count_levels(recipe_levels(calls), {"recipe": 0}, cfg)
    run = Run("recipe", seconds, 1, failed, tally, [self_peak_rss_mib()], "this process",
              {"batch_size": 1, "chunks": len(contents), "collapse_rounds": state.get("collapse_rounds", 0),
               "summary": state.get("final_summary"), "metered": metered})
    return run, meter


# --- the plans -----------------------------------------------------------------------


@dataclass
class Plan:
    settings: str  # a SETTINGS key
    dtype: str
    cfg: Config
    flags: dict = field(default_factory=dict)  # the config flags given (and --config)

    @property
    def name(self) -> str:
        return f"{self.settings}/{self.dtype}"

    def command(self) -> str:
        """The command line that runs this plan alone."""
        given = "".join(f" --{key.replace('_', '-')} {_flag_value(value)}" for key, value in self.flags.items())
        return f"python -m bench.bench_langgraph --settings {self.settings} --dtype {self.dtype}{given}"


def _flag_value(value) -> str:
    if value is None:
        return "null"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def build_plans(args: argparse.Namespace) -> list[Plan]:
    """Every settings x dtype, each a validated Config: the file, the settings, the flags given, the dtype."""
    config = args.config or str(DEFAULT_CONFIG)
    index = key_index()
    given = {k: v for k, v in vars(args).items() if k in index and k not in OWN_FLAGS}
    flags = {"config": args.config, **given} if args.config else given
    return [Plan(settings, dtype, load_config(config, {**SETTINGS[settings], **given, "dtype": dtype}), flags)
            for settings in dict.fromkeys(args.settings) for dtype in dict.fromkeys(args.dtypes)]


def pick_document(path: Path, row: int) -> tuple[str, str]:
    """(id, text) of the file's row `row` (1-based), read by bench_longdocs.first_documents."""
    if row < 1:
        raise BenchError(f"--row must be 1 or more, got {row}")
    docs = first_documents(path, row)
    if len(docs) < row:
        raise BenchError(f"{path} has {len(docs)} document(s), no row {row}")
    return docs[row - 1]


def _no_model(prompt) -> str:
    raise RuntimeError("--dry-run loads no model")


def plan_line(i: int, plans: list[Plan], doc: tuple[str, str], row: int, steps, chunks: list, nodes: list[str]) -> str:
    plan = plans[i - 1]
    cfg, mr, gen = plan.cfg, plan.cfg.mapreduce, plan.cfg.generation
    caps = recipe_caps(cfg)
    return (f"plan {i}/{len(plans)} {plan.name}: row {row} {doc[0]} ({steps.chunker.count_tokens(doc[1])} tokens) -> "
            f"{len(chunks)} chunks of {mr.chunk_size}/{mr.chunk_overlap} tokens; new tokens map {caps['map']}, "
            f"other {caps['reduce']}; summary_words {mr.summary_words}; repetition_penalty {gen.repetition_penalty}, "
            f"no_repeat_ngram_size {gen.no_repeat_ngram_size}; dtype {cfg.model.dtype}; model {cfg.model.base_model}"
            f"{' + ' + cfg.model.adapter if cfg.model.adapter else ''}; engine {mr.num_workers or 1} worker(s) x batch "
            f"{gen.generation_batch_size}; recipe {' -> '.join(nodes)}, token_max {TOKEN_MAX}; alone: {plan.command()}")


def dry_run(plans: list[Plan], doc: tuple[str, str], row: int) -> int:
    """Each plan's tokenizer, chunker (its budget check), chunks and recipe graph; one line each."""
    from core.models import load_tokenizer
    from mapreduce.chunking import Chunker
    from mapreduce.document import DocumentSteps

    tokenizers: dict = {}
    chunked: dict = {}
    for i, plan in enumerate(plans, 1):
        model = plan.cfg.model
        key = (model.base_model, model.adapter)
        if key not in tokenizers:
            tokenizers[key] = load_tokenizer(model, padding_side="left")
        steps = DocumentSteps(plan.cfg, Chunker.from_config(tokenizers[key], plan.cfg))
        where = (key, steps.chunker.chunk_size, steps.chunker.chunk_overlap, plan.cfg.prompt_budget)
        if where not in chunked:
            chunked[where] = steps.chunk(doc[1])
        graph = build_recipe_graph(RunnableLambda(_no_model), RunnableLambda(_no_model), steps.chunker.count_tokens)
        nodes = [node for node in graph.get_graph().nodes if not node.startswith("__")]
        print(plan_line(i, plans, doc, row, steps, chunked[where], nodes), flush=True)
    return 0


# --- the runs and the report ---------------------------------------------------------


def run_plan(plan: Plan, doc: tuple[str, str], max_concurrency: Optional[int]) -> dict:
    """The recipe, the limit, then the engine, for one plan; the rows bench_longdocs writes."""
    from dataclasses import asdict

    from mapreduce.chunking import Chunker
    from mapreduce.document import DocumentSteps

    cfg = plan.cfg
    threads = engine_threads(cfg)
    say(f"{plan.name}: recipe and limit with {threads} threads (the engine's actors together)")
    model, tokenizer = load_baseline_model(cfg, threads)
    steps = DocumentSteps(cfg, Chunker.from_config(tokenizer, cfg))
    recipe, meter = run_recipe(cfg, model, tokenizer, steps, doc, max_concurrency)
    limit = measure_limit(model, tokenizer, meter.median_prompt(), cfg, threads)
    del model, meter, steps
    gc.collect()
    engine = run_engine(cfg, [doc])
    rows = [run_row(recipe, limit), run_row(engine, limit), limit_row(engine, limit)]
    shapes = engine.extra["level_shapes"][0]
    return {"plan": plan.name, "settings": plan.settings, "dtype": plan.dtype, "threads": threads,
            "config": cfg.to_dict(), "limit": asdict(limit), "rows": rows,
            "ordered_bound_s": ordered_seconds(shapes, limit), "engine_levels": shapes}


def print_report(results: list[dict]) -> None:
    print(f"{'plan':<17} {'run':<7} {'seconds':>9} {'engine vs recipe':>17} {'share of limit':>15}  "
          "peak RSS per process")
    for result in results:
        recipe_seconds = result["rows"][0]["seconds"]
        for row in result["rows"]:
            ratio = "-" if row["run"] == "limit" else f"{recipe_seconds / row['seconds']:.2f}x"
            failed = f"  ({row['failed']} failed)" if row.get("failed") else ""
            print(f"{result['plan']:<17} {row['run']:<7} {row['seconds']:9.1f} {ratio:>17} "
                  f"{row['share_of_limit']:15.2f}  {_rss_cell(row)}{failed}")
    for result in results:
        limit, recipe = result["limit"], result["rows"][0]
        metered, tokens = recipe["metered"], recipe["tokens"]
        print(f"{result['plan']}: limit prefill {limit['prefill_tokens_per_s']:.0f} prompt tok/s, decode "
              f"{1000 * limit['decode_step_s']:.1f} ms/step at {limit['decode_batch']} rows, {limit['threads']} "
              f"threads, {limit['probe_prompt_tokens']}-token prompt; recipe {recipe['chunks']} chunks, "
              f"{recipe['collapse_rounds']} collapse round(s); its tokens counted vs metered: prompt "
              f"{tokens['prompt_tokens']} vs {metered['prompt_tokens']}, generated {tokens['generated_tokens']} vs "
              f"{metered['generated_tokens']}, texts {tokens['texts']} vs {metered['calls']} generate calls")
    for result in results:
        engine, bound = result["rows"][1], result["ordered_bound_s"]
        levels = ", ".join(f"{lv['name']} {lv['texts']}" for lv in result["engine_levels"])
        print(f"{result['plan']}: the engine's levels in order ({levels} texts) cannot take less than "
              f"{bound:.1f}s here (1-row step {1000 * result['limit']['decode_step_1row_s']:.1f} ms); "
              f"the engine's share of that bound {bound / engine['seconds']:.2f}")


def bench(plans: list[Plan], doc: tuple[str, str], args: argparse.Namespace) -> int:
    results = []
    for i, plan in enumerate(plans, 1):
        say(f"--- plan {i}/{len(plans)}: {plan.name}")
        results.append(run_plan(plan, doc, args.max_concurrency))
    print_report(results)
    write_figures(args.json, {"doc": doc[0], "row": args.row, "plans": results})
    return 0


# --- main ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_langgraph", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS),
                        help="whose settings: the recipe's, the config file's (default: both)")
    parser.add_argument("--dtype", dest="dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="model dtype of both sides (default: both)")
    parser.add_argument("--longdocs-file", default=str(DEFAULT_LONGDOCS),
                        help="JSONL with id, document and summary fields")
    parser.add_argument("--row", type=int, default=2, help="the document: this row of the file (1-based)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="LangGraph's max_concurrency for the recipe's parallel calls (default: LangGraph's)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--dry-run", action="store_true", help="build and print every planned run; load no model")
    add_config_flags(parser, sections=("model", "data", "generation", "mapreduce"), skip=("dtype",))
    return parser


def run_bench(args: argparse.Namespace) -> int:
    plans = build_plans(args)
    doc = pick_document(Path(args.longdocs_file), args.row)
    if args.dry_run:
        return dry_run(plans, doc, args.row)
    return bench(plans, doc, args)


def main(argv: Optional[list[str]] = None) -> int:
    return bench_main(build_parser(), run_bench, argv)


if __name__ == "__main__":
    sys.exit(main())
