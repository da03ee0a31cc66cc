"""The AdvDistill loss from materialised logits with plain autograd.

This is the ground truth the fused backends are tested against, and what training code uses
when it already holds the ``[N, V]`` logits.
"""

from __future__ import annotations

import torch

from advdistill_kernels._aggregation import combine_loss, response_means


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is accumulated in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def advdistill_loss_from_logits(logits: torch.Tensor, targets: torch.Tensor, response_index: torch.Tensor,
                                response_weights: torch.Tensor, wrong: torch.Tensor, *, lam: float = 0.5,
                                p_max: float = 0.999, ignore_index: int = -100) -> torch.Tensor:
    """AdvDistill loss of one group from ``logits`` ``[N, V]`` (differentiable wrt ``logits``).

    Computed in float32 (float64 for float64 logits); see :mod:`advdistill_kernels` for the math.
    """
    log_probs = torch.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    logp = log_probs.gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    stats = response_means(logp, valid, response_index, response_weights.shape[0])
    return combine_loss(stats, response_weights, wrong, lam, p_max)
