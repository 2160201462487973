"""The merge reduce with fake summarizers: levels in order, word budgets, no part dropped."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.config import ConfigError, load_config
from fakes import MARKER, partial, steps, words
from mapreduce.reduce import JOINER, ReduceError, ReduceState, merge_token_cap



def markers_as_sentence(texts: list[str]) -> list[str]:
    """A merge that keeps its parts' markers, in order, in one finished sentence of five more words."""
    return [" ".join(MARKER.findall(t) + ["filler"] * 5) + "." for t in texts]


def run_merge(count: int, target: int, final_parts: int = 1, fanin: int = 4, summarize=markers_as_sentence):
    state = ReduceState.start([partial(i) for i in range(count)], words, budget=1000, max_depth=4,
                              target_words=target, mode="merge", fanin=fanin, final_parts=final_parts)
    while not state.done:
        state.accept(summarize(state.pending))
    return state


def test_merge_levels_run_in_order_until_one_final_merge_of_the_target():
    state = run_merge(16, target=20)
    assert [lv.name for lv in state.levels] == ["merge-1", "final"]
    assert [len(lv.inputs) for lv in state.levels] == [4, 1]
    assert state.levels[0].inputs[0].startswith("Part 1: M000") and "Part 4: M003" in state.levels[0].inputs[0]
    assert state.levels[0].merge_words == 10  # one input's length: a level shrinks by its group size
    assert state.levels[-1].merge_words == 20
    assert MARKER.findall(state.summary) == [f"M{i:03d}" for i in range(16)]


def test_final_parts_end_in_that_many_merges_joined_in_order():
    state = run_merge(11, target=60, final_parts=3)
    final = state.levels[-1]
    assert [lv.name for lv in state.levels] == ["final"]  # 11 summaries fit 3 groups of at most 4
    assert [len(s) for s in final.sources] == [4, 3, 4] and final.merge_words == 20
    assert final.max_new_tokens < 60  # each call has room for its share, not for the whole summary
    parts = state.summary.split(JOINER)
    assert len(parts) == 3
    assert MARKER.findall(state.summary) == [f"M{i:03d}" for i in range(11)]  # the last parts too


def test_final_parts_above_one_still_merge_level_by_level_first():
    state = run_merge(40, target=60, final_parts=3)
    assert [lv.name for lv in state.levels] == ["merge-1", "final"]
    assert len(state.levels[0].inputs) == 10 and len(state.levels[-1].inputs) == 3
    assert state.levels[-1].merge_words == 20
    assert MARKER.findall(state.summary) == [f"M{i:03d}" for i in range(40)]


def test_final_parts_never_leave_a_lone_summary_to_rewrite():
    state = run_merge(4, target=20, final_parts=3)  # 4 summaries: 2 + 2, not 2 + 1 + 1
    assert [len(s) for s in state.levels[-1].sources] == [2, 2]


def test_each_final_part_loses_a_cut_off_end():
    cut = lambda texts: [" ".join(MARKER.findall(t)) + ". And then the" for t in texts]  # noqa: E731
    state = run_merge(8, target=40, final_parts=2, summarize=cut)
    assert state.summary == JOINER.join(["M000 M001 M002 M003.", "M004 M005 M006 M007."])


def test_merge_tokens_per_word_sets_each_merge_calls_cap():
    summaries = [partial(i) for i in range(8)]
    chunks = [SimpleNamespace(text=s) for s in summaries]  # start_reduce reads only a chunk's text
    caps = {}
    for per_word in (1.5, 3.0):
        cfg_steps = steps(max_length=200, chunk_size=120, summary_words=40, reduce="merge", merge_final_parts=2,
                          merge_tokens_per_word=per_word, min_support=0.0)
        final = cfg_steps.start_reduce(summaries, chunks).level
        caps[per_word] = final.max_new_tokens
        assert final.merge_words == 20 and caps[per_word] == merge_token_cap(20, per_word)
    assert caps == {1.5: 46, 3.0: 76}  # 20 words x 1.5 + 16, x 3 + 16: the knob reaches the calls


def test_bad_final_parts_is_one_error_at_load_and_in_the_reduce(tmp_path):
    with pytest.raises(ReduceError, match="final_parts"):
        ReduceState.start([partial(0)], words, 100, 4, target_words=5, mode="merge", final_parts=0)
    path = tmp_path / "c.yaml"
    path.write_text("mapreduce:\n  merge_final_parts: 0\n")
    with pytest.raises(ConfigError, match="merge_final_parts"):
        load_config(path)
    with pytest.raises(ConfigError, match="merge_tokens_per_word' must be positive"):
        load_config(None, {"merge_tokens_per_word": 0})


def test_a_merge_echoing_the_prompts_parts_loses_the_framing_not_the_sentence():
    echo = lambda texts: [f"In the first part, {MARKER.findall(t)[0]} met Zubb. Part 2: In this part of the story, "  # noqa: E731
                          f"{MARKER.findall(t)[-1]} left Zubb." for t in texts]
    state = run_merge(8, target=40, final_parts=2, summarize=echo)
    assert state.summary == JOINER.join(["M000 met Zubb. M003 left Zubb.", "M004 met Zubb. M007 left Zubb."])
