"""Config loading: one-line ConfigErrors naming the key; flags override the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from core.config import Config, ConfigError, load_config, save_config
from core.flags import add_config_flags, config_from_args

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_line_error(path_or_none, **overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path_or_none, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "data, key",
    [
        ({"training": {"learning_rte": 1e-4}}, "learning_rte"),  # unknown key
        ({"trainnig": {"learning_rate": 1e-4}}, "trainnig"),  # unknown section
        ({"lora": {"lora_r": "sixteen"}}, "lora_r"),  # wrong type
        ({"lora": {"lora_r": 16.5}}, "lora_r"),  # a float is not an int
        ({"training": {"resume": "yes"}}, "resume"),  # a string is not a bool
        ({"lora": {"lora_target_modules": "q_proj"}}, "lora_target_modules"),  # not a list
        ({"data": {"prompt_template": "Summarize this."}}, "prompt_template"),  # no {article}
        ({"data": {"prompt_template": "{article} and {article}"}}, "prompt_template"),
        ({"data": {"max_length": 64}, "generation": {"max_new_tokens": 100}}, "max_length"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path, data, key):
    assert key in one_line_error(write(tmp_path, data))


def test_bad_override_names_the_key():
    assert "no_such_key" in one_line_error(None, no_such_key=1)
    assert "lora_alpha" in one_line_error(None, lora_alpha="big")


def test_missing_file_and_bad_yaml(tmp_path):
    assert "not found" in one_line_error(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    assert "not valid YAML" in one_line_error(bad)


def test_int_is_accepted_for_float_and_defaults_fill_the_rest(tmp_path):
    cfg = load_config(write(tmp_path, {"training": {"learning_rate": 1}}))
    assert cfg.training.learning_rate == 1.0 and isinstance(cfg.training.learning_rate, float)
    assert cfg.lora == Config().lora


def test_flags_override_file_values(tmp_path):
    path = write(tmp_path, {"training": {"learning_rate": 1e-4, "max_steps": 10}, "lora": {"lora_r": 4}})
    parser = argparse.ArgumentParser()
    add_config_flags(parser, sections=("model", "lora", "data", "training"))
    args = parser.parse_args([
        "--config", str(path), "--learning-rate", "3e-4", "--lora-target-modules", "q_proj, v_proj",
        "--eval-split", "null", "--resume",
    ])
    cfg = config_from_args(args)
    assert cfg.training.learning_rate == 3e-4  # flag beats file
    assert cfg.training.max_steps == 10  # file beats default
    assert cfg.lora.lora_r == 4
    assert cfg.lora.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.data.eval_split is None
    assert cfg.training.resume is True  # a bare boolean flag means true
    assert config_from_args(parser.parse_args(["--config", str(path), "--resume", "false"])).training.resume is False


def test_flags_of_other_sections_are_not_added():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, sections=("training",))
    with pytest.raises(SystemExit):
        parser.parse_args(["--chunk-size", "10"])


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, {"lora_r": 8, "dataset": "x.jsonl"})
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), Config)


def test_param_yaml_is_the_reference_recipe():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "param.yaml")
    assert cfg.model.base_model == "Qwen/Qwen2.5-3B-Instruct"
    assert (cfg.lora.lora_r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (16, 32, 0.5)
    assert cfg.lora.lora_target_modules == ["q_proj", "v_proj", "up_proj", "down_proj"]
    t = cfg.training
    assert (t.learning_rate, t.lr_scheduler_type, t.warmup_steps, t.weight_decay) == (1e-5, "cosine", 100, 0.01)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (1, 4)
    assert (t.eval_steps, t.save_steps, t.optim, t.max_grad_norm) == (1000, 1000, "paged_adamw_8bit", 1.0)
    assert (cfg.data.max_length, cfg.data.train_split, cfg.data.eval_split) == (2048, "train[:260000]", "validation[:1000]")
    assert (cfg.data.dataset, cfg.data.dataset_config, cfg.model.dtype) == (["cnn_dailymail"], "3.0.0", "auto")


def test_every_knob_has_one_help_text_and_its_flag_shows_it(capsys):
    import dataclasses

    from core.config import section_classes

    for cls in section_classes().values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"config key '{f.name}' has no help"
    parser = argparse.ArgumentParser()
    add_config_flags(parser, sections=("mapreduce",))
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "leave out a chunk summary's sentence" in out and "config key 'min_support'" in out


@pytest.mark.parametrize("key, value", [("dtype", "fp8"), ("quantization", "2bit")])
def test_enum_keys_take_only_their_values(key, value):
    message = one_line_error(None, **{key: value})
    assert f"config key '{key}' must be one of" in message and repr(value) in message
    parser = argparse.ArgumentParser()
    add_config_flags(parser, sections=("model",))
    with pytest.raises(SystemExit):
        parser.parse_args([f"--{key}", value])
    assert load_config(None, {key: "none" if key == "quantization" else "bfloat16"})


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"systems": []}, "'systems' is empty"),
        ({"bootstrap_samples": 0}, "'bootstrap_samples' must be positive"),
        ({"num_examples": 0}, "'num_examples' must be positive"),
        ({"rouge_eval_examples": -1}, "'rouge_eval_examples' must be >= 0"),
        ({"eval_split": None, "rouge_eval_examples": 2}, "needs an eval_split"),
        ({"early_stopping_patience": 2, "eval_steps": 3, "save_steps": 4}, "multiple of eval_steps"),
        ({"max_steps": -3}, "'max_steps' must be a positive number of steps, or -1 (num_train_epochs decides), got -3"),
        ({"max_steps": 0}, "'max_steps' must be a positive number of steps"),
        ({"num_train_epochs": 0}, "'num_train_epochs' must be positive"),
    ],
)
def test_command_checks_live_in_the_config(overrides, words):
    assert words in one_line_error(None, **overrides)


CPU_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2_cpu.yaml"  # map_max_new_tokens: 40


def test_a_lower_max_new_tokens_caps_the_map_calls():
    cfg = load_config(CPU_CONFIG, {"max_new_tokens": 24})
    assert (cfg.mapreduce.map_max_new_tokens, cfg.map_token_cap) == (40, 24)
    assert load_config(CPU_CONFIG).map_token_cap == 40
    assert load_config(None).map_token_cap is None  # unset: the map calls use max_new_tokens


def test_evaluate_takes_a_lower_max_new_tokens():
    from evaluation.evaluate import build_parser

    args = build_parser().parse_args(["--config", str(CPU_CONFIG), "--max-new-tokens", "32"])
    assert config_from_args(args).generation.max_new_tokens == 32


def test_only_two_explicit_flags_can_contradict():
    message = one_line_error(CPU_CONFIG, max_new_tokens=24, map_max_new_tokens=40)
    assert "--map-max-new-tokens 40" in message and "--max-new-tokens 24" in message
    assert "map_max_new_tokens' must be positive" in one_line_error(CPU_CONFIG, map_max_new_tokens=0)
