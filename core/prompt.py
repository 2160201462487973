"""The prompt template, truncation and label masking: the one place they live.

Training, evaluation, the CLI and the Ray workers all call these functions, so the model
sees at inference exactly the token ids it saw in training. The text is tokenized once,
with character offsets; tokens are then classed as template, article or summary by their
offsets and truncation drops article tokens from the end, so template tokens stay exactly
as they were tokenized in full context (no decode and re-tokenize round trip).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

from core.errors import ConfigError

DEFAULT_TEMPLATE = "[INST] Summarize the following news article:\n\n{article}\n\nSummary: [/INST]"
# the reduce's merge call: consecutive partial summaries in, one summary of about {words} words out
MERGE_TEMPLATE = (
    "[INST] Combine these summaries of consecutive parts of one document into one summary of about "
    "{words} words that covers every part, in order:\n\n{article}\n\nSummary: [/INST]"
)
IGNORE_INDEX = -100


@dataclass
class TrainingExample:
    input_ids: list[int]
    labels: list[int]
    article_tokens_dropped: int
    summary_tokens_dropped: int


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a fast tokenizer (with offset mapping) is required")


def _split_template(template: str) -> tuple[str, str]:
    if template.count("{article}") != 1:
        raise ValueError("prompt template must contain '{article}' exactly once")
    prefix, suffix = template.split("{article}")
    return prefix, suffix


# a whole long document in one call, asked for the length a map-reduce summary gets (the peer
# a user of a long-context model tries first; evaluation.longdocs' `whole` system)
WHOLE_TEMPLATE = "[INST] Summarize the following document in about {words} words:\n\n{article}\n\nSummary: [/INST]"


def merge_template(words: int, template: str = MERGE_TEMPLATE) -> str:
    """A prompt with its word budget filled in (still holding {article}): the merge's, or WHOLE_TEMPLATE."""
    return template.replace("{words}", str(int(words)))


def merge_input(summaries) -> str:
    """Partial summaries as the merge prompt shows them: numbered parts, in document order."""
    return "\n\n".join(f"Part {i}: {text.strip()}" for i, text in enumerate(summaries, 1))


WORD_JOINER = "\u2060"  # invisible; breaks a control string into plain-text tokens
_BRACKET_MARKER = re.compile(r"\[/?[A-Za-z_]+\]")
_ANSWER_CUE = re.compile(r"(\w[\w ]{0,30}:)\s*\[/[A-Za-z_]+\]\s*$")  # "Summary: [/INST]" ends the template


_MARKER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _markers(tokenizer, template: str) -> tuple[str, ...]:
    """Added tokens + the template's [MARKERS], longest first; cached: defuse runs per chunk probe.

    Every added token, special or not: the tokenizer matches Qwen's non-special ones
    (`<tool_call>`, `<|fim_prefix|>` ...) anywhere in a text just as it matches `<|im_end|>`.
    """
    per_template = _MARKER_CACHE.setdefault(tokenizer, {})
    if template not in per_template:
        markers = set(getattr(tokenizer, "all_special_tokens", []) or [])
        markers.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values())
        markers.update(getattr(tokenizer, "added_tokens_encoder", {}) or {})
        markers.update(_BRACKET_MARKER.findall(template))
        markers.update(_ANSWER_CUE.findall(template))  # a document's own "Summary:" poses as the answer's start
        per_template[template] = tuple(sorted((m for m in markers if len(m) > 1), key=len, reverse=True))
    return per_template[template]


def defuse(text: str, tokenizer, template: str) -> str:
    """Text from a document, unable to pose as a control token or as the template's markers.

    The tokenizer parses its added tokens (`<|im_end|>`, `<tool_call>`) wherever they appear, and the
    model cannot tell a document's "[/INST]" from the template's. Each occurrence in the
    text gets a word joiner after its first character, so it is tokenized as plain text.
    """
    for marker in _markers(tokenizer, template):
        if marker in text:
            text = text.replace(marker, marker[0] + WORD_JOINER + marker[1:])
    return text


