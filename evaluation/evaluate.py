"""Score LEAD-3, the base model and base + adapter on CNN/DailyMail test articles.

    python -m evaluation.evaluate --config configs/smollm2_cpu.yaml --adapter DIR --num-examples 50
    summarizer evaluate ...                      # the same program

Every model sees exactly the prompt and truncation of training (core.prompt, budget
max_length - max_new_tokens) and generates greedily in length-sorted, left-padded batches
(core.generation). `base_chat` is the base model asked through its own chat template, a
fairer baseline for Instruct models. The base model is loaded once: its systems run
first, then the adapter is merged into it for the `adapter` system.

Files in eval_output_dir:
    generations.jsonl   one line per (system, id), appended and flushed per batch. A rerun
                        reads it and generates only what is missing (resume), and only
                        reuses lines made with the same settings (model, adapter, prompt,
                        generation keys).
    per_example.jsonl   one line per article: reference, each system's output and scores,
                        or its error; for reading the worst cases.
    results.json        means, 95% bootstrap intervals, failures, the encoder, the config.
    results.md          the table below, also printed.

An example that cannot be summarized (empty article or reference, a failing batch retried
alone) is recorded with its error, left out of the metrics and counted in the report.

This module runs generation and scoring; the examples are evaluation.examples', the
resumable log evaluation.generations_log's, and the aggregation and files evaluation.report's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.config import EVAL_SYSTEMS, Config, ConfigError
from core.flags import add_config_flags, config_from_args
from core.errors import ModelError, UserError, first_line
from core.signals import sigterm_as_interrupt
from evaluation.examples import Example, check_example, load_examples
from evaluation.generations_log import GENERATIONS_FILE, GenerationsLog, read_generations, system_setup
from evaluation.report import aggregate_scores, write_reports

log = logging.getLogger("evaluate")

MODEL_SYSTEMS = tuple(s for s in EVAL_SYSTEMS if s != "lead3")  # in generation order: adapter last


# --- generation -----------------------------------------------------------------------


def _progress(system: str, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{system:>9}", unit="ex", file=sys.stderr, dynamic_ncols=True)


def run_lead3(todo: list[Example], out: GenerationsLog) -> None:
    from evaluation.lead3 import lead3

    for ex in todo:
        try:
            check_example(ex)
            out.add("lead3", ex, output=lead3(ex.article))
        except ValueError as exc:
            out.add("lead3", ex, error=str(exc))
    out.flush()


def run_model_system(system: str, model, tokenizer, template: str, todo: list[Example], cfg: Config, out: GenerationsLog) -> None:
    """Generate for every example in `todo`, batch by batch, logging each finished batch."""
    from core.generation import generate_isolated
    from core.prompt import build_prompt_ids

    examples, prompts = [], []
    with _progress(system, len(todo)) as bar:
        for ex in todo:
            try:
                check_example(ex)
                prompts.append(build_prompt_ids(tokenizer, ex.article, cfg.prompt_budget, template))
                examples.append(ex)
            except ValueError as exc:
                out.add(system, ex, error=str(exc))
                bar.update(1)
        out.flush()

        def batch_done(batch: list[int], outcomes: list) -> None:
            for i, (text, error) in zip(batch, outcomes):
                out.add(system, examples[i], output=text, error=error)
            out.flush()
            bar.update(len(batch))

        generate_isolated(model, tokenizer, prompts, cfg.generation, on_batch_done=batch_done)


def _prompt_template(system: str, tokenizer, cfg: Config) -> str:
    from core.prompt import chat_template, check_template_fits

    if system == "base_chat":
        try:
            template = chat_template(tokenizer)
        except ValueError as exc:
            raise ConfigError(f"system 'base_chat': {exc}") from None
    else:
        template = cfg.data.prompt_template
    check_template_fits(tokenizer, template, cfg.prompt_budget, f"system '{system}': an article")
    return template


def generate_all(cfg: Config, todo: dict[str, list[Example]], out: GenerationsLog) -> None:
    """LEAD-3, then the base model's systems, then the adapter merged into the same model."""
    from core.models import attach_adapter, load_base_model, load_tokenizer, merges_adapter

    if todo.get("lead3"):
        run_lead3(todo["lead3"], out)
    wanted = [s for s in MODEL_SYSTEMS if todo.get(s)]
    if not wanted:
        return
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    templates = {s: _prompt_template(s, tokenizer, cfg) for s in wanted}
    log.info("loading base model %s", cfg.model.base_model)
    model = load_base_model(cfg.model)
    for system in wanted:
        if system == "adapter":
            log.info("merging adapter %s", cfg.model.adapter)
            model = attach_adapter(model, cfg.model.adapter, merge=merges_adapter(cfg.model))
        run_model_system(system, model, tokenizer, templates[system], todo[system], cfg, out)


