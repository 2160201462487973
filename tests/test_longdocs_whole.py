"""The whole-document peer of evaluation.longdocs: its prompt is the profile's, asked for the target length."""

import pytest

import evaluation.longdocs as ld
import evaluation.longdocs_systems as systems
from core.config import ConfigError, load_config
from evaluation.longdocs_data import LongDoc

CHAT = "<|im_start|>user\nRetell in about {words} words:\n\n{article}<|im_end|>\n<|im_start|>assistant\n"


def _prompts_of_run_whole(monkeypatch, tiny_model_dir, overrides):
    """Run run_whole on one document, the model call replaced: the decoded prompt it would generate from."""
    cfg = load_config(None, {"base_model": str(tiny_model_dir), "device": "cpu", "dtype": "float32",
                             "max_length": 128, "summary_words": 7, **overrides})
    seen = []
    monkeypatch.setattr(systems, "_generate", lambda docs, prompts, model, tokenizer, *a, **k:
                        seen.extend(tokenizer.decode(p) for p in prompts))
    doc = LongDoc("d0", "The council met on Monday. It voted on the budget.", "The council voted.")
    systems.run_whole(cfg, [doc], out=None, setup="wh-test", progress=False)
    return seen


def test_the_whole_document_call_uses_the_profiles_template(monkeypatch, tiny_model_dir):
    [prompt] = _prompts_of_run_whole(monkeypatch, tiny_model_dir, {"whole_template": CHAT})
    assert prompt.startswith("<|im_start|>user\nRetell in about 7 words:\n\nThe council met on Monday.")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_without_a_whole_template_the_default_instruction_is_used(monkeypatch, tiny_model_dir):
    [prompt] = _prompts_of_run_whole(monkeypatch, tiny_model_dir, {})
    assert prompt.startswith("[INST] Summarize the following document in about 7 words:")


def test_a_whole_template_without_its_placeholders_is_one_config_error():
    with pytest.raises(ConfigError, match="'whole_template' must contain '{article}' exactly once and {words}"):
        load_config(None, {"whole_template": "Summarize: {article}"})


def test_the_whole_template_is_part_of_the_whole_systems_settings_only():
    plain, chat = (ld.model_setups(load_config(None, o)) for o in ({}, {"whole_template": CHAT}))
    assert plain["whole"] != chat["whole"]
    assert plain["mapreduce"] == chat["mapreduce"] and plain["truncate"] == chat["truncate"]
