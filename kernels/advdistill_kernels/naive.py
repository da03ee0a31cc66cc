"""The AdvDistill loss from materialised logits with plain autograd.

This is the ground truth the fused backends are tested against, and what training code uses
when it already holds the ``[N, V]`` logits.
"""

from __future__ import annotations

import torch

from advdistill_kernels._aggregation import combine_loss, compute_dtype, response_means


def advdistill_loss_from_logits(logits: torch.Tensor, targets: torch.Tensor, response_index: torch.Tensor,
                                response_weights: torch.Tensor, wrong: torch.Tensor, *,
                                lam: float | torch.Tensor = 0.5, p_max: float = 0.999, ignore_index: int = -100,
                                ce_reduction: str = "mean", contrastive_scale: str = "none",
                                contrastive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """AdvDistill loss of one group from ``logits`` ``[N, V]`` (differentiable wrt ``logits``).

    Computed in float32 (float64 for float64 logits); see :mod:`advdistill_kernels` for the math and
    :func:`advdistill_kernels.advdistill_loss` for ``lam`` (a number or one per response ``[R]``),
    ``contrastive_mask`` and the readings ``ce_reduction`` and ``contrastive_scale``.
    """
    log_probs = torch.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    logp = log_probs.gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    num_responses = response_weights.shape[0]
    stats = response_means(logp, valid, response_index, num_responses, contrastive_mask)
    if ce_reduction == "sum":
        token_ce = torch.where(valid, -logp, 0.0)
        ce = token_ce.new_zeros(num_responses).index_add(0, torch.where(valid, response_index, 0), token_ce)
    else:
        ce = stats.ce
    contrastive_lam = lam / num_responses if contrastive_scale == "per_response" else lam
    contrastive = combine_loss(stats, torch.zeros_like(stats.ce), wrong, contrastive_lam, p_max)
    return (response_weights.to(ce.dtype) * ce).sum() + contrastive
