"""Training losses over last hidden states and the LM-head weight.

Both objectives go through :func:`advdistill_kernels.advdistill_loss`, whose fused backends never
materialise the ``[tokens, vocabulary]`` logits:

- SFT: token-mean cross-entropy over every response token of the batch (the batch is one
  "response" with weight 1 and no contrastive term), equal to ``F.cross_entropy`` on the logits.
- AdvDistill: one group per call, ``sum_i softmax(A/tau)_i CE_i + lam * sum_{i wrong} C_i`` with
  ``C_i = -log(1 - min(p_mean_i, p_max))``.
"""

from __future__ import annotations

import torch
from advdistill_kernels import advdistill_loss

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
                           backend=cfg.backend, chunk_size=cfg.chunk_size)