# --- scoring --------------------------------------------------------------------------


def score_all(cfg: Config, examples: list[Example], records: dict, systems: list[str], encoder: tuple[str, int]):
    """Per-example scores {(system, id): {metric: value}} and errors {(system, id): msg}."""
    from core.models import resolve_device
    from core.rouge import rouge_scores, word_count
    from evaluation.metrics import bertscore_f1

    scores: dict[tuple[str, str], dict] = {}
    errors: dict[tuple[str, str], str] = {}
    pairs = []
    for system in systems:
        for ex in examples:
            rec = records.get((system, ex.id))
            if rec is None or rec.get("error") is not None:
                errors[(system, ex.id)] = rec["error"] if rec else "not generated"
                continue
            output = rec["output"] or ""
            scores[(system, ex.id)] = {**rouge_scores(output, ex.reference), "words": word_count(output)}
            pairs.append(((system, ex.id), output, ex.reference))
    if pairs:
        log.info("BERTScore of %d outputs with %s (layer %d)", len(pairs), cfg.evaluation.bertscore_model, encoder[1])
        device = str(resolve_device(cfg.model.device))
        f1 = bertscore_f1([p[1] for p in pairs], [p[2] for p in pairs], encoder[0], encoder[1], device=device)
        for (key, _, _), value in zip(pairs, f1):
            scores[key]["bertscore_f1"] = value
    return scores, errors


# --- the program ----------------------------------------------------------------------


def check_setup(cfg: Config) -> tuple[str, int]:
    """Fail on bad settings before any generation; returns the BERTScore (model_type, layer)."""
    from core.models import check_adapter_dir, resolve_model_path
    from evaluation.metrics import resolve_bertscore_encoder

    systems = cfg.evaluation.systems
    if "adapter" in systems:
        if not cfg.model.adapter:
            raise ConfigError("system 'adapter' needs config key 'adapter' (--adapter DIR)")
        check_adapter_dir(cfg.model.adapter)
    if any(s in MODEL_SYSTEMS for s in systems):
        resolve_model_path(cfg.model.base_model)
    model_type, layer = resolve_bertscore_encoder(cfg.evaluation.bertscore_model, cfg.evaluation.bertscore_num_layers)
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(model_type)
    except Exception as exc:
        raise ModelError(
            f"cannot load BERTScore encoder {cfg.evaluation.bertscore_model!r}: "
            f"{first_line(exc)} "
            "(offline? use --bertscore-model embedded:minilm --bertscore-num-layers 6)"
        ) from None
    return model_type, layer


def evaluate(cfg: Config) -> dict:
    """The whole evaluation; returns the results dict (also written to eval_output_dir)."""
    encoder = check_setup(cfg)
    systems = list(dict.fromkeys(cfg.evaluation.systems))
    examples = load_examples(cfg)
    out_dir = Path(cfg.evaluation.eval_output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setups = {s: system_setup(cfg, s) for s in systems}
    log_path = out_dir / GENERATIONS_FILE
    done = read_generations(log_path, setups)
    todo = {s: [e for e in examples if (s, e.id) not in done] for s in systems}
    reused = sum(len(examples) - len(t) for t in todo.values())
    if reused:
        log.info("resuming: %d outputs already in %s", reused, log_path)
    out = GenerationsLog(log_path, setups)
    try:
        generate_all(cfg, todo, out)
    finally:
        out.close()
    records = {**done, **out.records}
    scores, errors = score_all(cfg, examples, records, systems, encoder)
    result = aggregate_scores(cfg, examples, systems, scores, errors)
    result["config"] = cfg.to_dict()
    report = write_reports(out_dir, examples, systems, records, scores, errors, result)
    print(report)
    log.info("wrote %s/{results.json,results.md,per_example.jsonl,%s}", out_dir, GENERATIONS_FILE)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.evaluate",
        description=(
            "Evaluate LEAD-3, the base model (training prompt, and optionally its chat template) and "
            "base + LoRA adapter on CNN/DailyMail test articles: ROUGE-1/2/L/Lsum, BERTScore F1, "
            "output length, bootstrap intervals. Writes results.json, results.md, per_example.jsonl "
            "and a resumable generations.jsonl to eval_output_dir; rerunning resumes."
        ),
        epilog="Offline: --test-dataset ../shared/data/cnndm/test.jsonl --bertscore-model embedded:minilm --bertscore-num-layers 6",
    )
    add_config_flags(
        parser,
        sections=("model", "data", "generation", "evaluation"),
        skip=("train_split", "eval_split", "eval_dataset"),
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sigterm_as_interrupt()  # docker stop / timeout: the same clean exit as Ctrl-C
    try:
        evaluate(config_from_args(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished batches are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
