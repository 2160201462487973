"""core.rouge, evaluation.metrics and LEAD-3 against values computed by hand."""

from __future__ import annotations

import pytest

from core.config import ConfigError
from evaluation.lead3 import lead3
from core.rouge import rouge_scores, split_sentences, word_count
from evaluation.metrics import bertscore_f1, bootstrap_ci, resolve_bertscore_encoder


def test_rouge_on_one_sentence_by_hand():
    # pred: the cat sat on the mat / ref: the cat lay on the mat
    # unigrams: the x2, cat, on, mat match -> P = R = 5/6
    # bigrams: the-cat, on-the, the-mat of 5 each -> 3/5
    # LCS: the cat on the mat -> 5/6 (one sentence, so Lsum equals L)
    s = rouge_scores("The cat sat on the mat.", "the cat lay on the mat .")
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)
    assert s["rougeLsum"] == pytest.approx(5 / 6)


def test_rouge_l_vs_lsum_with_sentences_in_another_order():
    # ref lines: [alpha beta gamma] [delta epsilon zeta]; pred has them swapped.
    # ROUGE-L over the whole text: LCS = 3 of 6 tokens -> 0.5.
    # ROUGE-Lsum per reference line against the prediction's sentences: 3 + 3 of 6 -> 1.0,
    # which needs the prediction split into its two sentences.
    s = rouge_scores("Delta epsilon zeta. Alpha beta gamma.", "alpha beta gamma .\ndelta epsilon zeta .")
    assert s["rouge1"] == pytest.approx(1.0)
    assert s["rouge2"] == pytest.approx(4 / 5)  # 4 of 5 bigrams (gamma-delta / zeta-alpha differ)
    assert s["rougeL"] == pytest.approx(0.5)
    assert s["rougeLsum"] == pytest.approx(1.0)


def test_rouge_of_an_empty_output_is_zero():
    assert rouge_scores("", "something happened .") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}


def test_split_sentences_keeps_abbreviations_and_initials_together():
    text = 'Mr. Smith met U.S. officials on Monday. "It went well," he said. John F. Kennedy was there! Was it?\nNew line'
    assert split_sentences(text) == [
        "Mr. Smith met U.S. officials on Monday.",
        '"It went well," he said.',
        "John F. Kennedy was there!",
        "Was it?",
        "New line",
    ]


def test_word_count():
    assert word_count("  one two\nthree  ") == 3
    assert word_count("") == 0


def test_lead3_takes_the_first_three_sentences_one_per_line():
    article = (
        "(CNN)The storm hit on Monday. Dr. Jones said 3,000 homes lost power! Was anyone hurt? "
        "Officials said no. More rain is expected."
    )
    assert lead3(article) == "(CNN)The storm hit on Monday.\nDr. Jones said 3,000 homes lost power!\nWas anyone hurt?"
    assert lead3("Only one sentence here") == "Only one sentence here"


def test_bootstrap_interval_of_constant_and_spread_values():
    assert bootstrap_ci([0.3] * 20, samples=200) == pytest.approx((0.3, 0.3))
    values = [0.0, 1.0] * 50  # mean 0.5, standard error 0.05 -> 95% CI about 0.5 +- 0.1
    low, high = bootstrap_ci(values, samples=2000, seed=3)
    assert 0.38 < low < 0.45 and 0.55 < high < 0.62
    assert bootstrap_ci(values, samples=500, seed=7) == bootstrap_ci(values, samples=500, seed=7)


def test_paired_difference_interval_excludes_zero_for_a_consistent_gain():
    base = [0.20, 0.25, 0.30, 0.22, 0.28, 0.26, 0.24, 0.21]
    adapter = [b + 0.05 for b in base]
    low, high = bootstrap_ci([a - b for a, b in zip(adapter, base)], samples=500)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)


def test_bertscore_encoder_resolution():
    model_type, layer = resolve_bertscore_encoder("embedded:minilm", None)
    assert layer == 6 and model_type.endswith("all-minilm-l6-v2")
    assert resolve_bertscore_encoder("roberta-large", None)[1] == 17
    with pytest.raises(ConfigError, match="has 6 layers"):
        resolve_bertscore_encoder("embedded:minilm", 17)


def test_bertscore_with_the_local_minilm_encoder():
    model_type, layer = resolve_bertscore_encoder("embedded:minilm", 6)
    f1 = bertscore_f1(
        ["the cat sat on the mat .", "the cat sat on the mat .", "stock markets fell sharply on friday", " "],
        ["the cat sat on the mat .", "a cat was sitting on a mat .", "the cat sat on the mat .", "the cat ."],
        model_type,
        layer,
        device="cpu",
    )
    assert f1[0] == pytest.approx(1.0, abs=1e-4)
    assert 0.5 < f1[1] < f1[0]
    assert f1[2] < f1[1]
    assert f1[3] == 0.0  # an empty output (a model that stops at once) scores 0, not a crash
