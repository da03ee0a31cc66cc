"""Training losses over last hidden states and the LM-head weight.

Both objectives go through :func:`advdistill_kernels.advdistill_loss`, whose fused backends never
materialise the ``[tokens, vocabulary]`` logits:

- SFT: token-mean cross-entropy over every response token of the batch (the batch is one
  "response" with weight 1 and no contrastive term), equal to ``F.cross_entropy`` on the logits.
- AdvDistill: one group per call, ``sum_i softmax(A/tau)_i CE_i + lam * sum_{i wrong} C_i`` with
  ``C_i = -log(1 - min(p_mean_i, p_max))``; ``training.loss.ce_reduction`` and ``contrastive_scale`` pick
  the reading of the paper's eqs. 5-6 (token-mean or token-sum ``CE_i``; ``lam`` or ``lam / n``).
"""

from __future__ import annotations

import torch
from advdistill_kernels import advdistill_loss, reading_parameters, response_stats

from advdistill.config import LossConfig

IGNORE_INDEX = -100


def next_token_view(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten ``hidden [B, L, d]`` and ``labels [B, L]`` so that position ``t`` predicts label ``t+1``.

    Returns hidden ``[B(L-1), d]``, targets ``[B(L-1)]`` and the batch row of each position.
    """
    batch, length, width = hidden.shape
    flat_hidden = hidden[:, :-1, :].reshape(-1, width)
    targets = labels[:, 1:].reshape(-1)
    rows = torch.arange(batch, device=labels.device).repeat_interleave(length - 1)
    return flat_hidden, targets, rows


def advantage_weights(advantages: torch.Tensor, tau: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``softmax(A / tau)`` over the group, computed in float64."""
    return torch.softmax(advantages.double() / tau, dim=0).to(dtype)


def sft_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    flat_hidden, targets, _ = next_token_view(hidden, labels)
    single = torch.zeros_like(targets)
    return advdistill_loss(flat_hidden, weight, targets, single,
                           torch.ones(1, device=hidden.device), torch.zeros(1, dtype=torch.bool, device=hidden.device),
                           lam=0.0, p_max=cfg.p_max, ignore_index=IGNORE_INDEX, backend=cfg.backend,
                           chunk_size=cfg.chunk_size)


def group_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, advantages: torch.Tensor,
               correct: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """AdvDistill loss of one group: ``hidden [n, L, d]``, ``labels [n, L]`` (prompt and padding masked)."""
    flat_hidden, targets, rows = next_token_view(hidden, labels)
    weights = advantage_weights(advantages, cfg.tau, torch.promote_types(hidden.dtype, torch.float32))
    return advdistill_loss(flat_hidden, weight, targets, rows, weights,
                           ~correct.bool(), lam=cfg.lam, p_max=cfg.p_max, ignore_index=IGNORE_INDEX,
                           backend=cfg.backend, chunk_size=cfg.chunk_size, ce_reduction=cfg.ce_reduction,
                           contrastive_scale=cfg.contrastive_scale)


def group_loss_terms(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, advantages: torch.Tensor,
                     correct: torch.Tensor, cfg: LossConfig) -> dict[str, float | None]:
    """The two terms of :func:`group_loss` and what drives the contrastive one, without gradient (telemetry).

    ``weighted_ce`` + ``contrastive`` equals the loss; ``wrong_p_mean`` is the mean of ``p_mean_i`` over
    wrong responses and ``wrong_at_clamp`` the share of them at ``p_max`` (no gradient there); both are
    None for a group without wrong responses.
    """
    flat_hidden, targets, rows = next_token_view(hidden.detach(), labels)
    stats = response_stats(flat_hidden, weight.detach(), targets, rows, advantages.shape[0],
                           ignore_index=IGNORE_INDEX, backend=cfg.backend, chunk_size=cfg.chunk_size)
    weights, lam = reading_parameters(targets, rows, advantage_weights(advantages, cfg.tau, torch.float64)
                                      .to(stats.ce.device), cfg.lam, IGNORE_INDEX, cfg.ce_reduction,
                                      cfg.contrastive_scale)
    wrong = ~correct.bool().to(stats.ce.device)
    p_wrong = stats.p_mean.double()[wrong]
    contrastive = -torch.log1p(-p_wrong.clamp(max=cfg.p_max)).sum()
    return {"weighted_ce": float((weights * stats.ce.double()).sum()), "contrastive": float(lam * contrastive),
            "wrong_p_mean": float(p_wrong.mean()) if p_wrong.numel() else None,
            "wrong_at_clamp": float((p_wrong >= cfg.p_max).double().mean()) if p_wrong.numel() else None}
