"""bench.level_bound: one document's levels in order, against the issue's all-batched limit."""

from __future__ import annotations

import pytest

import bench.limit as lim
from bench.level_bound import level_shapes, ordered_seconds, step_seconds
from core.config import load_config

# 4-row batches: a 1-row step 10 ms, a 4-row step 40 ms; prefill 1,000 tok/s
LIMIT = lim.Limit(2, 4, 100, 1000.0, 1000.0, 900.0, 0.04, 0.01)


def test_step_cost_is_linear_between_the_measured_rows():
    assert step_seconds(LIMIT, 1) == pytest.approx(0.01)
    assert step_seconds(LIMIT, 4) == pytest.approx(0.04)
    assert step_seconds(LIMIT, 2) == pytest.approx(0.02)
    assert step_seconds(LIMIT, 9) == pytest.approx(0.04)  # a batch holds 4 rows at most
    assert step_seconds(lim.Limit(2, 4, 100, 1000.0, 1000.0, 900.0, 0.04), 1) == 0.04  # 1-row step not measured


def test_levels_run_in_order_each_as_long_as_its_longest_output():
    shapes = [{"name": "map", "texts": 6, "prompt_tokens": 3000, "output_tokens": [11, 5, 5, 5, 5, 5]},
              {"name": "final", "texts": 1, "prompt_tokens": 500, "output_tokens": [21]}]
    # map: 3 s prefill, 2 rounds (6 texts, batch 4) x 10 steps x 40 ms; final: 0.5 s + 20 steps x 10 ms
    assert ordered_seconds(shapes, LIMIT) == pytest.approx(3.0 + 0.8 + 0.5 + 0.2)
    tally = lim.Tally(7, 3500, 57)
    assert LIMIT.seconds(tally) == pytest.approx(3.5 + 50 / 4 * 0.04)  # the limit: 4.0 s, under the bound
    assert ordered_seconds(shapes, LIMIT) > LIMIT.seconds(tally)


def test_shapes_count_what_count_levels_counts():
    levels = [
        {"name": "map", "template": "document", "inputs": [{"tokens": 90}, {"tokens": 50}],
         "outputs": [{"text": "x", "tokens": 20}, {"text": "y", "tokens": 8}]},
        {"name": "final", "template": "reduce", "inputs": [{"tokens": 32}], "outputs": None},
    ]
    cfg = load_config(None, {"max_new_tokens": 12, "map_max_new_tokens": 10})
    shapes = level_shapes(levels, {"document": 7, "reduce": 5}, lim.level_caps(levels, cfg))
    assert shapes == [{"name": "map", "texts": 2, "prompt_tokens": 154, "output_tokens": [10, 9]},
                      {"name": "final", "texts": 1, "prompt_tokens": 37, "output_tokens": []}]
    assert lim.count_levels(levels, {"document": 7, "reduce": 5}, cfg) == lim.Tally(3, 191, 19)
    assert ordered_seconds(shapes, LIMIT) == pytest.approx(0.191 + 9 * step_seconds(LIMIT, 2))  # 10 tokens: 9 steps
