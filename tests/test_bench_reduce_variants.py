"""bench.reduce_variants: variants parsed with YAML types, and each distinct model call run once."""

from __future__ import annotations

import json

from bench.reduce_variants import CachedCalls, parse_variant


def test_a_variant_is_a_name_and_typed_config_values():
    assert parse_variant("shipped=") == ("shipped", {})
    assert parse_variant("f2=merge_fanin=2,reduce=merge,min_support=0.3") == (
        "f2", {"merge_fanin": 2, "reduce": "merge", "min_support": 0.3})


class CountingSummarizer:
    def __init__(self):
        self.seen = []

    def _generate(self, texts, template, max_new_tokens=None):
        self.seen.extend(texts)
        return [f"{template}:{max_new_tokens}:{t.upper()}" for t in texts]


def test_each_distinct_call_runs_once_and_the_cache_survives_a_restart(tmp_path):
    path = tmp_path / "calls.json"
    model = CountingSummarizer()
    calls = CachedCalls(model, path)
    assert calls(["a", "b"], "map") == ["map:None:A", "map:None:B"]
    assert calls(["b", "c"], "map") == ["map:None:B", "map:None:C"]
    assert calls(["c"], "merge", 40) == ["merge:40:C"]  # another template or cap is another call
    assert model.seen == ["a", "b", "c", "c"] and calls.misses == 4
    again = CachedCalls(CountingSummarizer(), path)
    assert again(["a", "c"], "map") == ["map:None:A", "map:None:C"] and again.misses == 0
    assert len(json.loads(path.read_text())) == 4


def test_a_summary_is_scored_beside_both_baselines_at_its_length_and_with_coverage():
    from bench.reduce_variants import score
    from evaluation.longdocs_data import Article, LongDoc

    text = ("The council voted to close the old bridge on Monday. Repairs will take a year.\n\n"
            "Farmers protested the new water tax in the capital. Police watched the march.")
    doc = LongDoc("d", text, "The council closed the bridge.\nFarmers protested a water tax.",
                  articles=[Article("a1", "The council closed the bridge ."), Article("a2", "Farmers protested a water tax .")])
    row = score("v", doc, "The council closed the old bridge.")
    assert row["variant"] == "v" and row["words"] == 6
    assert row["rouge1"] > row["paralead_rouge1"] > 0 and row["leadk_rouge1"] > 0
    assert row["covered"] == 0.5  # the first article's highlights are in it, the second's are not
