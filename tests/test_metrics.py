"""Degeneracy rate and evaluation metrics on hand-computed literals."""

from __future__ import annotations

import json

import polars as pl
import pytest

from advdistill.errors import InputError
from advdistill.metrics import evaluation_metrics, pass_at_k_sizes, prompt_outcomes, repeated_ngram_rate


@pytest.mark.parametrize(("text", "n", "expected"), [
    ("a b c d a b c d", 2, 3 / 7),
    ("A b C d a B c D", 2, 3 / 7),
    ("the cat sat on the mat", 2, 0.0),
    ("go go go go go", 1, 4 / 5),
    ("x y z x y z x y z", 3, 4 / 7),
    ("one two three", 4, 0.0),
    ("one two three four", 4, 0.0),
    ("", 4, 0.0),
    ("  \n\t ", 1, 0.0),
])
def test_repeated_ngram_rate(text, n, expected):
    assert repeated_ngram_rate(text, n) == pytest.approx(expected)


def test_repeated_ngram_rate_default_is_four_grams():
    assert repeated_ngram_rate("a b c d a b c d") == pytest.approx(1 / 5)


def test_repeated_ngram_rate_rejects_non_positive_n():
    with pytest.raises(ValueError, match="at least 1"):
        repeated_ngram_rate("a b", 0)


def responses(correct, n_tokens, format_ok, truncated=None, texts=None):
    return pl.DataFrame({
        "prompt_id": [f"p{i}" for i in range(len(correct))],
        "response": texts or ["plain answer"] * len(correct),
        "n_tokens": n_tokens,
        "truncated": truncated or [False] * len(correct),
        "predicted": ["1"] * len(correct),
        "correct": correct,
        "format_ok": format_ok,
    })


def test_evaluation_metrics_on_literal_frame():
    frame = responses(correct=[True, True, False, False], n_tokens=[10, 20, 30, 50],
                      format_ok=[True, False, True, True], truncated=[False, False, False, True],
                      texts=["a b a b", "a b c", "x y x y x y", "q"])
    metrics = evaluation_metrics(frame, ngram=2)
    assert metrics["n"] == 4
    assert metrics["accuracy"] == 0.5
    assert metrics["mean_tokens_correct"] == 15.0
    assert metrics["mean_tokens_wrong"] == 40.0
    assert metrics["verbosity_ratio"] == pytest.approx(40 / 15)
    assert metrics["template_adherence"] == 0.75
    assert metrics["truncated_share"] == 0.25
    # bigram rates: "a b a b" 1/3, "a b c" 0, "x y x y x y" 3/5, "q" 0
    assert metrics["degeneracy_correct"] == pytest.approx((1 / 3) / 2)
    assert metrics["degeneracy_wrong"] == pytest.approx((3 / 5) / 2)
    assert metrics["degeneracy"] == pytest.approx((1 / 3 + 3 / 5) / 4)
    assert metrics["degeneracy_ngram"] == 2
    json.dumps(metrics)


def test_all_correct_leaves_wrong_side_undefined():
    metrics = evaluation_metrics(responses(correct=[True, True], n_tokens=[4, 6], format_ok=[True, True]))
    assert metrics["accuracy"] == 1.0
    assert metrics["mean_tokens_correct"] == 5.0
    assert metrics["mean_tokens_wrong"] is None
    assert metrics["verbosity_ratio"] is None
    assert metrics["degeneracy_wrong"] is None
    assert metrics["degeneracy_correct"] == 0.0


def test_all_wrong_leaves_ratio_undefined():
    metrics = evaluation_metrics(responses(correct=[False], n_tokens=[7], format_ok=[False]))
    assert metrics["accuracy"] == 0.0
    assert metrics["mean_tokens_correct"] is None
    assert metrics["mean_tokens_wrong"] == 7.0
    assert metrics["verbosity_ratio"] is None
    assert metrics["template_adherence"] == 0.0


def test_empty_frame_is_rejected():
    with pytest.raises(InputError, match="empty"):
        evaluation_metrics(responses(correct=[], n_tokens=[], format_ok=[]).cast({"correct": pl.Boolean}))


def test_missing_columns_are_named():
    with pytest.raises(InputError, match="format_ok"):
        evaluation_metrics(responses(correct=[True], n_tokens=[1], format_ok=[True]).drop("format_ok"))


GREEDY_KEYS = {"n", "accuracy", "mean_tokens_correct", "mean_tokens_wrong", "verbosity_ratio", "degeneracy_correct",
               "degeneracy_wrong", "degeneracy", "degeneracy_ngram", "template_adherence", "truncated_share"}


