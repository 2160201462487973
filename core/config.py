"""One config for every entry point: YAML in, validated dataclasses out.

The YAML file has sections (model, lora, data, training, generation, evaluation,
mapreduce, batch). Every key name is unique across sections, so each key is also a
command-line flag of the same name (`lora_r` <-> `--lora-r`, built by core.flags from the
help text each field carries) and a flag always wins over the file. Validation happens at
load, here and nowhere else: an unknown key, a wrong type or a bad value is one line naming
the key, raised as ConfigError (the CLIs print it without a traceback).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Literal, Optional

import yaml

from core.errors import ConfigError, first_line  # ConfigError is also imported from here
from core.hints import check_type
from core.prompt import DEFAULT_TEMPLATE

# what evaluation.evaluate scores, in its order (the adapter last: merged into the base the others use)
EVAL_SYSTEMS = ("lead3", "base", "base_chat", "adapter")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["none", "4bit", "8bit"]


def knob(default: Any, help: str) -> Any:
    """A config key with its one help text, which its --flag's help reads (litgpt's rule)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    base_model: str = knob("Qwen/Qwen2.5-3B-Instruct", "hub id, local dir, .gguf file or embedded:NAME")
    adapter: Optional[str] = knob(None, "dir of a peft LoRA adapter (null: the base model alone)")
    merge_adapter: bool = knob(True, "merge the adapter into the weights for inference (merge_and_unload)")
    map_adapter: bool = knob(True, "map-reduce: the adapter on map-prompt calls too (false: map zero-shot, merges with it)")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N (auto: CUDA when there is one)")
    dtype: Dtype = knob("auto", "auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU (bf16 inference on bf16 CPUs)")
    quantization: Quantization = knob("none", "bitsandbytes 4bit/8bit weights (CUDA only); none: full weights")
    trust_remote_code: bool = knob(False, "run a hub model's own Python code")
    num_threads: Optional[int] = knob(None, "torch threads on CPU (null: torch's default)")


@dataclass
class LoraConfig:
    lora_r: int = knob(16, "LoRA rank: the adapter's inner width")
    lora_alpha: int = knob(32, "LoRA scale numerator (the update is scaled by alpha / r)")
    lora_dropout: float = knob(0.5, "dropout on the adapter's input, 0..1")
    lora_target_modules: list[str] = knob(["q_proj", "v_proj", "up_proj", "down_proj"], "modules given an adapter")


@dataclass
class DataConfig:
    dataset: list[str] = knob(["cnn_dailymail"], "a hub name, or local .jsonl/.parquet files or dirs: one table")
    dataset_config: Optional[str] = knob("3.0.0", "the hub dataset's config name (unused for local files)")
    train_split: str = knob("train[:260000]", "training rows: a split and an optional slice, e.g. train[:1000]")
    eval_split: Optional[str] = knob("validation[:1000]", "validation rows (null: none); local: a train[a:b] slice")
    eval_dataset: Optional[str] = knob(None, "another source for the validation rows (null: dataset)")
    test_split: str = knob("test", "the rows evaluation scores; of a local dataset: a train[a:b] slice")
    test_dataset: Optional[str] = knob(None, "another source for the test rows (null: dataset)")
    article_field: str = knob("article", "the row field holding the document")
    summary_field: str = knob("highlights", "the row field holding the reference summary")
    id_field: str = knob("id", "the row field holding an example's id (missing: the row number)")
    max_length: int = knob(2048, "tokens of prompt + summary + EOS; the prompt budget is max_length - max_new_tokens")
    prompt_template: str = knob(DEFAULT_TEMPLATE, "the summarization prompt; must hold {article} once")
    merge_examples: int = knob(0, "training only: add this many merge-shaped rows (2-4 consecutive summaries -> "
                                  "their lead sentences at a stated length), for the reduce's prompt; 0: none")


