"""The ``torch`` backend: chunked pure-PyTorch reference, readable rather than fast.

Tokens are processed ``chunk_size`` at a time, so at most ``chunk_size x V`` logits are alive.
The forward pass keeps only the per-token log-sum-exp and ``c_t = dloss/dlogp_t``; the backward
pass recomputes each chunk's logits and forms ``dlogits = c_t (onehot(y_t) - softmax(z_t))``.
"""

from __future__ import annotations

import torch

from advdistill_kernels._aggregation import (
    ResponseStats,
    combine_loss,
    compute_dtype,
    response_means,
    token_coefficients,
)
from advdistill_kernels.backends import chunk_tokens

LOGITS_BUDGET_ELEMENTS = 8 * 1024 * 1024
"""Default chunk: this many logits alive at once (32 MiB in float32)."""


def _chunk_starts(num_tokens: int, chunk_size: int) -> range:
    return range(0, num_tokens, chunk_size)


def token_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                    chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp, lse)`` per token, both ``[N]`` in the compute dtype (``logp`` is 0 at masked tokens)."""
    dtype = compute_dtype(hidden.dtype)
    weight_compute = weight.to(dtype)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    logp = hidden.new_empty(hidden.shape[0], dtype=dtype)
    lse = torch.empty_like(logp)
    for start in _chunk_starts(hidden.shape[0], chunk_size):
        stop = start + chunk_size
        logits = hidden[start:stop].to(dtype) @ weight_compute.T
        lse[start:stop] = torch.logsumexp(logits, dim=-1)
        target_logits = logits.gather(1, safe_targets[start:stop].unsqueeze(1)).squeeze(1)
        logp[start:stop] = target_logits - lse[start:stop]
    return torch.where(valid, logp, 0.0), lse


class _ChunkedAdvDistillLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, response_index, response_weights, wrong,
                lam, p_max, ignore_index, chunk_size, contrastive_mask):
        logp, lse = token_log_probs(hidden, weight, targets, ignore_index, chunk_size)
        valid = targets != ignore_index
        stats = response_means(logp, valid, response_index, response_weights.shape[0], contrastive_mask)
        coefficients = token_coefficients(logp, valid, response_index, stats, response_weights, wrong,
                                          lam, p_max, contrastive_mask)
        ctx.save_for_backward(hidden, weight, targets, lse, coefficients)
        ctx.chunk_size = chunk_size
        ctx.ignore_index = ignore_index
        return combine_loss(stats, response_weights, wrong, lam, p_max)

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, targets, lse, coefficients = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        with torch.autocast(hidden.device.type, enabled=False):
            grad_hidden, grad_weight = chunked_gradients(
                hidden, weight, targets, lse, coefficients * grad_loss.to(lse.dtype), ctx.ignore_index,
                ctx.chunk_size, need_hidden, need_weight)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None


def chunked_gradients(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                      coefficients: torch.Tensor, ignore_index: int, chunk_size: int, need_hidden: bool,
                      need_weight: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients for ``dlogits_t = c_t (onehot(y_t) - softmax(z_t))``, recomputing logits per chunk."""
    dtype = lse.dtype
    weight_compute = weight.to(dtype)
    safe_targets = torch.where(targets != ignore_index, targets, 0)
    grad_hidden = torch.empty_like(hidden, dtype=dtype) if need_hidden else None
    grad_weight = torch.zeros_like(weight, dtype=dtype) if need_weight else None
    for start in _chunk_starts(hidden.shape[0], chunk_size):
        stop = start + chunk_size
        hidden_chunk = hidden[start:stop].to(dtype)
        coefficient = coefficients[start:stop].unsqueeze(1)
        probs = torch.exp(hidden_chunk @ weight_compute.T - lse[start:stop].unsqueeze(1))
        grad_logits = (-coefficient * probs).scatter_add_(1, safe_targets[start:stop].unsqueeze(1), coefficient)
        if need_hidden:
            grad_hidden[start:stop] = grad_logits @ weight_compute
        if need_weight:
            grad_weight.addmm_(grad_logits.T, hidden_chunk)
    return (grad_hidden.to(hidden.dtype) if need_hidden else None,
            grad_weight.to(weight.dtype) if need_weight else None)


def fused_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          response_index: torch.Tensor, response_weights: torch.Tensor, wrong: torch.Tensor, *,
                          lam: float | torch.Tensor, p_max: float, ignore_index: int,
                          chunk_size: int | None, contrastive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Chunked loss; ``chunk_size`` tokens per chunk (default: 8M logits per chunk)."""
    chunk = chunk_tokens(chunk_size, weight.shape[0], LOGITS_BUDGET_ELEMENTS)
    return _ChunkedAdvDistillLoss.apply(hidden, weight, targets, response_index, response_weights, wrong,
                                        lam, p_max, ignore_index, chunk, contrastive_mask)


def response_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         response_index: torch.Tensor, num_responses: int, *, ignore_index: int,
                         chunk_size: int | None, contrastive_mask: torch.Tensor | None = None) -> ResponseStats:
    """Per-response ``(CE_i, p_mean_i, T_i, S_i)`` without gradient."""
    chunk = chunk_tokens(chunk_size, weight.shape[0], LOGITS_BUDGET_ELEMENTS)
    with torch.no_grad():
        logp, _ = token_log_probs(hidden, weight, targets, ignore_index, chunk)
        return response_means(logp, targets != ignore_index, response_index, num_responses, contrastive_mask)