def sampled_responses(correct_per_prompt: list[list[bool]]) -> pl.DataFrame:
    """One row per (prompt, sample) of the given outcomes, prompts p0, p1, ..."""
    rows = [{"prompt_id": f"p{i}", "sample_idx": j, "response": "plain answer", "n_tokens": 10 if ok else 20,
             "truncated": False, "predicted": "1", "correct": ok, "format_ok": True}
            for i, outcomes in enumerate(correct_per_prompt) for j, ok in enumerate(outcomes)]
    return pl.DataFrame(rows)


def test_one_sample_per_prompt_keeps_the_greedy_metrics():
    """One response per prompt: the keys and values of a greedy evaluation, and each prompt's outcome is its
    response's (what the report's paired comparisons have always paired)."""
    frame = responses(correct=[True, False, True], n_tokens=[1, 2, 3], format_ok=[True, True, False])
    metrics = evaluation_metrics(frame)
    assert set(metrics) == GREEDY_KEYS
    assert metrics["n"] == 3 and metrics["accuracy"] == pytest.approx(2 / 3)
    outcomes = prompt_outcomes(frame)
    assert outcomes.select("prompt_id", "correct").equals(frame.select("prompt_id", "correct"))
    assert outcomes["samples"].to_list() == [1, 1, 1]


def test_sampled_metrics_by_hand():
    """5 prompts x 4 samples with c = 2, 2, 3, 1, 0 correct.

    pass@1 = mean c/n = (0.5 + 0.5 + 0.75 + 0.25 + 0)/5 = 0.4; its t-interval over the 5 shares: s² = (0.01 + 0.01
    + 0.1225 + 0.0225 + 0.16)/4 = 0.08125, half = t_{0.975, 4}·s/√5 = 2.776445·0.285044/2.236068 = 0.353929, so
    [0.046071, 0.753929]. Majority: only c = 3 has more than half; c = 2 is a tie and counts as wrong: 1/5.
    pass@2 = mean of 1 − C(4 − c, 2)/6 = (5/6 + 5/6 + 1 + 1/2 + 0)/5 = 19/30; pass@4 = (1 + 1 + 1 + 1 + 0)/5 = 0.8.
    """
    frame = sampled_responses([[True, False, True, False], [False, False, True, True], [True, True, False, True],
                               [False, False, False, True], [False, False, False, False]])
    metrics = evaluation_metrics(frame)
    assert set(metrics) == GREEDY_KEYS | {"n_samples", "accuracy_lower", "accuracy_upper", "majority_accuracy",
                                          "pass_at_k"}
    assert (metrics["n"], metrics["n_samples"]) == (5, 4)
    assert metrics["accuracy"] == pytest.approx(0.4)
    assert (metrics["accuracy_lower"], metrics["accuracy_upper"]) == pytest.approx((0.046071306, 0.753928694))
    assert metrics["majority_accuracy"] == pytest.approx(0.2)
    assert list(metrics["pass_at_k"]) == ["1", "2", "4"]
    assert [metrics["pass_at_k"][k] for k in ("1", "2", "4")] == pytest.approx([0.4, 19 / 30, 0.8])
    assert metrics["mean_tokens_correct"] == 10.0 and metrics["mean_tokens_wrong"] == 20.0  # over every sample
    assert prompt_outcomes(frame)["correct"].to_list() == [False, False, True, False, False]
    json.dumps(metrics)


def test_majority_ties_count_as_wrong_and_odd_counts_need_more_than_half():
    frame = sampled_responses([[True, False], [True, True], [False, False], [False, True]])
    assert prompt_outcomes(frame)["correct"].to_list() == [False, True, False, False]
    odd = sampled_responses([[True, True, False], [True, False, False]])
    assert prompt_outcomes(odd)["correct"].to_list() == [True, False]


def test_sampled_interval_is_clipped_and_undefined_for_one_prompt():
    """Shares 1, 1, 0.5: mean 5/6 and half-width t_{0.975, 2}·0.288675/√3 = 0.717, so the upper bound clips at 1."""
    clipped = evaluation_metrics(sampled_responses([[True, True], [True, True], [True, False]]))
    assert clipped["accuracy_upper"] == 1.0 and clipped["accuracy_lower"] == pytest.approx(5 / 6 - 0.717108, abs=1e-6)
    single = evaluation_metrics(sampled_responses([[True, False, True, True]]))
    assert (single["accuracy"], single["accuracy_lower"], single["accuracy_upper"]) == (0.75, None, None)


def test_prompts_with_different_numbers_of_samples_are_rejected():
    with pytest.raises(InputError, match=r"different numbers of responses \(2, 3\)"):
        evaluation_metrics(sampled_responses([[True, False], [True, True, False]]))


@pytest.mark.parametrize(("n_samples", "sizes"), [(1, [1]), (2, [1, 2]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]),
                                                  (8, [1, 2, 4, 8])])
def test_pass_at_k_is_reported_for_powers_of_two_and_n(n_samples, sizes):
    assert pass_at_k_sizes(n_samples) == sizes
