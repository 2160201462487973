"""evaluation.longdocs' model systems that run in this process: one truncated pass, and the whole document.

    truncate   the document cut to max_length - max_new_tokens (the budget the adapter
               trained at), the training template, the news-length cap.
    whole      the whole document in one call (up to the model's context), asked for the
               map-reduce summary's word target (the config's whole_template, e.g. the
               profile's chat format; else core.prompt.WHOLE_TEMPLATE), one at a time.

core.generation.generate_isolated retries a failing batch (e.g. out of memory) one
document at a time, so one bad document fails alone; seconds are batch time / batch size.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import TYPE_CHECKING

from core.config import Config

if TYPE_CHECKING:
    from evaluation.generations_log import LongdocLog
    from evaluation.longdocs_data import LongDoc

log = logging.getLogger("longdocs")


def bar(system: str, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{system:>9}", unit="doc", file=sys.stderr, dynamic_ncols=True,
                disable=not enabled)


_LOADED: dict = {}  # the last model loaded: whole and truncate share it


def load_model(cfg: Config, system: str):
    """(model, tokenizer) in this process, loaded once per model settings; the template must fit."""
    from core.models import load_for_inference, load_tokenizer
    from core.prompt import check_template_fits

    key = repr(dataclasses.asdict(cfg.model))
    if key not in _LOADED:
        tokenizer = load_tokenizer(cfg.model, padding_side="left")
        check_template_fits(tokenizer, cfg.data.prompt_template, cfg.prompt_budget, f"system '{system}': an article")
        log.info("loading %s%s for the %s system", cfg.model.base_model,
                 f" + {cfg.model.adapter}" if cfg.model.adapter else "", system)
        _LOADED.clear()
        _LOADED[key] = load_for_inference(cfg.model)
    return _LOADED[key]


def whole_words(cfg: Config, doc: "LongDoc") -> int:
    """The words the whole-document call is asked for: map-reduce's target, else the reference's length."""
    from core.rouge import word_count

    return cfg.mapreduce.summary_words or max(1, word_count(doc.reference))


def run_truncate(cfg: Config, todo: list["LongDoc"], out: "LongdocLog", setup: str, progress: bool) -> None:
    from core.prompt import build_prompt_ids

    todo = _with_text(todo, out, "truncate", setup)
    model, tokenizer = load_model(cfg, "truncate")
    prompts = [build_prompt_ids(tokenizer, d.text, cfg.prompt_budget, cfg.data.prompt_template) for d in todo]
    _generate(todo, prompts, model, tokenizer, cfg.generation, out, "truncate", setup, progress)


def run_whole(cfg: Config, todo: list["LongDoc"], out: "LongdocLog", setup: str, progress: bool) -> None:
    """Each document whole in one call: the context is the model's, not the training max_length."""
    from core.generation import with_max_new_tokens
    from core.prompt import WHOLE_TEMPLATE, build_prompt_ids, merge_template
    from mapreduce.reduce import merge_token_cap

    todo = _with_text(todo, out, "whole", setup)
    model, tokenizer = load_model(cfg, "whole")
    context = getattr(model.config, "max_position_embeddings", None) or cfg.data.max_length
    for doc in todo:  # one at a time: each its own length and template
        words = whole_words(cfg, doc)
        gen = with_max_new_tokens(cfg.generation, merge_token_cap(words, cfg.mapreduce.merge_tokens_per_word))
        gen = dataclasses.replace(gen, generation_batch_size=1)
        template = merge_template(words, cfg.evaluation.whole_template or WHOLE_TEMPLATE)
        prompt = build_prompt_ids(tokenizer, doc.text, context - gen.max_new_tokens, template)
        _generate([doc], [prompt], model, tokenizer, gen, out, "whole", setup, progress, words_asked=words)


def _with_text(docs: list["LongDoc"], out: "LongdocLog", system: str, setup: str) -> list["LongDoc"]:
    """The documents with text; an empty one is recorded as failed, without a model call."""
    for doc in (d for d in docs if not d.text.strip()):
        out.add(system, doc, setup, error="empty document")
    return [d for d in docs if d.text.strip()]


def _generate(docs, prompts, model, tokenizer, gen, out, system: str, setup: str, progress: bool, **extra) -> None:
    from core.generation import generate_isolated

    with bar(system, len(docs), progress and len(docs) > 1) as progress_bar:
        clock = [time.perf_counter()]

        def record(indices: list[int], outcomes: list) -> None:
            now = time.perf_counter()
            for i, (text, error) in zip(indices, outcomes):
                seconds = None if error is not None else (now - clock[0]) / len(indices)
                if error is None and not text.strip():
                    error = "the model returned an empty summary"
                out.add(system, docs[i], setup, summary=text if error is None else None, error=error,
                        seconds=seconds, prompt_tokens=len(prompts[i]), **extra)
                progress_bar.update(1)
            clock[0] = now

        generate_isolated(model, tokenizer, prompts, gen, on_batch_done=record)
