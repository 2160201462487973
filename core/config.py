"""One config for every entry point: YAML in, validated dataclasses out, CLI flags on top.

The YAML file has sections (model, lora, data, training, generation, evaluation,
mapreduce, batch). Every key name is unique across sections, so each key is also a
command-line flag of the same name (`lora_r` <-> `--lora-r`) and a flag always wins over
the file. Validation happens at load: an unknown key or a wrong type is one line naming
the key, raised as ConfigError (the CLIs print it without a traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from core.errors import ConfigError, first_line  # ConfigError is also imported from here
from core.prompt import DEFAULT_TEMPLATE

# the systems evaluation.evaluate scores, in the order it generates them (the adapter last:
# it is merged into the base model the systems before it use)
EVAL_SYSTEMS = ("lead3", "base", "base_chat", "adapter")


@dataclass
class ModelConfig:
    base_model: str = "Qwen/Qwen2.5-3B-Instruct"  # hub id, local dir, or a .gguf file
    adapter: Optional[str] = None  # dir of a peft LoRA adapter
    merge_adapter: bool = True  # merge_and_unload for inference
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (CUDA: bf16, fp16 without bf16; CPU: fp32, bf16 for inference on native-bf16 CPUs) | float32 | bfloat16 | float16
    quantization: str = "none"  # none | 4bit | 8bit (bitsandbytes, CUDA only)
    trust_remote_code: bool = False
    num_threads: Optional[int] = None  # torch.set_num_threads on CPU


@dataclass
class LoraConfig:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.5
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj", "up_proj", "down_proj"]
    )


@dataclass
class DataConfig:
    # a hub name, or local .jsonl/.jsonl.gz/.parquet files or dirs (read in order, as one)
    dataset: list[str] = field(default_factory=lambda: ["cnn_dailymail"])
    dataset_config: Optional[str] = "3.0.0"
    train_split: str = "train[:260000]"
    eval_split: Optional[str] = "validation[:1000]"
    eval_dataset: Optional[str] = None  # another source for validation (defaults to `dataset`)
    test_split: str = "test"
    test_dataset: Optional[str] = None  # another source for evaluation (defaults to `dataset`)
    article_field: str = "article"
    summary_field: str = "highlights"
    id_field: str = "id"
    max_length: int = 2048  # prompt + summary + EOS, in tokens
    prompt_template: str = DEFAULT_TEMPLATE
    # training only: this many merge-shaped rows (core.data.merge_rows) join the train split
    merge_examples: int = 0


@dataclass
class TrainingConfig:
    output_dir: str = "outputs/adapter"
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.01
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    eval_steps: int = 1000
    save_steps: int = 1000
    logging_steps: int = 10
    save_total_limit: Optional[int] = 3
    optim: str = "paged_adamw_8bit"
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    early_stopping_patience: Optional[int] = None
    # at each evaluation, summarize the first N validation rows with the `generation`
    # settings and keep the checkpoint with the best ROUGE-L (0: validation loss only)
    rouge_eval_examples: int = 0
    group_by_length: bool = True  # batches of similar length: less padding to train on
    seed: int = 42
    resume: bool = False


@dataclass
class GenerationConfig:
    max_new_tokens: int = 100
    generation_batch_size: int = 8
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search only: > 1 favours longer summaries
    # both look at the generated tokens only, never at the prompt (core.generation)
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


@dataclass
class EvaluationConfig:
    eval_output_dir: str = "outputs/eval"
    num_examples: Optional[int] = None
    systems: list[str] = field(default_factory=lambda: ["lead3", "base", "adapter"])  # of EVAL_SYSTEMS
    bertscore_model: str = "roberta-large"  # a hub id or a local encoder dir
    bertscore_num_layers: Optional[int] = 17
    bootstrap_samples: int = 1000


@dataclass
class MapReduceConfig:
    chunk_size: int = 1800  # tokens of document text per chunk
    chunk_overlap: int = 150
    reduce_template: Optional[str] = None  # None: the training prompt_template
    # about how long a long document's summary may be, in words: the reduce stops once the
    # parts' summaries, joined in order, fit it (0: reduce to one news-length summary)
    summary_words: int = 0
    # leave out a chunk summary's sentence when less than this share of its content words occur
    # in the chunk (an invented sentence; 0: keep every sentence)
    min_support: float = 0.5
    max_reduce_depth: int = 4
    # new tokens for a map call (None: generation.max_new_tokens): the reduce keeps a chunk
    # summary's first sentences, so tokens past them are decoded for nothing
    map_max_new_tokens: Optional[int] = None
    num_workers: Optional[int] = None  # None: one per GPU, or one on CPU
    num_gpus_per_worker: float = 1.0
    num_cpus_per_worker: float = 1.0
    ray_address: Optional[str] = None  # None: $RAY_ADDRESS, else a local cluster
    max_task_retries: int = 2
    # a hung worker must end in an error, not a wait forever (0: no limit)
    call_timeout_s: float = 1800.0  # one batch of summaries
    start_timeout_s: float = 900.0  # a worker loading its model
    # refuse documents above this many tokens unless asked (0: no limit); a 1.3M-token text
    # is ~3,800 chunks, hours on a CPU
    max_document_tokens: int = 500_000
    # with summary_words: how the parts' summaries become one (mapreduce.reduce)
    reduce: str = "select"  # select (their sentences, no model call) | merge (the model merges them, level by level)
    merge_fanin: int = 4  # merge: consecutive summaries per merge call


@dataclass
class BatchConfig:
    text_field: str = "document"
    max_docs_in_flight: int = 16


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


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def _key_index() -> dict[str, tuple[str, Any]]:
    """key -> (section, type hint); keys are unique across sections by design."""
    index: dict[str, tuple[str, Any]] = {}
    for section, cls in _section_classes().items():
        for key, hint in typing.get_type_hints(cls).items():
            assert key not in index, f"duplicate config key {key}"
            index[key] = (section, hint)
    return index


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return f"{_describe(inner[0])} or null"
    if origin is list:
        return f"list of {_describe(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))


_ONE_OR_MORE = ("dataset",)  # list keys where a single value is fine too


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return value coerced to hint (int -> float only), or raise ConfigError naming key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return _check_type(key, value, inner)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str) and key in _ONE_OR_MORE:
            value = [value]  # `dataset: a.jsonl` means a list of one
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a {_describe(hint)}, got {value!r}")
        return [_check_type(key, v, item) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be an int, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"config key '{key}' must be a {_describe(hint)}, got {value!r}")
    return value


def _check_worker_resources(mr: MapReduceConfig, device: str) -> None:
    """Ray accepts none of these (or only with a traceback): refuse them before it starts."""
    cpus, gpus = mr.num_cpus_per_worker, mr.num_gpus_per_worker
    if cpus < 0 or (device == "cpu" and cpus == 0):
        need = "positive with device cpu (the actor's threads)" if device == "cpu" else ">= 0"
        raise ConfigError(f"config key 'num_cpus_per_worker' must be {need}, got {cpus:g}")
    if gpus < 0:
        raise ConfigError(f"config key 'num_gpus_per_worker' must be >= 0, got {gpus:g}")
    if gpus > 1 and not float(gpus).is_integer():
        raise ConfigError(
            f"config key 'num_gpus_per_worker' must be a fraction up to 1 (GPU sharing) or a whole number, got {gpus:g}"
        )
    if mr.max_task_retries < 0:
        raise ConfigError(f"config key 'max_task_retries' must be >= 0, got {mr.max_task_retries}")


def check_chunk_overlap(chunk_size: int, chunk_overlap: int) -> None:
    """Chunks advance by chunk_size - chunk_overlap tokens: that must be positive."""
    if not 0 <= chunk_overlap < chunk_size:
        raise ConfigError(
            f"config key 'chunk_overlap' must be >= 0 and below chunk_size ({chunk_size}), got {chunk_overlap}"
        )


# A floor under the prompt budget, checked at load where no tokenizer exists yet: a budget this
# small holds no real prompt. It is not the template's size; core.prompt.check_template_fits
# measures that once a command has its tokenizer.
PROMPT_BUDGET_FLOOR = 16


def _check_values(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    d, m, g, mr = cfg.data, cfg.model, cfg.generation, cfg.mapreduce
    if d.prompt_template.count("{article}") != 1:
        raise ConfigError("config key 'prompt_template' must contain '{article}' exactly once")
    if mr.reduce_template is not None and mr.reduce_template.count("{article}") != 1:
        raise ConfigError("config key 'reduce_template' must contain '{article}' exactly once")
    if cfg.prompt_budget <= PROMPT_BUDGET_FLOOR:
        raise ConfigError(
            f"config key 'max_length' ({d.max_length}) must exceed max_new_tokens "
            f"({g.max_new_tokens}) by more than {PROMPT_BUDGET_FLOOR} tokens (the least room for a prompt)"
        )
    if m.quantization not in ("none", "4bit", "8bit"):
        raise ConfigError(f"config key 'quantization' must be none, 4bit or 8bit, got {m.quantization!r}")
    if m.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"config key 'dtype' must be auto, float32, bfloat16 or float16, got {m.dtype!r}")
    positive = {
        "lora_r": cfg.lora.lora_r,
        "max_new_tokens": g.max_new_tokens,
        "generation_batch_size": g.generation_batch_size,
        "chunk_size": mr.chunk_size,
        "max_reduce_depth": mr.max_reduce_depth,
    }
    if d.merge_examples < 0:
        raise ConfigError(f"config key 'merge_examples' must be >= 0, got {d.merge_examples}")
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    for key in ("num_beams", "repetition_penalty"):
        if getattr(g, key) <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {getattr(g, key)}")
    for key in ("min_new_tokens", "no_repeat_ngram_size"):
        if getattr(g, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {getattr(g, key)}")
    if g.min_new_tokens > g.max_new_tokens:
        raise ConfigError(
            f"config key 'min_new_tokens' ({g.min_new_tokens}) must not exceed max_new_tokens ({g.max_new_tokens})"
        )
    check_chunk_overlap(mr.chunk_size, mr.chunk_overlap)
    for key in ("call_timeout_s", "start_timeout_s", "max_document_tokens"):
        if getattr(mr, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0 (0: no limit), got {getattr(mr, key)}")
    if mr.map_max_new_tokens is not None and not 0 < mr.map_max_new_tokens <= g.max_new_tokens:
        raise ConfigError(f"config key 'map_max_new_tokens' must be in 1..max_new_tokens ({g.max_new_tokens}), "
                          f"got {mr.map_max_new_tokens}")
    if not 0 <= mr.min_support <= 1:
        raise ConfigError(f"config key 'min_support' must be in [0, 1] (0: keep every sentence), got {mr.min_support}")
    if mr.reduce not in ("select", "merge"):
        raise ConfigError(f"config key 'reduce' must be select or merge, got {mr.reduce!r}")
    if mr.merge_fanin < 2:
        raise ConfigError(f"config key 'merge_fanin' must be >= 2, got {mr.merge_fanin}")
    if mr.summary_words < 0:
        raise ConfigError(f"config key 'summary_words' must be >= 0 (0: one short summary), got {mr.summary_words}")
    if mr.num_workers is not None and mr.num_workers <= 0:
        raise ConfigError(f"config key 'num_workers' must be positive, got {mr.num_workers}")
    _check_worker_resources(mr, m.device)
    for name in cfg.evaluation.systems:
        if name not in EVAL_SYSTEMS:
            raise ConfigError(
                f"config key 'systems' has unknown system {name!r} (choose from {', '.join(EVAL_SYSTEMS)})"
            )


def config_from_dict(raw: dict[str, Any] | None, source: str = "config") -> Config:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    classes = _section_classes()
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in classes:
            raise ConfigError(
                f"{source}: unknown section '{section}' (expected one of {', '.join(classes)})"
            )
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        hints = typing.get_type_hints(classes[section])
        checked = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{key}' in section '{section}'")
            checked[key] = _check_type(key, value, hints[key])
        sections[section] = classes[section](**checked)
    cfg = Config(**sections)
    _check_values(cfg)
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
    index = _key_index()
    for key, value in (overrides or {}).items():
        if key not in index:
            raise ConfigError(f"unknown config key '{key}'")
        section = index[key][0]
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return config_from_dict(raw, source)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# --- command-line flags ---------------------------------------------------------------

_FLAG_HELP = "overrides config key '{key}' ({type}; {default!r} unless a --config sets it)"
# what a flag means, where the key name alone does not say it; shown before _FLAG_HELP
KEY_HELP = {
    "summary_words": "about how many words a long document's summary may have: the reduce keeps the parts' "
                     "summaries while they fit, else their lead sentences (round-robin, then the leads that add "
                     "the most new content words), in document order, with no model call; 0 = reduce to one "
                     "news-length summary.",
    "map_max_new_tokens": "new tokens for each chunk's summary (unset = max_new_tokens): the reduce keeps its "
                          "first sentences, so a shorter cap saves decoding time.",
    "min_support": "leave out a chunk summary's sentence when less than this share of its content words "
                   "occurs in the chunk (an invented sentence); 0 = keep every sentence.",
    "reduce": "with summary_words, how the chunks' summaries become one: select = their sentences in document "
              "order (no model call); merge = the model merges consecutive groups of merge_fanin summaries, level "
              "by level, in order, each group asked for its share of the words, the last for summary_words.",
    "chunk_size": "tokens of document text per map chunk (must fit the prompt budget with the template).",
    "chunk_overlap": "tokens two neighbouring chunks share, so no sentence is lost at a cut.",
    "reduce_template": "prompt for summarizing joined partial summaries (must hold {article}); unset = the "
                       "training prompt_template.",
    "merge_examples": "training only: add this many merge-shaped rows to the train split (the summaries of 2-4 "
                      "consecutive training articles as parts -> their lead sentences, in order, at a stated "
                      "length), so the adapter learns the reduce's merge prompt too; 0 = news rows only.",
    "max_length": "tokens of prompt + summary; the prompt budget is max_length - max_new_tokens.",
}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag_parser(hint: Any):
    """A string->value parser for a flag; 'null'/'none' gives None for optional keys."""
    origin = typing.get_origin(hint)
    optional = False
    if origin in (typing.Union, types.UnionType):
        optional = True
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
        origin = typing.get_origin(hint)

    def parse(text: str):
        if optional and text.lower() in ("null", "none"):
            return None
        if origin is list:
            return [s.strip() for s in text.split(",") if s.strip()]
        if hint is bool:
            return _parse_bool(text)
        try:
            return hint(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_describe(hint)}, got {text!r}") from None

    return parse


def add_config_flags(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Add `--config` and one `--key-name` flag per config key of the given sections."""
    if not any(a.dest == "config" for a in parser._actions):
        parser.add_argument("--config", help="YAML config file (flags below override its values)")
    defaults = Config()
    for section, cls in _section_classes().items():
        if sections is not None and section not in sections:
            continue
        group = parser.add_argument_group(f"config: {section}")
        for key, hint in typing.get_type_hints(cls).items():
            if key in skip:
                continue
            default = getattr(getattr(defaults, section), key)
            extra = {"nargs": "?", "const": True} if hint is bool else {}  # `--resume` == `--resume true`
            group.add_argument(
                "--" + key.replace("_", "-"),
                dest=key,
                type=_flag_parser(hint),
                default=argparse.SUPPRESS,
                **extra,
                metavar=_describe(hint).split(" ")[0].upper(),
                help=(KEY_HELP.get(key, "").replace("{", "{{").replace("}", "}}") + " " + _FLAG_HELP).strip()
                .format(key=key, type=_describe(hint), default=default).replace("%", "%%"),
            )


def config_from_args(args: argparse.Namespace) -> Config:
    """Load `args.config` and apply every config flag the user gave."""
    index = _key_index()
    overrides = {k: v for k, v in vars(args).items() if k in index}
    return load_config(getattr(args, "config", None), overrides)
