"""From per-token log-probabilities to per-response statistics, the loss and dLoss/dlogp.

Shared by the naive, torch and triton backends (the C++ backend has its own copy of these
formulas), with :func:`compute_dtype`, the accumulation dtype of every backend. With ``T_i``
unmasked tokens in response ``i``::

    CE_i   = -mean_t logp_t            p_mean_i = mean_t exp(logp_t)
    loss   = sum_i w_i CE_i + lam * sum_{i wrong} -log(1 - min(p_mean_i, p_max))
    c_t    = dloss/dlogp_t = -w_i/T_i + lam [i wrong] [p_mean_i < p_max] p_t / (T_i (1 - p_mean_i))

Responses without tokens have ``CE_i = p_mean_i = 0`` and contribute nothing. At
``p_mean_i >= p_max`` the clamp is active and the contrastive term has zero gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is accumulated in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ResponseStats(NamedTuple):
    """Per-response statistics of one group; all ``[R]``."""

    ce: torch.Tensor
    """Token-mean cross-entropy ``CE_i`` (0 for responses without tokens)."""
    p_mean: torch.Tensor
    """Token-mean target probability ``p_mean_i`` (0 for responses without tokens)."""
    num_tokens: torch.Tensor
    """Unmasked tokens ``T_i`` (int64)."""


def response_means(logp: torch.Tensor, valid: torch.Tensor, response_index: torch.Tensor,
                   num_responses: int) -> ResponseStats:
    """Per-response means of ``-logp`` and ``exp(logp)`` over the valid tokens (autograd-friendly)."""
    index = torch.where(valid, response_index, 0)
    logp = torch.where(valid, logp, 0.0)
    zeros = logp.new_zeros(num_responses)
    counts = zeros.index_add(0, index, valid.to(logp.dtype))
    denominator = counts.clamp(min=1.0)
    ce = -zeros.index_add(0, index, logp) / denominator
    p_mean = zeros.index_add(0, index, torch.where(valid, logp.exp(), 0.0)) / denominator
    return ResponseStats(ce, p_mean, counts.to(torch.int64))


def combine_loss(stats: ResponseStats, response_weights: torch.Tensor, wrong: torch.Tensor,
                 lam: float, p_max: float) -> torch.Tensor:
    """Scalar loss from the per-response statistics (autograd-friendly, clamp kills the gradient)."""
    weights = response_weights.to(stats.ce.dtype)
    clamped = torch.where(stats.p_mean < p_max, stats.p_mean, p_max)
    contrastive = torch.where(wrong, -torch.log1p(-clamped), 0.0)
    return (weights * stats.ce).sum() + lam * contrastive.sum()


def token_coefficients(logp: torch.Tensor, valid: torch.Tensor, response_index: torch.Tensor,
                       stats: ResponseStats, response_weights: torch.Tensor, wrong: torch.Tensor,
                       lam: float, p_max: float) -> torch.Tensor:
    """``c_t = dloss/dlogp_t`` for every token (0 for masked tokens), in ``logp``'s dtype."""
    dtype = logp.dtype
    denominator = stats.num_tokens.clamp(min=1).to(dtype)
    ce_coefficient = -response_weights.to(dtype) / denominator
    active = wrong & (stats.p_mean < p_max)
    contrastive_coefficient = torch.where(active, lam / (denominator * (1.0 - stats.p_mean)), 0.0)
    index = torch.where(valid, response_index, 0)
    per_token = ce_coefficient[index] + contrastive_coefficient[index] * logp.exp()
    return torch.where(valid, per_token, 0.0)
