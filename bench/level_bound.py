"""The fastest one document can go on the limit's machine when its levels run in order.

bench.limit.Limit counts every generated token as if it decoded in a full batch of
`decode_batch` rows. One document cannot do that: a level's calls start only when the level
before has ended, a level of n texts decodes at most n rows at once, and it lasts as long as
its longest output. This bound keeps those two facts and nothing else: each level prefills its
prompts at the limit's best rate, then decodes ceil(n / batch) rounds of its longest output at
the step cost of min(n, batch) rows (linear between the 1-row and the batch-row step measured).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.limit import Limit


def level_shapes(levels: list[dict], template_tokens: dict[str, int], caps: dict[str, int]) -> list[dict]:
    """Per level (dicts as in DocumentResult.tree["levels"]): texts, prompt tokens, each output's tokens.

    caps: the new-token cap of each level's name (an output counts its EOS, up to the cap);
    a level without outputs (not finished) counts its prompts only.
    """
    shapes = []
    for level in levels:
        extra = template_tokens[level["template"]]
        cap = caps[level["name"]]
        outputs = [min(cap, out["tokens"] + 1) for out in level.get("outputs") or []]
        shapes.append({"name": level["name"], "texts": len(level["inputs"]),
                       "prompt_tokens": sum(item["tokens"] + extra for item in level["inputs"]),
                       "output_tokens": outputs})
    return shapes


def step_seconds(limit: "Limit", rows: int) -> float:
    """One decode step at `rows` rows: linear between the measured 1-row and batch-row steps."""
    if limit.decode_batch <= 1 or not limit.decode_step_1row_s:
        return limit.decode_step_s
    share = (min(rows, limit.decode_batch) - 1) / (limit.decode_batch - 1)
    return limit.decode_step_1row_s + share * (limit.decode_step_s - limit.decode_step_1row_s)


def ordered_seconds(shapes: list[dict], limit: "Limit") -> float:
    """Levels one after another: prefill at the best rate, then the longest output's steps per round."""
    seconds = 0.0
    for shape in shapes:
        seconds += shape["prompt_tokens"] / limit.prefill_tokens_per_s
        outputs = shape["output_tokens"]
        if outputs:
            rounds = math.ceil(len(outputs) / limit.decode_batch)
            rows = min(len(outputs), limit.decode_batch)
            seconds += rounds * max(0, max(outputs) - 1) * step_seconds(limit, rows)
    return seconds
