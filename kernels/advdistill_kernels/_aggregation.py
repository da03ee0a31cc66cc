"""From per-token log-probabilities to per-response statistics, the loss and dLoss/dlogp.

Shared by the naive, torch and triton backends (the C++ backend has its own copy of these
formulas), with :func:`compute_dtype`, the accumulation dtype of every backend. With ``T_i``
unmasked tokens in response ``i`` and ``S_i`` of them in the contrastive mask ``m_t`` (all of them
without a mask)::

    CE_i   = -mean_{t in i} logp_t     p_mean_i = sum_{t in i} m_t exp(logp_t) / S_i
    loss   = sum_i w_i CE_i + sum_{i wrong} lam_i * -log(1 - min(p_mean_i, p_max))
    c_t    = dloss/dlogp_t = -w_i/T_i + lam_i [i wrong] [p_mean_i < p_max] m_t p_t / (S_i (1 - p_mean_i))

``lam`` is one number for every response or a tensor ``[R]`` of one per response (:func:`per_response_lam`).

Responses without tokens have ``CE_i = p_mean_i = 0`` and contribute nothing; a response without
contrastive tokens (``S_i = 0``) has ``p_mean_i = 0``, so its contrastive term is 0 with no gradient. At
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
    """Mean target probability ``p_mean_i`` over the response's contrastive tokens (all its unmasked tokens
    without a contrastive mask; 0 for responses without such tokens)."""
    num_tokens: torch.Tensor
    """Unmasked tokens ``T_i`` (int64)."""
    contrastive_tokens: torch.Tensor | None = None
    """Unmasked tokens in the contrastive mask ``S_i`` (int64; None: ``num_tokens``, no mask)."""

    def contrastive_counts(self) -> torch.Tensor:
        """``S_i``, the tokens ``p_mean_i`` is taken over."""
        return self.num_tokens if self.contrastive_tokens is None else self.contrastive_tokens


def per_response_lam(lam: float | torch.Tensor, num_responses: int, like: torch.Tensor) -> torch.Tensor:
    """``lam`` as a ``[R]`` tensor of ``like``'s dtype and device (a number is repeated for every response)."""
    if isinstance(lam, torch.Tensor):
        return lam.to(like.device, like.dtype)
    return like.new_full((num_responses,), float(lam))


def response_means(logp: torch.Tensor, valid: torch.Tensor, response_index: torch.Tensor,
                   num_responses: int, contrastive_mask: torch.Tensor | None = None) -> ResponseStats:
    """Per-response means of ``-logp`` over the valid tokens and of ``exp(logp)`` over the valid tokens in
    ``contrastive_mask`` (None: all valid tokens), autograd-friendly."""
    index = torch.where(valid, response_index, 0)
    logp = torch.where(valid, logp, 0.0)
    zeros = logp.new_zeros(num_responses)
    counts = zeros.index_add(0, index, valid.to(logp.dtype))
    denominator = counts.clamp(min=1.0)
    ce = -zeros.index_add(0, index, logp) / denominator
    if contrastive_mask is None:
        p_mean = zeros.index_add(0, index, torch.where(valid, logp.exp(), 0.0)) / denominator
        return ResponseStats(ce, p_mean, counts.to(torch.int64))
    in_mask = valid & contrastive_mask
    contrastive_counts = zeros.index_add(0, index, in_mask.to(logp.dtype))
    p_mean = zeros.index_add(0, index, torch.where(in_mask, logp.exp(), 0.0)) / contrastive_counts.clamp(min=1.0)
    return ResponseStats(ce, p_mean, counts.to(torch.int64), contrastive_counts.to(torch.int64))


def combine_loss(stats: ResponseStats, response_weights: torch.Tensor, wrong: torch.Tensor,
                 lam: float | torch.Tensor, p_max: float) -> torch.Tensor:
    """Scalar loss from the per-response statistics (autograd-friendly, clamp kills the gradient)."""
    weights = response_weights.to(stats.ce.dtype)
    clamped = torch.where(stats.p_mean < p_max, stats.p_mean, p_max)
    contrastive = torch.where(wrong, -torch.log1p(-clamped), 0.0)
    if not isinstance(lam, torch.Tensor):
        return (weights * stats.ce).sum() + lam * contrastive.sum()
    return (weights * stats.ce).sum() + (per_response_lam(lam, wrong.shape[0], stats.ce) * contrastive).sum()


def token_coefficients(logp: torch.Tensor, valid: torch.Tensor, response_index: torch.Tensor,
                       stats: ResponseStats, response_weights: torch.Tensor, wrong: torch.Tensor,
                       lam: float | torch.Tensor, p_max: float,
                       contrastive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``c_t = dloss/dlogp_t`` for every token (0 for masked tokens), in ``logp``'s dtype; the contrastive part
    only for tokens in ``contrastive_mask`` (None: every token)."""
    dtype = logp.dtype
    denominator = stats.num_tokens.clamp(min=1).to(dtype)
    ce_coefficient = -response_weights.to(dtype) / denominator
    active = wrong & (stats.p_mean < p_max)
    lam = per_response_lam(lam, wrong.shape[0], denominator)
    contrastive_denominator = stats.contrastive_counts().clamp(min=1).to(dtype)
    contrastive_coefficient = torch.where(active, lam / (contrastive_denominator * (1.0 - stats.p_mean)), 0.0)
    index = torch.where(valid, response_index, 0)
    probabilities = logp.exp() if contrastive_mask is None else torch.where(contrastive_mask, logp.exp(), 0.0)
    per_token = ce_coefficient[index] + contrastive_coefficient[index] * probabilities
    return torch.where(valid, per_token, 0.0)
