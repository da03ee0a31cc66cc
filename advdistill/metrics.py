"""Evaluation metrics of one model on one test set: accuracy, verbosity, degeneracy, template adherence.

The metrics follow paper §5 (accuracy table, §5.2.1 verbosity and correctness, §5.2.2 degeneracy of
tokens, §5.2.3 template adherence). The paper does not define how it measures degeneracy; ours is the
repeated word n-gram rate of :func:`repeated_ngram_rate`, a share between 0 and 1 that is not on the
same scale as the values of the paper's Table 6 and can only be compared between our own runs.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from advdistill.errors import ConfigError, InputError

REQUIRED_COLUMNS = ("response", "n_tokens", "truncated", "correct", "format_ok")


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """Share of the word n-grams of ``text`` that repeat an n-gram seen earlier in the same text.

    Words are the whitespace-separated tokens of the lowercased text. A text of ``k >= n`` words has
    ``k - n + 1`` overlapping n-grams; each one equal to an earlier n-gram counts as a repeat, so the
    rate is ``repeats / (k - n + 1)``: 0.0 when no n-gram recurs, close to 1.0 when the response loops
    on one phrase. A text with fewer than ``n`` words has no n-grams and a rate of 0.0.

    Example: ``"a b c d a b c d"`` with ``n=2`` has the bigrams ab bc cd da ab bc cd, of which the
    last three repeat earlier ones, so the rate is 3/7.
    """
    if n < 1:
        raise ConfigError(f"evaluation.degeneracy_ngram: n-gram length must be at least 1, got {n}")
    words = text.lower().split()
    n_ngrams = len(words) - n + 1
    if n_ngrams <= 0:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for start in range(n_ngrams):
        ngram = tuple(words[start:start + n])
        if ngram in seen:
            repeats += 1
        else:
            seen.add(ngram)
    return repeats / n_ngrams


def _mean_or_none(series: pl.Series) -> float | None:
    return float(series.mean()) if series.len() else None


def evaluation_metrics(responses: pl.DataFrame, ngram: int = 4) -> dict[str, Any]:
    """Summarise judged responses (one row per prompt) into a JSON-able dict.

    Keys: ``n``; ``accuracy``, ``template_adherence`` and ``truncated_share`` (shares of responses
    that are correct, format-compliant and cut at the token limit, 0-1); ``mean_tokens_correct`` and
    ``mean_tokens_wrong`` (mean response tokens, None when the subset is empty); ``verbosity_ratio``
    (``mean_tokens_wrong / mean_tokens_correct``, None when either mean is missing or the correct
    mean is zero); ``degeneracy_correct``, ``degeneracy_wrong`` and ``degeneracy`` (mean
    :func:`repeated_ngram_rate` over the correct, wrong and all responses, None for an empty subset);
    ``degeneracy_ngram`` (the n-gram length used).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in responses.columns]
    if missing:
        raise InputError(f"responses lack the columns {missing}; have {responses.columns}")
    if responses.is_empty():
        raise InputError("cannot compute evaluation metrics of an empty set of responses")

    rated = responses.with_columns(
        pl.Series("degeneracy", [repeated_ngram_rate(text, ngram) for text in responses["response"]],
                  dtype=pl.Float64))
    correct = rated.filter(pl.col("correct"))
    wrong = rated.filter(~pl.col("correct"))
    mean_tokens_correct = _mean_or_none(correct["n_tokens"])
    mean_tokens_wrong = _mean_or_none(wrong["n_tokens"])
    verbosity_ratio = (mean_tokens_wrong / mean_tokens_correct
                       if mean_tokens_correct and mean_tokens_wrong is not None else None)
    return {
        "n": rated.height,
        "accuracy": float(rated["correct"].mean()),
        "mean_tokens_correct": mean_tokens_correct,
        "mean_tokens_wrong": mean_tokens_wrong,
        "verbosity_ratio": verbosity_ratio,
        "degeneracy_correct": _mean_or_none(correct["degeneracy"]),
        "degeneracy_wrong": _mean_or_none(wrong["degeneracy"]),
        "degeneracy": float(rated["degeneracy"].mean()),
        "degeneracy_ngram": ngram,
        "template_adherence": float(rated["format_ok"].mean()),
        "truncated_share": float(rated["truncated"].mean()),
    }