@dataclass
class TrainingConfig:
    output_dir: str = knob("outputs/adapter", "where the adapter, checkpoints, logs and loss.png go")
    learning_rate: float = knob(1e-5, "peak learning rate")
    lr_scheduler_type: str = knob("cosine", "a transformers schedule name: cosine, linear, constant, ...")
    warmup_steps: int = knob(100, "optimizer steps of linear warmup")
    weight_decay: float = knob(0.01, "AdamW weight decay")
    per_device_train_batch_size: int = knob(1, "training rows per device per micro-batch")
    per_device_eval_batch_size: int = knob(1, "validation rows per device per batch")
    gradient_accumulation_steps: int = knob(4, "micro-batches per optimizer step")
    num_train_epochs: float = knob(1.0, "passes over the training rows (unless max_steps is set)")
    max_steps: int = knob(-1, "optimizer steps to train (-1: num_train_epochs decides)")
    eval_steps: int = knob(1000, "optimizer steps between validations")
    save_steps: int = knob(1000, "optimizer steps between checkpoints")
    logging_steps: int = knob(10, "optimizer steps between training-loss log entries")
    save_total_limit: Optional[int] = knob(3, "checkpoints kept (null: all)")
    optim: str = knob("paged_adamw_8bit", "a transformers optimizer (bitsandbytes ones: adamw_torch on CPU)")
    max_grad_norm: float = knob(1.0, "gradient clipping norm")
    gradient_checkpointing: bool = knob(False, "recompute activations in the backward pass: less memory, slower")
    early_stopping_patience: Optional[int] = knob(None, "stop after this many validations with no gain (null: never)")
    rouge_eval_examples: int = knob(0, "summarize this many validation rows at each validation, keep the best ROUGE-L (0: loss only)")
    group_by_length: bool = knob(True, "batches of similar length: less padding to train on")
    seed: int = knob(42, "seed of the shuffle, the dropout and the merge rows")
    resume: bool = knob(False, "continue from the last checkpoint in output_dir")


@dataclass
class GenerationConfig:
    max_new_tokens: int = knob(100, "tokens a summary may have (also the room training leaves for it)")
    generation_batch_size: int = knob(8, "prompts per generate call")
    min_new_tokens: int = knob(0, "tokens before EOS is allowed (0: no floor)")
    num_beams: int = knob(1, "beam width (1: greedy)")
    length_penalty: float = knob(1.0, "beam search only: > 1 favours longer summaries")
    repetition_penalty: float = knob(1.0, "penalty on tokens already generated, never on the prompt (1: off)")
    no_repeat_ngram_size: int = knob(0, "no n-gram of this size twice in the generated tokens (0: off)")


@dataclass
class EvaluationConfig:
    eval_output_dir: str = knob("outputs/eval", "where results, per-example scores and the generation log go")
    num_examples: Optional[int] = knob(None, "score the first N test rows (null: all)")
    systems: list[str] = knob(["lead3", "base", "adapter"], f"systems to score, of {', '.join(EVAL_SYSTEMS)}")
    bertscore_model: str = knob("roberta-large", "BERTScore encoder: a hub id, a local dir or embedded:minilm")
    bertscore_num_layers: Optional[int] = knob(17, "the encoder layer BERTScore reads (null: bert_score's default)")
    bootstrap_samples: int = knob(1000, "resamples for the 95% confidence intervals")
    whole_template: Optional[str] = knob(None, "longdocs' whole-document prompt, with {words}, {article} (null: core.prompt.WHOLE_TEMPLATE)")