def _tokenize_prompt(tokenizer, article: str, template: str, extra: str = ""):
    """Tokenize template(article) + extra once; return ids and the article/extra token spans.

    Returns (ids, article_start, article_end, extra_start): token indices such that
    ids[article_start:article_end] are the article's tokens and ids[extra_start:] the
    tokens of `extra`. A token straddling a boundary counts as template.
    """
    _require_fast(tokenizer)
    prefix, suffix = _split_template(template)
    article = defuse(article.strip(), tokenizer, template)
    extra = defuse(extra, tokenizer, template)
    text = prefix + article + suffix + extra
    a0, a1 = len(prefix), len(prefix) + len(article)
    x0 = len(prefix) + len(article) + len(suffix)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    article_tokens = [i for i, (s, e) in enumerate(offsets) if s >= a0 and e <= a1 and e > s]
    if article_tokens:
        article_start, article_end = article_tokens[0], article_tokens[-1] + 1
    else:
        article_start = article_end = next(
            (i for i, (s, e) in enumerate(offsets) if s >= a1 and e > s), len(ids)
        )
    extra_start = next((i for i, (s, e) in enumerate(offsets) if s >= x0 and e > s), len(ids))
    return ids, article_start, article_end, extra_start


_PROBE_ARTICLES = ("", "x", "x.", "1")


def template_token_count(tokenizer, template: str = DEFAULT_TEMPLATE) -> int:
    """Tokens the template itself costs next to an article (the most over a few probes).

    Not just the template with an empty article: there the text around `{article}` can
    merge into fewer tokens (Qwen: ":\n\n" + "\n\n" -> ":\n\n\n\n") than with real text.
    """
    costs = []
    for probe in _PROBE_ARTICLES:
        ids, a0, a1, _ = _tokenize_prompt(tokenizer, probe, template)
        costs.append(len(ids) - (a1 - a0))
    return max(costs)


def check_template_fits(tokenizer, template: str, budget: int, what: str, room: int = 1,
                        budget_name: str = "max_length - max_new_tokens") -> int:
    """The template's token cost; ConfigError unless `room` more tokens fit beside it in `budget`.

    The one check that a template leaves space for its text (an article: room 1; a full
    chunk: chunk_size), run once the tokenizer is known. `what` names that text for the user.
    """
    cost = template_token_count(tokenizer, template)
    if cost + room > budget:
        raise ConfigError(
            f"{what} does not fit beside the template ({cost} tokens) in {budget_name} ({budget} tokens): "
            f"at most {max(0, budget - cost)} tokens do"
        )
    return cost


def build_prompt_ids(
    tokenizer, article: str, max_prompt_tokens: int, template: str = DEFAULT_TEMPLATE
) -> list[int]:
    """Inference prompt: the article cut from its end until the whole prompt fits.

    Callers pass max_prompt_tokens = Config.prompt_budget, the budget training used.
    """
    ids, a0, a1, _ = _tokenize_prompt(tokenizer, article, template)
    overflow = len(ids) - max_prompt_tokens
    if overflow <= 0:
        return ids
    keep = (a1 - a0) - overflow
    if keep < 0:
        raise ValueError(
            f"prompt budget of {max_prompt_tokens} tokens is smaller than the template "
            f"({len(ids) - (a1 - a0)} tokens)"
        )
    return ids[: a0 + keep] + ids[a1:]


def build_training_example(
    tokenizer,
    article: str,
    summary: str,
    max_length: int,
    template: str = DEFAULT_TEMPLATE,
) -> TrainingExample:
    """prompt + " " + summary + EOS, at most max_length tokens, labels only on summary + EOS.

    Only the article is cut (from its end). If even an empty article leaves no room for
    the whole summary, the summary is cut from its end too, but its EOS is kept.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    ids, a0, a1, s0 = _tokenize_prompt(tokenizer, article, template, extra=" " + summary.strip())
    prompt_ids, summary_ids = ids[:s0], ids[s0:]
    article_len = a1 - a0
    template_len = len(prompt_ids) - article_len
    summary_room = max_length - template_len - 1  # 1 for EOS
    if summary_room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a summary after the template")
    summary_dropped = max(0, len(summary_ids) - summary_room)
    if summary_dropped:
        summary_ids = summary_ids[:summary_room]
    article_room = max_length - template_len - len(summary_ids) - 1
    article_dropped = max(0, article_len - article_room)
    if article_dropped:
        prompt_ids = prompt_ids[: a1 - article_dropped] + prompt_ids[a1:]
    input_ids = prompt_ids + summary_ids + [eos]
    labels = [IGNORE_INDEX] * len(prompt_ids) + summary_ids + [eos]
    return TrainingExample(input_ids, labels, article_dropped, summary_dropped)


def chat_template(tokenizer, instruction: str = "Summarize the following news article:") -> str:
    """The tokenizer's own chat format as a prompt template holding `{article}` once.

    A fairer baseline for Instruct models than the training template: the base model is
    asked in the format it was tuned on, and build_prompt_ids still does the truncation.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template (needed for the base_chat system)")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction + "\n\n{article}"}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str) or rendered.count("{article}") != 1:
        raise ValueError("the tokenizer's chat template does not render the article placeholder exactly once")
    return rendered
