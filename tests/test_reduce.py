"""Reduce logic with fake summarizers: it terminates, keeps document order, never loses text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import MARKER, partial, words
from mapreduce.reduce import JOINER, ReduceError, ReduceState, pack_groups, reduce_summaries
from mapreduce.sentences import prose




def keep_markers(texts: list[str]) -> list[str]:
    """A summarizer that keeps only the markers, in order: it always shrinks, never drops one."""
    return [" ".join(MARKER.findall(t)) for t in texts]


class Recorder:
    def __init__(self, fn):
        self.fn = fn
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return self.fn(texts)


def split_words(budget):
    def split(text):
        w = text.split()
        return [" ".join(w[i:i + budget]) for i in range(0, len(w), budget)]

    return split


def test_short_enough_goes_straight_to_final():
    summaries = [partial(i) for i in range(3)]
    fake = Recorder(keep_markers)
    state = reduce_summaries(summaries, fake, words, budget=100, max_depth=4)
    assert [lv.name for lv in state.levels] == ["final"]
    assert fake.calls == [[JOINER.join(summaries)]]
    assert state.summary == "M000 M001 M002"


def test_collapses_until_it_fits_and_keeps_order():
    summaries = [partial(i) for i in range(40)]  # 400 words, budget 50
    fake = Recorder(keep_markers)
    state = reduce_summaries(summaries, fake, words, budget=50, max_depth=4)
    assert [lv.name for lv in state.levels] == ["collapse-1", "final"]
    collapse = state.levels[0]
    # groups are consecutive runs covering every summary once, each fitting the budget
    assert [s for group in collapse.sources for s in group] == list(range(40))
    assert all(words(t) <= 50 for t in collapse.inputs)
    assert collapse.output_tokens < collapse.input_tokens == 400
    assert state.summary.split() == [f"M{i:03d}" for i in range(40)]


def test_several_collapse_levels():
    summaries = [partial(i, filler=30) for i in range(60)]

    def halve(texts):  # keeps markers, halves the filler: several levels needed
        return [" ".join(MARKER.findall(t) + ["f"] * (words(t) // 4)) for t in texts]

    state = reduce_summaries(summaries, halve, words, budget=120, max_depth=6)
    names = [lv.name for lv in state.levels]
    assert names[-1] == "final" and len(names) >= 3
    assert names[:-1] == [f"collapse-{k}" for k in range(1, len(names))]
    assert MARKER.findall(state.summary) == [f"M{i:03d}" for i in range(60)]
    for level in state.levels[:-1]:
        assert level.output_tokens < level.input_tokens


def test_summaries_that_do_not_shrink_stop_with_an_error():
    fake = Recorder(lambda texts: list(texts))  # echoes its input
    with pytest.raises(ReduceError, match="did not shrink") as err:
        reduce_summaries([partial(i) for i in range(40)], fake, words, budget=50, max_depth=10)
    assert "\n" not in str(err.value)
    assert len(fake.calls) == 1


def test_summaries_that_grow_stop_with_an_error():
    fake = Recorder(lambda texts: [t + " more words" for t in texts])
    with pytest.raises(ReduceError, match="did not shrink"):
        reduce_summaries([partial(i) for i in range(40)], fake, words, budget=50, max_depth=10)
    assert len(fake.calls) == 1


def test_depth_is_capped():
    # shrinks by one word per group per level: always "shrinking", never enough
    fake = Recorder(lambda texts: [" ".join(t.split()[:-1]) for t in texts])
    with pytest.raises(ReduceError, match="max_reduce_depth"):
        reduce_summaries([partial(i) for i in range(40)], fake, words, budget=50, max_depth=3)
    assert len(fake.calls) == 3


def test_zero_depth_allows_only_the_final_reduce():
    with pytest.raises(ReduceError, match="after 0 reduce levels"):
        reduce_summaries([partial(i) for i in range(40)], keep_markers, words, budget=50, max_depth=0)
    state = reduce_summaries([partial(i) for i in range(3)], keep_markers, words, budget=50, max_depth=0)
    assert state.summary == "M000 M001 M002"


def test_one_huge_summary_is_split_not_truncated():
    huge = " ".join(f"M{i:03d} x x x x x x x x x" for i in range(100, 130))  # 300 words, budget 50
    summaries = [partial(0), partial(1), huge, partial(2)]
    fake = Recorder(keep_markers)
    state = reduce_summaries(summaries, fake, words, budget=50, max_depth=4, split=split_words(50))
    collapse = state.levels[0]
    assert all(words(t) <= 50 for t in collapse.inputs)
    assert [2] in collapse.sources  # groups holding only pieces of the huge summary
    expected = ["M000", "M001"] + [f"M{i:03d}" for i in range(100, 130)] + ["M002"]
    assert MARKER.findall(state.summary) == expected


def test_one_huge_summary_without_a_splitter_is_an_error():
    huge = " ".join(["word"] * 400)
    with pytest.raises(ReduceError, match="exceeds the reduce budget"):
        reduce_summaries([partial(0), huge], keep_markers, words, budget=50, max_depth=4)


def test_a_splitter_that_cannot_fit_is_an_error():
    huge = " ".join(["word"] * 400)
    with pytest.raises(ReduceError, match="cannot split"):
        reduce_summaries([huge], keep_markers, words, budget=50, max_depth=4, split=split_words(80))


def test_wrong_number_of_summaries_and_empty_input():
    with pytest.raises(ReduceError, match="got 1 summaries for"):
        reduce_summaries([partial(i) for i in range(40)], lambda t: ["x"], words, budget=50, max_depth=4)
    with pytest.raises(ReduceError, match="nothing to reduce"):
        ReduceState.start([], words, 50, 4)


def test_state_is_driven_level_by_level():
    state = ReduceState.start([partial(i) for i in range(40)], words, 50, 4)
    assert state.level.name == "collapse-1" and not state.done
    state.accept(keep_markers(state.pending))
    assert state.level.name == "final" and len(state.pending) == 1
    state.accept(["the summary"])
    assert state.done and state.summary == "the summary" and state.pending == []
    tree = [lv.to_dict(words) for lv in state.levels]
    assert [lv["name"] for lv in tree] == ["collapse-1", "final"]
    assert tree[0]["inputs"][0]["sources"] == [0, 1, 2, 3, 4] and tree[0]["inputs"][0]["tokens"] == 50
    with pytest.raises(ReduceError, match="already finished"):
        state.accept(["again"])


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=40), budget=st.integers(20, 100))
def test_pack_groups_property(lengths, budget):
    texts = [" ".join(["w"] * n) for n in lengths]
    groups = pack_groups(texts, words, budget)
    assert [i for g in groups for i in g] == list(range(len(texts)))  # consecutive, each once
    for g, nxt in zip(groups, groups[1:] + [None]):
        joined = words(JOINER.join(texts[i] for i in g))
        assert joined <= budget or len(g) == 1  # fits, or a lone over-long text
        if nxt is not None:  # greedy: the next text would not have fit
            assert words(JOINER.join(texts[i] for i in g + [nxt[0]])) > budget


# --- a length target: summaries that scale with the document ------------------------------


def first_words(n: int):
    """A summarizer that keeps the first n words of each input (its markers come first)."""
    return lambda texts: [" ".join(t.split()[:n]) for t in texts]


def test_parts_that_fit_the_target_are_the_summary_without_another_call():
    summaries = [partial(i) for i in range(4)]  # 40 words
    fake = Recorder(keep_markers)
    state = reduce_summaries(summaries, fake, words, budget=100, max_depth=4, target_words=60)
    assert fake.calls == [] and state.levels == []
    assert state.summary == JOINER.join(summaries)  # every part kept, in order


def test_a_target_too_small_for_every_lead_keeps_leads_spread_over_the_document():
    summaries = [partial(i) for i in range(40)]  # 40 x 10 words, equally informative; target 40 words
    fake = Recorder(first_words(10))
    state = reduce_summaries(summaries, fake, words, budget=120, max_depth=4, target_words=40)
    assert fake.calls == [] and state.levels == []  # chosen, not rewritten
    assert words(state.summary) <= 40
    markers = MARKER.findall(state.summary)
    assert len(markers) == 4 and markers == sorted(markers)  # in document order
    assert markers[0] == "M000" and markers[-1] == "M039"  # the end of the document is covered too


def test_without_a_target_one_final_summary_as_before():
    summaries = [partial(i) for i in range(4)]
    state = reduce_summaries(summaries, Recorder(keep_markers), words, budget=100, max_depth=4)
    assert [lv.name for lv in state.levels] == ["final"] and state.summary == "M000 M001 M002 M003"


def test_a_target_below_one_summary_still_ends_in_one_final_call():
    summaries = [partial(i) for i in range(4)]  # 10 words each, target 5
    fake = Recorder(first_words(3))
    state = reduce_summaries(summaries, fake, words, budget=100, max_depth=4, target_words=5)
    assert [lv.name for lv in state.levels] == ["final"] and len(fake.calls) == 1


def test_an_empty_summary_fails_instead_of_dropping_its_part():
    with pytest.raises(ReduceError, match="map: the model returned an empty summary for input 1"):
        ReduceState.start([partial(0), "  ", partial(2)], words, 50, 4)
    state = ReduceState.start([partial(i) for i in range(40)], words, 50, 4)
    outputs = keep_markers(state.pending)
    outputs[2] = ""
    with pytest.raises(ReduceError, match="collapse-1: the model returned an empty summary for input 2"):
        state.accept(outputs)


@given(st.lists(st.integers(1, 60), min_size=4, max_size=40), st.integers(1, 6))
@settings(max_examples=200, deadline=None)
def test_balanced_groups_keep_order_fit_and_pair_small_texts(lengths, wanted):
    from mapreduce.reduce import balanced_groups

    texts = [" ".join(["w"] * n) for n in lengths]
    budget = 130
    groups = balanced_groups(texts, words, budget, wanted)
    assert [i for g in groups for i in g] == list(range(len(texts)))  # every text once, in order
    assert all(words(JOINER.join(texts[i] for i in g)) <= budget or len(g) == 1 for g in groups)
    if all(n <= budget // 3 for n in lengths) and wanted <= len(texts) // 2:  # small texts: pairs always fit
        assert len(groups) >= wanted and all(len(g) >= 2 for g in groups)


def test_select_sentences_keeps_every_part_in_order_then_second_sentences():
    from mapreduce.sentences import select_sentences

    parts = [
        "Alpha storm hits the coast .\nTwo towns were flooded overnight .",
        "Beta council votes on the budget .\nThe vote was close .",
        "Gamma team wins the final .\nFans celebrated in the streets .",
    ]
    leads = select_sentences(parts, target_words=16)  # the three leads: 5 + 6 + 5 words, in prose spacing
    assert leads == JOINER.join(["Alpha storm hits the coast.", "Beta council votes on the budget.",
                                 "Gamma team wins the final."])
    more = select_sentences(parts, target_words=21)  # room for one second sentence: the first part's
    assert more.split(JOINER)[0] == "Alpha storm hits the coast. Two towns were flooded overnight."
    assert select_sentences(parts, target_words=4) is None  # not even one lead fits


def test_select_sentences_skips_a_sentence_an_overlapping_chunk_already_gave():
    from mapreduce.sentences import select_sentences

    parts = ["Police arrested three suspects after the robbery .", "Police arrested three suspects after robbery .",
             "Stolen paintings were found in a warehouse ."]
    assert select_sentences(parts, 100) == JOINER.join([prose(parts[0]), prose(parts[2])])


def test_a_target_keeps_one_lead_per_part_without_rewriting_them():
    summaries = [f"M{i:03d} town{i} votes budget{i} .\nA second sentence of detail follows ." for i in range(12)]
    fake = Recorder(keep_markers)
    state = reduce_summaries(summaries, fake, words, budget=100, max_depth=4, target_words=60)
    assert fake.calls == []  # 12 leads x 5 words fit 60 words: no model call
    assert MARKER.findall(state.summary) == [f"M{i:03d}" for i in range(12)]


def test_select_sentences_drops_a_sentence_the_token_limit_cut_off():
    from mapreduce.sentences import select_sentences

    parts = ["Storm hits the coast . Towns were flooded and the", "Council votes on the budget ."]
    assert select_sentences(parts, 100) == JOINER.join(["Storm hits the coast.", "Council votes on the budget."])
    assert select_sentences(["Only a cut-off sentence and"], 100) == "Only a cut-off sentence and"


def test_select_sentences_passes_over_fillers_a_transcript_summary_copies():
    from mapreduce.sentences import select_sentences

    parts = ["Project Manager: Yeah. The team agreed the remote needs a rubber case .", "One, two, one, two."]
    assert select_sentences(parts, 100) == JOINER.join(["The team agreed the remote needs a rubber case.",
                                                     "One, two, one, two."])  # a part with only filler keeps it


def test_leads_that_do_not_all_fit_give_each_story_one_sentence():
    """An article cut over two chunks gives two leads about the same people; a distinct story
    adds more new words, so with room for three leads the three stories get one each."""
    from mapreduce.sentences import select_sentences

    parts = [
        "Storm Ciara floods the Yorkshire coast and closes roads .",
        "Ciara's floods on the Yorkshire coast close schools too .",
        "Parliament passes the budget after a late-night vote .",
        "Liverpool beat Everton in the derby at Anfield .",
    ]
    chosen = select_sentences(parts, target_words=30).split(JOINER)
    assert chosen == [prose(parts[0]), prose(parts[2]), prose(parts[3])]


def test_sentences_their_chunk_does_not_back_are_left_out():
    chunks = ["Retief and Magnan fly to Tarroon, where the Qornt fleet gathers for war .",
              "Magnan hides in the tunnel while Retief talks to Zubb about the ultimatum ."]
    summaries = ["Retief and Magnan fly to Tarroon . A new startup called Echo is launching in London .",
                 "Riots were sparked by violent protests in Paris ."]
    state = ReduceState.start(summaries, words, 100, 4, target_words=100, sources=chunks, min_support=0.5)
    assert state.summary == "Retief and Magnan fly to Tarroon."  # the second part had no backed sentence
    assert state.unsupported == ["A new startup called Echo is launching in London.", prose(summaries[1])]
    unfiltered = ReduceState.start(summaries, words, 100, 4, target_words=100, sources=chunks, min_support=0)
    assert "Echo" in unfiltered.summary and unfiltered.unsupported == []


def test_when_no_sentence_is_backed_the_summaries_are_kept_and_a_source_count_mismatch_fails():
    summaries = ["Riots were sparked by protests in Paris .", "Markets fell in Tokyo ."]
    state = ReduceState.start(summaries, words, 100, 4, target_words=100, sources=["a b c", "d e f"], min_support=0.5)
    assert state.summary == JOINER.join(prose(s) for s in summaries)
    with pytest.raises(ReduceError, match="1 sources for 2 summaries"):
        ReduceState.start(summaries, words, 100, 4, sources=["a b c"], min_support=0.5)


def test_choosing_among_leads_passes_over_a_cut_off_or_filler_lead():
    from mapreduce.sentences import select_sentences

    parts = [
        "Storm Ciara floods the Yorkshire coast and closes roads .",
        'Magnan: "A most interesting display of barbaric splendor" Zubb: "Observe the tallest feasters',  # cut off
        "Magnan cleared his throat .",  # a filler: three content words
        "Parliament passes the budget after a late-night vote .",
    ]
    chosen = select_sentences(parts, target_words=25).split(JOINER)
    assert chosen == [prose(parts[0]), prose(parts[3])]


# --- the reduce's text (reliability round 2, the highlight spacing) ----------------


def test_abbreviations_do_not_end_a_sentence_so_no_fragment_is_dropped():
    from mapreduce.sentences import select_sentences, sentences

    text = "The U.S. Senate voted on the harbour budget today. Gen. Grant Lee said the vote was rushed."
    assert sentences(text) == ["The U.S. Senate voted on the harbour budget today.",
                               "Gen. Grant Lee said the vote was rushed."]
    chosen = select_sentences([text, "Rev. Amos Hill led the prayers at the harbour chapel on Sunday."], 25)
    assert chosen.startswith("The U.S. Senate voted") and "Rev. Amos Hill led" in chosen


def test_parts_that_fit_lose_a_cut_off_end_and_what_an_overlapping_part_said_already():
    first = "Officials approved the harbour budget on Monday after a long debate."
    summaries = [first + " The mayor then promised new ferries for the",  # cut off by the token limit
                 first + " Protesters gathered outside the city hall building at night."]
    state = reduce_summaries(summaries, Recorder(keep_markers), words, budget=100, max_depth=4, target_words=200)
    assert state.summary == JOINER.join([first, "Protesters gathered outside the city hall building at night."])


def test_the_highlight_spacing_does_not_reach_prose():
    from mapreduce.sentences import prose, sentences

    assert sentences("Retief reached the CDT Sector HQ . He was arrested .") == [
        "Retief reached the CDT Sector HQ.", "He was arrested."]
    assert prose('He said "no" . Then : nothing , ever !') == 'He said "no". Then: nothing, ever!'