@dataclass
class MapReduceConfig:
    chunk_size: int = knob(1800, "tokens of document text per map chunk (must fit the prompt budget)")
    chunk_overlap: int = knob(150, "tokens two neighbouring chunks share, so no sentence is lost at a cut")
    reduce_template: Optional[str] = knob(None, "prompt for joined partial summaries (null: prompt_template)")
    summary_words: int = knob(0, "about how many words a long document's summary may have: the reduce keeps the "
                                 "parts' summaries, else their lead sentences, in order (0: one short summary)")
    min_support: float = knob(0.5, "leave out a chunk summary's sentence when less than this share of its content "
                                   "words occurs in the chunk (an invented sentence); 0: keep every sentence")
    max_reduce_depth: int = knob(4, "collapse levels at most before a document fails")
    map_max_new_tokens: Optional[int] = knob(None, "new tokens per chunk summary, capped at max_new_tokens (null: it)")
    num_workers: Optional[int] = knob(None, "Ray actors (null: one per GPU, or one on CPU)")
    num_gpus_per_worker: float = knob(1.0, "GPUs per actor: a fraction shares a GPU")
    num_cpus_per_worker: float = knob(1.0, "CPUs per actor (its torch threads on CPU)")
    ray_address: Optional[str] = knob(None, "Ray cluster address (null: $RAY_ADDRESS, else a local cluster)")
    max_task_retries: int = knob(2, "Ray retries of a failed or lost actor call")
    call_timeout_s: float = knob(1800.0, "seconds one call may take, else retried alone, then failed (0: no limit)")
    start_timeout_s: float = knob(900.0, "seconds to wait for a worker to load its model (0: no limit)")
    worker_logs: bool = knob(False, "show the Ray workers' own output (model loading, warnings, tracebacks) on stderr")
    max_document_tokens: int = knob(500_000, "refuse documents above this many tokens (0: no limit)")
    reduce: Literal["select", "merge"] = knob("select", "with summary_words, how the chunks' summaries become one: select = their sentences "
                                 "in order, no model call; merge = the model merges groups of merge_fanin "
                                 "consecutive summaries, level by level, in order, the last merge to summary_words")
    merge_fanin: int = knob(4, "merge: consecutive summaries per merge call (>= 2)")
    merge_final_parts: int = knob(1, "merge: the last level may have up to this many merges, each of its share of "
                                     "summary_words, joined in order (1: one final merge of everything)")
    merge_template: Optional[str] = knob(None, "merge prompt, holding {words} and {article} (null: core.prompt.MERGE_TEMPLATE)")
    merge_tokens_per_word: float = knob(1.5, "merge: a merge call's new-token cap per word asked (words x this + 16)")


