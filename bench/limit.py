"""What a run's work cost in tokens, and the fastest this machine's model can do that work.

bench_longdocs's docstring explains the limit (prefill rate, decode step cost at the engine's
decode batch); bench_langgraph, bench_llamacpp and level_bound use the same counting and
measurements, so they live here once.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass

from bench.level_bound import level_shapes
from core.config import Config

PREFILL_REPEATS = 3


def engine_threads(cfg: Config) -> int:
    """Threads the engine's actors use together (the pool gives each round(num_cpus_per_worker), >= 1)."""
    workers = cfg.mapreduce.num_workers or 1
    per_worker = max(1, round(cfg.mapreduce.num_cpus_per_worker))
    return max(1, min(os.cpu_count() or 1, workers * per_worker))


def decode_batch(cfg: Config) -> int:
    """Rows the engine decodes at once over all its actors: the limit's decode batch."""
    return cfg.generation.generation_batch_size * (cfg.mapreduce.num_workers or 1)


# --- counting ------------------------------------------------------------------------


@dataclass
class Tally:
    texts: int = 0  # texts summarized (one generation each)
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def __add__(self, other: "Tally") -> "Tally":
        return Tally(self.texts + other.texts, self.prompt_tokens + other.prompt_tokens,
                     self.generated_tokens + other.generated_tokens)


def count_levels(levels: list[dict], template_tokens: dict[str, int], cfg: Config) -> Tally:
    """Tokens a document's levels cost (dicts as in DocumentResult.tree["levels"]).

    A level the run did not finish (outputs None) counts its prompts only. A map output
    is capped at `map_max_new_tokens` (at most `max_new_tokens`) when it is set, every other at `max_new_tokens`.
    """
    tally = Tally()
    for shape in level_shapes(levels, template_tokens, level_caps(levels, cfg)):
        tally += Tally(shape["texts"], shape["prompt_tokens"], sum(shape["output_tokens"]))
    return tally


def level_caps(levels: list[dict], cfg: Config) -> dict[str, int]:
    from mapreduce.document import level_max_new_tokens

    return {lv["name"]: level_max_new_tokens(cfg, lv["name"]) or cfg.generation.max_new_tokens for lv in levels}


def template_tokens(tokenizer, cfg: Config) -> dict[str, int]:
    """Tokens each template adds around its text, keyed by the tree's template kind."""
    from core.prompt import template_token_count
    from mapreduce.chunking import reduce_template

    return {"document": template_token_count(tokenizer, cfg.data.prompt_template),
            "reduce": template_token_count(tokenizer, reduce_template(cfg))}


# --- the limit -----------------------------------------------------------------------


@dataclass
class Limit:
    threads: int
    decode_batch: int
    probe_prompt_tokens: int
    prefill_tokens_per_s: float  # the faster of the two prefill figures below
    prefill_batch1_tokens_per_s: float
    prefill_decode_batch_tokens_per_s: float
    decode_step_s: float  # one step at decode_batch rows
    decode_step_1row_s: float = 0.0  # one step at 1 row (bench.level_bound); 0: not measured

    def seconds(self, tally: Tally) -> float:
        """Prefill every prompt at the best rate, then full decode batches for the other tokens."""
        return limit_seconds(tally, self.prefill_tokens_per_s, self.decode_step_s, self.decode_batch)


def limit_seconds(tally: Tally, prefill_tokens_per_s: float, decode_step_s: float, batch: int) -> float:
    """prompt_tokens / prefill rate + (generated - texts) / batch steps x seconds per step."""
    decode_steps = max(0, tally.generated_tokens - tally.texts) / batch
    return tally.prompt_tokens / prefill_tokens_per_s + decode_steps * decode_step_s


def step_clock():
    """A stopping criterion that never stops: `.stamps` gets the time after every generated token."""
    import torch
    from transformers import StoppingCriteria

    class StepClock(StoppingCriteria):
        def __init__(self):
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            self.stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StepClock()


def _forced_generate(model, tokenizer, prompt: list[int], rows: int, new_tokens: int, clock=None) -> float:
    """Seconds for model.generate of exactly new_tokens on `rows` copies of a prompt (no padding)."""
    import torch
    from transformers import StoppingCriteriaList

    from core.generation import stop_token_ids

    device = next(model.parameters()).device
    ids = torch.tensor([prompt] * rows, dtype=torch.long, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stopping = StoppingCriteriaList([clock]) if clock is not None else None
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
                       eos_token_id=stop_token_ids(model, tokenizer), use_cache=True, stopping_criteria=stopping)
    return time.perf_counter() - started


def measure_prefill(model, tokenizer, prompt: list[int], repeats: int = PREFILL_REPEATS) -> float:
    """Prompt tokens/s of a one-token generation on one prompt, best of `repeats` after a warm-up."""
    _forced_generate(model, tokenizer, prompt, 1, 1)
    best = min(_forced_generate(model, tokenizer, prompt, 1, 1) for _ in range(repeats))
    return len(prompt) / best


def measure_decode(model, tokenizer, prompt: list[int], rows: int, steps: int) -> tuple[float, float]:
    """(median seconds per decode step, prefill tokens/s) of one forced generation at `rows` rows.

    One generation, stamped at every step, rather than two timed ones differenced: the
    prefill of rows x prompt tokens dwarfs the steps, and its noise would swamp them.
    """
    clock = step_clock()
    started = time.perf_counter()
    _forced_generate(model, tokenizer, prompt, rows, max(2, steps), clock)
    gaps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    return statistics.median(gaps), rows * len(prompt) / (clock.stamps[0] - started)


def decode_steps(cfg: Config) -> int:
    """Steps the decode cost is measured over: a map call's cap, as most calls are map calls."""
    from mapreduce.document import level_max_new_tokens

    return level_max_new_tokens(cfg, "map") or cfg.generation.max_new_tokens


def measure_limit(model, tokenizer, prompt: list[int], cfg: Config, threads: int) -> Limit:
    """The model's own speed on this machine with the engine's threads and decode batch."""
    rows = decode_batch(cfg)
    print(f"limit: prefill of a {len(prompt)}-token prompt, then {decode_steps(cfg)} decode steps "
        f"at {rows} rows ({threads} threads) ...", file=sys.stderr, flush=True)
    batch1 = measure_prefill(model, tokenizer, prompt)
    step_s, batched = measure_decode(model, tokenizer, prompt, rows, decode_steps(cfg))
    step_1row_s, _ = measure_decode(model, tokenizer, prompt, 1, decode_steps(cfg))
    return Limit(threads, rows, len(prompt), max(batch1, batched), batch1, batched, step_s, step_1row_s)
