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
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.config import EVAL_SYSTEMS, Config, ConfigError, add_config_flags, config_from_args
from core.data import DataError, load_rows
from core.errors import ModelError, UserError, first_line
from core.signals import sigterm_as_interrupt

log = logging.getLogger("evaluate")

MODEL_SYSTEMS = tuple(s for s in EVAL_SYSTEMS if s != "lead3")  # in generation order: adapter last
DISPLAY_NAMES = {
    "lead3": "LEAD-3",
    "base": "Base",
    "base_chat": "Base (chat template)",
    "adapter": "Base + adapter",
}
METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_f1", "words")
TABLE_COLUMNS = ("ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "BERTScore F1", "Avg Gen Length")
BOOTSTRAP_SEED = 0
GENERATIONS_FILE = "generations.jsonl"


@dataclass
class Example:
    id: str
    article: str
    reference: str


# --- data -----------------------------------------------------------------------------


def load_examples(cfg: Config) -> list[Example]:
    """Test rows as Examples, first `num_examples` of them; empty ones are kept (and fail later)."""
    d = cfg.data
    source = d.test_dataset or d.dataset
    rows = load_rows(source, d.test_split, d.dataset_config)
    for name in (d.article_field, d.summary_field):
        if name not in rows.column_names:
            raise DataError(f"field '{name}' not in {source} (columns: {', '.join(rows.column_names)})")
    n = cfg.evaluation.num_examples
    if n is not None:
        if n <= 0:
            raise ConfigError(f"config key 'num_examples' must be positive, got {n}")
        rows = rows.select(range(min(n, len(rows))))
    has_ids = d.id_field in rows.column_names
    examples = []
    for i, row in enumerate(rows):
        article, reference = row[d.article_field], row[d.summary_field]
        examples.append(
            Example(
                id=str(row[d.id_field]) if has_ids else str(i),
                article=article if isinstance(article, str) else "",
                reference=reference if isinstance(reference, str) else "",
            )
        )
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise DataError(f"field '{d.id_field}' of {source} has duplicate ids (resume keys on them)")
    if not examples:
        raise DataError(f"test split {d.test_split!r} of {source} has no rows")
    return examples


def check_example(ex: Example) -> None:
    """Raise ValueError for an example that cannot be summarized or scored."""
    if not ex.article.strip():
        raise ValueError("empty article")
    if not ex.reference.strip():
        raise ValueError("empty reference")


# --- the resumable generations log ----------------------------------------------------


def system_setup(cfg: Config, system: str) -> str:
    """A short hash of every setting that changes a system's outputs (resume reuses only matches)."""
    from evaluation.metrics import sentence_splitter_name

    if system == "lead3":
        settings: dict = {"splitter": sentence_splitter_name()}
    else:
        m, g = cfg.model, cfg.generation
        settings = {
            "base_model": m.base_model,
            "quantization": m.quantization,
            "template": "chat" if system == "base_chat" else cfg.data.prompt_template,
            "max_length": cfg.data.max_length,
            "dtype": [m.dtype, m.device],
            # repetition control over generated tokens only (not the old whole-input one)
            "generation": {k: v for k, v in dataclasses.asdict(g).items() if k != "generation_batch_size"},
            "decoding": "generated-only-v2",
        }
        if system == "adapter":
            weights = sorted(Path(m.adapter or "").expanduser().glob("adapter_model.*"))
            settings["adapter"] = [str(Path(m.adapter or "").expanduser().resolve()), m.merge_adapter]
            settings["adapter_mtime"] = [w.stat().st_mtime_ns for w in weights]
    settings["system"] = system
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def read_generations(path: Path, setups: dict[str, str]) -> dict[tuple[str, str], dict]:
    """(system, id) -> its latest successful record made with the current settings."""
    done: dict[tuple[str, str], dict] = {}
    if not path.exists():
        return done
    stale = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                key = (rec["system"], rec["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by an interruption
            if rec.get("setup") != setups.get(rec["system"]):
                stale += rec["system"] in setups
                continue
            if rec.get("error") is None:
                done[key] = rec
    if stale:
        log.warning("ignoring %d earlier outputs in %s made with other settings", stale, path)
    return done


def open_for_append(path: Path):
    """Append mode, after ending a line that a crash cut short.

    Otherwise the first new record is glued onto the half line, and both are unreadable.
    """
    file = path.open("a", encoding="utf-8")
    if file.tell() > 0:
        with path.open("rb") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                file.write("\n")
    return file


class GenerationsLog:
    """Append-only JSONL, flushed after every batch so an interruption loses at most one."""

    def __init__(self, path: Path, setups: dict[str, str]):
        self.file = open_for_append(path)
        self.setups = setups
        self.records: dict[tuple[str, str], dict] = {}

    def add(self, system: str, ex: Example, output: Optional[str] = None, error: Optional[str] = None) -> None:
        rec = {"system": system, "id": ex.id, "setup": self.setups[system], "output": output, "error": error}
        self.file.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.records[(system, ex.id)] = rec

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


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


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def score_all(cfg: Config, examples: list[Example], records: dict, systems: list[str], encoder: tuple[str, int]):
    """Per-example scores {(system, id): {metric: value}} and errors {(system, id): msg}."""
    from core.models import resolve_device
    from evaluation.metrics import bertscore_f1, rouge_scores, word_count

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


def summarize(cfg: Config, examples: list[Example], systems: list[str], scores: dict, errors: dict) -> dict:
    from evaluation.metrics import bootstrap_ci, sentence_splitter_name, word_count

    samples = cfg.evaluation.bootstrap_samples
    result: dict = {
        "num_examples": len(examples),
        "dataset": cfg.data.test_dataset or ", ".join(cfg.data.dataset),
        "split": cfg.data.test_split,
        "bertscore_encoder": cfg.evaluation.bertscore_model,
        "bertscore_num_layers": cfg.evaluation.bertscore_num_layers,
        "sentence_splitter": sentence_splitter_name(),
        "avg_reference_words": _mean(word_count(e.reference) for e in examples if e.reference.strip()),
        "systems": {},
        "improvements": {},
    }
    for system in systems:
        rows = [scores[(system, e.id)] for e in examples if (system, e.id) in scores]
        summary = {m: _mean(r[m] for r in rows) for m in METRICS}
        summary["rougeL_ci95"] = list(bootstrap_ci([r["rougeL"] for r in rows], samples, seed=BOOTSTRAP_SEED))
        summary["num_scored"] = len(rows)
        summary["num_failed"] = sum(1 for e in examples if (system, e.id) in errors)
        result["systems"][system] = summary
    for baseline in ("base", "base_chat"):
        if "adapter" in systems and baseline in systems:
            ids = [e.id for e in examples if ("adapter", e.id) in scores and (baseline, e.id) in scores]
            diffs = {m: [scores[("adapter", i)][m] - scores[(baseline, i)][m] for i in ids] for m in METRICS}
            delta = {m: _mean(v) for m, v in diffs.items()}
            delta["rougeL_ci95"] = list(bootstrap_ci(diffs["rougeL"], samples, seed=BOOTSTRAP_SEED))
            delta["num_paired"] = len(ids)
            result["improvements"][f"adapter_minus_{baseline}"] = delta
    return result


# --- reports --------------------------------------------------------------------------


def _fmt(value: float, signed: bool = False, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_table(result: dict) -> str:
    lines = ["| Model | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]

    def row(name: str, values: dict, signed: bool = False) -> str:
        cells = [_fmt(values[m], signed) for m in METRICS[:-1]] + [_fmt(values["words"], signed, 1)]
        return f"| {name} | " + " | ".join(cells) + " |"

    for system, values in result["systems"].items():
        lines.append(row(DISPLAY_NAMES[system], values))
    for key, delta in result["improvements"].items():
        baseline = key.removeprefix("adapter_minus_")
        lines.append(row(f"Improvement (adapter − {baseline.replace('_', ' ')})", delta, signed=True))
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    notes = [
        f"{result['num_examples']} examples from {result['dataset']} ({result['split']}); "
        f"references average {_fmt(result['avg_reference_words'], digits=1)} words.",
        f"BERTScore F1: encoder {result['bertscore_encoder']}, layer {result['bertscore_num_layers']}, "
        f"no baseline rescaling. ROUGE: rouge_score with stemming; Lsum on sentences split by {result['sentence_splitter']}.",
    ]
    for system, values in result["systems"].items():
        lo, hi = values["rougeL_ci95"]
        failed = f"; {values['num_failed']} failed (excluded)" if values["num_failed"] else ""
        notes.append(f"{DISPLAY_NAMES[system]}: ROUGE-L 95% CI [{_fmt(lo)}, {_fmt(hi)}], {values['num_scored']} scored{failed}.")
    for key, delta in result["improvements"].items():
        lo, hi = delta["rougeL_ci95"]
        notes.append(
            f"Adapter − {key.removeprefix('adapter_minus_')}: ROUGE-L difference 95% paired bootstrap CI "
            f"[{_fmt(lo, True)}, {_fmt(hi, True)}] over {delta['num_paired']} examples."
        )
    return markdown_table(result) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _no_nan(value):
    """NaN (a system with nothing scored) as null: results.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def write_per_example(path: Path, examples, systems, records, scores, errors) -> None:
    tmp = path.with_suffix(".jsonl.partial")
    with tmp.open("w") as f:
        for ex in examples:
            entry: dict = {"id": ex.id, "reference": ex.reference, "systems": {}}
            for system in systems:
                key = (system, ex.id)
                if key in errors:
                    entry["systems"][system] = {"error": errors[key]}
                else:
                    entry["systems"][system] = {"output": records[key]["output"], **scores[key]}
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    tmp.replace(path)


# --- the program ----------------------------------------------------------------------


def check_setup(cfg: Config) -> tuple[str, int]:
    """Fail on bad settings before any generation; returns the BERTScore (model_type, layer)."""
    from core.models import check_adapter_dir, resolve_model_path
    from evaluation.metrics import resolve_bertscore_encoder

    systems = cfg.evaluation.systems
    if not systems:
        raise ConfigError("config key 'systems' is empty")
    if cfg.evaluation.bootstrap_samples <= 0:
        raise ConfigError("config key 'bootstrap_samples' must be positive")
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
    result = summarize(cfg, examples, systems, scores, errors)
    result["config"] = cfg.to_dict()
    write_per_example(out_dir / "per_example.jsonl", examples, systems, records, scores, errors)
    (out_dir / "results.json").write_text(json.dumps(_no_nan(result), indent=2, ensure_ascii=False) + "\n")
    report = markdown_report(result)
    (out_dir / "results.md").write_text(report)
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
        epilog="Offline: --dataset ../shared/data/cnndm/test.jsonl --bertscore-model embedded:minilm --bertscore-num-layers 6",
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
