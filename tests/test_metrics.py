"""Degeneracy rate and evaluation metrics on hand-computed literals."""

from __future__ import annotations

import json

import polars as pl
import pytest

from advdistill.errors import InputError
from advdistill.metrics import evaluation_metrics, repeated_ngram_rate


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
