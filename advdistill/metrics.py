"""Evaluation metrics of one model on one test set: accuracy, verbosity, degeneracy, template adherence.

The metrics follow paper §5 (accuracy table, §5.2.1 verbosity and correctness, §5.2.2 degeneracy of
tokens, §5.2.3 template adherence). The paper does not define how it measures degeneracy; ours is the
repeated word n-gram rate of :func:`repeated_ngram_rate`, a share between 0 and 1 that is not on the
same scale as the values of the paper's Table 6 and can only be compared between our own runs.

With several sampled responses per prompt (``evaluation.n_samples``), as open-r1 and lighteval report
reasoning models, the accuracy is pass@1: the mean over prompts of each prompt's share of correct samples.
Its 95 % interval is a Student-t interval over prompts (:func:`advdistill.stats.mean_t_interval` of those
shares, clipped to [0, 1]): the prompts are the independent units, as Miller (2024, "Adding Error Bars to
Evals", arXiv 2411.00640) recommends for resampled answers; a Wilson interval over all samples would treat the
correlated samples of one prompt as independent and come out too narrow. Beside it: pass@k
(:func:`advdistill.stats.pass_at_k`) and the majority accuracy of :func:`prompt_outcomes`, the per-prompt
outcome that the report's paired comparisons use.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from advdistill.errors import ConfigError, InputError
from advdistill.stats import mean_t_interval, pass_at_k

REQUIRED_COLUMNS = ("prompt_id", "response", "n_tokens", "truncated", "correct", "format_ok")


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


def prompt_outcomes(responses: pl.DataFrame) -> pl.DataFrame:
    """One row per prompt of judged responses (``prompt_id``, ``correct``), in order of first appearance:
    ``prompt_id``, ``samples`` (its responses), ``n_correct`` and ``correct``, the prompt's outcome by strict
    majority: True when more than half of its samples are correct. A tie (exactly half of an even number of
    samples) counts as wrong. With one response per prompt, ``correct`` is that response's."""
    return (responses.group_by("prompt_id", maintain_order=True)
            .agg(pl.len().cast(pl.Int64).alias("samples"), pl.col("correct").sum().cast(pl.Int64).alias("n_correct"))
            .with_columns((2 * pl.col("n_correct") > pl.col("samples")).alias("correct")))


def pass_at_k_sizes(n_samples: int) -> list[int]:
    """The k that pass@k is reported for with ``n_samples`` samples per prompt: the powers of two up to
    ``n_samples``, and ``n_samples`` itself (1, 2, 4, 6 for 6 samples)."""
    sizes = [2**e for e in range(n_samples.bit_length())]
    return sizes if sizes[-1] == n_samples else [*sizes, n_samples]


def sampled_accuracy(outcomes: pl.DataFrame, n_samples: int) -> dict[str, Any]:
    """The metrics of several samples per prompt from :func:`prompt_outcomes` (``n_samples`` rows per prompt):
    ``n_samples``; ``accuracy_lower`` and ``accuracy_upper``, the Student-t 95 % interval over prompts of the
    per-prompt shares of correct samples, clipped to [0, 1] (None with a single prompt; zero-width when every
    prompt has the same share); ``majority_accuracy``, the share of prompts that :func:`prompt_outcomes` counts
    right; ``pass_at_k``, k (as a string) -> the mean over prompts of :func:`advdistill.stats.pass_at_k`, for k in
    :func:`pass_at_k_sizes`."""
    _, lower, upper = mean_t_interval((outcomes["n_correct"] / n_samples).to_list())
    n_correct = outcomes["n_correct"].to_list()
    return {
        "n_samples": n_samples,
        "accuracy_lower": None if lower is None else max(0.0, lower),
        "accuracy_upper": None if upper is None else min(1.0, upper),
        "majority_accuracy": float(outcomes["correct"].mean()),
        "pass_at_k": {str(k): math.fsum(pass_at_k(n_samples, c, k) for c in n_correct) / len(n_correct)
                      for k in pass_at_k_sizes(n_samples)},
    }


def evaluation_metrics(responses: pl.DataFrame, ngram: int = 4) -> dict[str, Any]:
    """Summarise judged responses (one row per prompt and sample) into a JSON-able dict.

    Keys: ``n`` (prompts); ``accuracy``, ``template_adherence`` and ``truncated_share`` (shares of responses
    that are correct, format-compliant and cut at the token limit, 0-1; with several samples per prompt the
    accuracy is pass@1, the mean over prompts of their shares of correct samples); ``mean_tokens_correct`` and
    ``mean_tokens_wrong`` (mean response tokens, None when the subset is empty); ``verbosity_ratio``
    (``mean_tokens_wrong / mean_tokens_correct``, None when either mean is missing or the correct
    mean is zero); ``degeneracy_correct``, ``degeneracy_wrong`` and ``degeneracy`` (mean
    :func:`repeated_ngram_rate` over the correct, wrong and all responses, None for an empty subset);
    ``degeneracy_ngram`` (the n-gram length used). Every share and mean is over all responses, every sample of
    every prompt. With more than one sample per prompt, also the keys of :func:`sampled_accuracy`. Every prompt
    must have the same number of samples.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in responses.columns]
    if missing:
        raise InputError(f"responses lack the columns {missing}; have {responses.columns}")
    if responses.is_empty():
        raise InputError("cannot compute evaluation metrics of an empty set of responses")
    outcomes = prompt_outcomes(responses)
    sample_counts = outcomes["samples"].unique().sort().to_list()
    if len(sample_counts) > 1:
        raise InputError(f"prompts have different numbers of responses ({', '.join(map(str, sample_counts))}); "
                         f"pass@1 and pass@k need the same number of samples for every prompt")

    rated = responses.with_columns(
        pl.Series("degeneracy", [repeated_ngram_rate(text, ngram) for text in responses["response"]],
                  dtype=pl.Float64))
    correct = rated.filter(pl.col("correct"))
    wrong = rated.filter(~pl.col("correct"))
    mean_tokens_correct = _mean_or_none(correct["n_tokens"])
    mean_tokens_wrong = _mean_or_none(wrong["n_tokens"])
    verbosity_ratio = (mean_tokens_wrong / mean_tokens_correct
                       if mean_tokens_correct and mean_tokens_wrong is not None else None)
    metrics = {
        "n": outcomes.height,
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
    if sample_counts[0] > 1:
        metrics.update(sampled_accuracy(outcomes, sample_counts[0]))
    return metrics