@dataclass
class BatchConfig:
    text_field: str = knob("document", "the input JSONL field holding a document's text")
    max_docs_in_flight: int = knob(16, "documents the batch job keeps open at once")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    mapreduce: MapReduceConfig = field(default_factory=MapReduceConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens at inference: what training left for the prompt beside the summary."""
        return self.data.max_length - self.generation.max_new_tokens

    @property
    def map_token_cap(self) -> Optional[int]:
        """New tokens for a map call: map_max_new_tokens, never above max_new_tokens (None: unset)."""
        cap = self.mapreduce.map_max_new_tokens
        return None if cap is None else min(cap, self.generation.max_new_tokens)


def section_classes() -> dict[str, type]:
    """section name -> its dataclass, in file order."""
    return typing.get_type_hints(Config)


def key_index() -> dict[str, tuple[str, Any]]:
    """key -> (section, type hint); keys are unique across sections by design."""
    index: dict[str, tuple[str, Any]] = {}
    for section, cls in section_classes().items():
        for key, hint in typing.get_type_hints(cls).items():
            assert key not in index, f"duplicate config key {key}"
            index[key] = (section, hint)
    return index


def key_help(cls: type) -> dict[str, str]:
    """key -> its one help text (the field's metadata)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


# --- value checks, one per section -----------------------------------------------------

# A floor under the prompt budget, checked at load (no tokenizer yet); core.prompt.check_template_fits measures later.
PROMPT_BUDGET_FLOOR = 16


def _require(ok: bool, key: str, need: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' must be {need}, got {value}")


def _check_data(cfg: Config) -> None:
    d, g = cfg.data, cfg.generation
    _check_template("prompt_template", d.prompt_template)
    if cfg.prompt_budget <= PROMPT_BUDGET_FLOOR:
        raise ConfigError(f"config key 'max_length' ({d.max_length}) must exceed max_new_tokens ({g.max_new_tokens}) "
                          f"by more than {PROMPT_BUDGET_FLOOR} tokens (the least room for a prompt)")
    _require(d.merge_examples >= 0, "merge_examples", ">= 0", d.merge_examples)


def _check_training(cfg: Config) -> None:
    t, has_eval = cfg.training, bool(cfg.data.eval_split)
    _require(cfg.lora.lora_r > 0, "lora_r", "positive", cfg.lora.lora_r)
    _require(t.rouge_eval_examples >= 0, "rouge_eval_examples", ">= 0", t.rouge_eval_examples)
    _require(t.max_steps == -1 or t.max_steps > 0, "max_steps", "a positive number of steps, or -1 (num_train_epochs decides)", t.max_steps)
    _require(t.num_train_epochs > 0, "num_train_epochs", "positive", t.num_train_epochs)
    selecting = {"early_stopping_patience": t.early_stopping_patience is not None,
                 "rouge_eval_examples": t.rouge_eval_examples > 0}
    for key in (k for k, on in selecting.items() if on):
        if not has_eval:
            raise ConfigError(f"config key '{key}' needs an eval_split (validation rows)")
        if t.save_steps % t.eval_steps:
            raise ConfigError(
                f"config key '{key}' needs save_steps ({t.save_steps}) "
                f"to be a multiple of eval_steps ({t.eval_steps}): the best checkpoint must be saved"
            )


def _check_generation(cfg: Config) -> None:
    g = cfg.generation
    for key in ("max_new_tokens", "generation_batch_size", "num_beams", "repetition_penalty"):
        _require(getattr(g, key) > 0, key, "positive", getattr(g, key))
    for key in ("min_new_tokens", "no_repeat_ngram_size"):
        _require(getattr(g, key) >= 0, key, ">= 0", getattr(g, key))
    _require(g.min_new_tokens <= g.max_new_tokens, "min_new_tokens", f"at most max_new_tokens ({g.max_new_tokens})", g.min_new_tokens)


def _check_evaluation(cfg: Config) -> None:
    e = cfg.evaluation
    if not e.systems:
        raise ConfigError("config key 'systems' is empty")
    for name in e.systems:
        if name not in EVAL_SYSTEMS:
            raise ConfigError(f"config key 'systems' has unknown system {name!r} (choose from {', '.join(EVAL_SYSTEMS)})")
    _require(e.bootstrap_samples > 0, "bootstrap_samples", "positive", e.bootstrap_samples)
    _require(e.num_examples is None or e.num_examples > 0, "num_examples", "positive (null: all)", e.num_examples)
    _check_template("whole_template", e.whole_template, with_words=True)


def _check_template(key: str, text: Optional[str], with_words: bool = False) -> None:
    """A prompt holds its text once ({article}), and its word budget ({words}) where one is asked."""
    if text is not None and (text.count("{article}") != 1 or (with_words and "{words}" not in text)):
        raise ConfigError(f"config key '{key}' must contain '{{article}}' exactly once" + (" and {words}" if with_words else ""))


def check_chunk_overlap(chunk_size: int, chunk_overlap: int) -> None:
    """Chunks advance by chunk_size - chunk_overlap tokens: that must be positive."""
    _require(0 <= chunk_overlap < chunk_size, "chunk_overlap", f">= 0 and below chunk_size ({chunk_size})", chunk_overlap)


def _check_mapreduce(cfg: Config) -> None:
    mr = cfg.mapreduce
    _check_template("reduce_template", mr.reduce_template)
    _check_template("merge_template", mr.merge_template, with_words=True)
    for key in ("chunk_size", "max_reduce_depth", "merge_tokens_per_word"):
        _require(getattr(mr, key) > 0, key, "positive", getattr(mr, key))
    check_chunk_overlap(mr.chunk_size, mr.chunk_overlap)
    for key in ("call_timeout_s", "start_timeout_s", "max_document_tokens"):
        _require(getattr(mr, key) >= 0, key, ">= 0 (0: no limit)", getattr(mr, key))
    _require(0 <= mr.min_support <= 1, "min_support", "in [0, 1] (0: keep every sentence)", mr.min_support)
    _require(mr.summary_words >= 0, "summary_words", ">= 0 (0: one short summary)", mr.summary_words)
    _require(mr.num_workers is None or mr.num_workers > 0, "num_workers", "positive", mr.num_workers)
    for key, least in (("merge_fanin", 2), ("merge_final_parts", 1)):
        _require(getattr(mr, key) >= least, key, f">= {least}", getattr(mr, key))
    cap = mr.map_max_new_tokens
    _require(cap is None or cap > 0, "map_max_new_tokens", "positive (null: max_new_tokens)", cap)
    _check_worker_resources(mr, cfg.model.device)


def _check_worker_resources(mr: MapReduceConfig, device: str) -> None:
    """Ray accepts none of these (or only with a traceback): refuse them before it starts."""
    cpus, gpus = mr.num_cpus_per_worker, mr.num_gpus_per_worker
    need = "positive with device cpu (the actor's threads)" if device == "cpu" else ">= 0"
    _require(cpus > 0 if device == "cpu" else cpus >= 0, "num_cpus_per_worker", need, f"{cpus:g}")
    _require(gpus >= 0, "num_gpus_per_worker", ">= 0", f"{gpus:g}")
    _require(gpus <= 1 or float(gpus).is_integer(), "num_gpus_per_worker",
             "a fraction up to 1 (GPU sharing) or a whole number", f"{gpus:g}")
    _require(mr.max_task_retries >= 0, "max_task_retries", ">= 0", mr.max_task_retries)


def _check_map_tokens(cfg: Config, explicit: Collection[str]) -> None:
    """A map call is capped at max_new_tokens (Config.map_token_cap); only two flags can contradict."""
    cap, most = cfg.mapreduce.map_max_new_tokens, cfg.generation.max_new_tokens
    if cap is not None and cap > most and {"map_max_new_tokens", "max_new_tokens"} <= set(explicit):
        raise ConfigError(
            f"config keys 'map_max_new_tokens' and 'max_new_tokens' contradict: --map-max-new-tokens {cap} vs "
            f"--max-new-tokens {most} (a chunk's summary cannot exceed max_new_tokens); lower or drop one"
        )


_SECTION_CHECKS = (_check_data, _check_training, _check_generation, _check_evaluation, _check_mapreduce)


def check_values(cfg: Config, explicit: Collection[str] = ()) -> None:
    """Cross-field checks a type alone cannot express; `explicit`: the keys given as flags/overrides."""
    for check in _SECTION_CHECKS:
        check(cfg)
    _check_map_tokens(cfg, explicit)


# --- loading ---------------------------------------------------------------------------


def config_from_dict(raw: dict[str, Any] | None, source: str = "config", explicit: Collection[str] = ()) -> Config:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    classes = section_classes()
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in classes:
            raise ConfigError(f"{source}: unknown section '{section}' (expected one of {', '.join(classes)})")
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        hints = typing.get_type_hints(classes[section])
        checked = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{key}' in section '{section}'")
            checked[key] = check_type(key, value, hints[key])
        sections[section] = classes[section](**checked)
    cfg = Config(**sections)
    check_values(cfg, explicit)
    return cfg


def yaml_file(path: Path) -> Any:
    """A YAML file's content; ConfigError (one line) if unreadable, not UTF-8 or not YAML."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); is it a YAML file?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None


def _with_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> Config:
    index = key_index()
    for key, value in overrides.items():
        if key not in index:
            raise ConfigError(f"unknown config key '{key}'")
        section = index[key][0]
        raw[section] = raw.get(section) or {}
        raw[section][key] = value
    return config_from_dict(raw, source, explicit=overrides)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Load YAML (None: all defaults), apply flat `key: value` overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = yaml_file(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    return _with_overrides(raw, dict(overrides or {}), source)


def replace_config(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of cfg with flat `key: value` overrides, validated like a load."""
    return _with_overrides(cfg.to_dict(), dict(overrides), "config")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
