"""Training losses over last hidden states and the LM-head weight.

Both objectives go through :func:`advdistill_kernels.advdistill_loss`, whose fused backends never
materialise the ``[tokens, vocabulary]`` logits:

- SFT: token-mean cross-entropy over every response token of the batch (the batch is one
  "response" with weight 1 and no contrastive term), equal to ``F.cross_entropy`` on the logits.
- AdvDistill: the groups of a micro-batch in one call, the mean over its ``k`` groups of each group's loss
  ``sum_i softmax(A/tau)_i CE_i + lam * sum_{i wrong} C_i`` with ``C_i = -log(1 - min(p_mean_i, p_max))``
  (the softmax within the group): response ``i`` of group ``g`` gets the weight ``softmax(A_g/tau)_i / k`` and
  the contrastive weight ``lam / k`` (``lam / (k n_g)`` under ``contrastive_scale: per_response``, ``n_g`` the
  group's own responses); ``training.loss.ce_reduction`` and ``contrastive_scale`` pick the reading of the
  paper's eqs. 5-6 (token-mean or token-sum ``CE_i``; ``lam`` or ``lam / n``). ``contrastive_tokens: divergent``
  (an extension, not the paper's) takes ``p_mean_i`` over a contrastive mask instead of every response token.
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


def advantage_weights(advantages: torch.Tensor, tau: float, dtype: torch.dtype = torch.float32,
                      group_index: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(A / tau)`` within each group (``group_index``: the group of each response; None: one group),
    computed in float64."""
    scaled = advantages.double() / tau
    if group_index is None:
        return torch.softmax(scaled, dim=0).to(dtype)
    groups = int(group_index.max()) + 1 if group_index.numel() else 0
    maxima = scaled.new_full((groups,), -torch.inf).scatter_reduce(0, group_index, scaled, "amax")
    exponentials = torch.exp(scaled - maxima[group_index])
    sums = scaled.new_zeros(groups).index_add(0, group_index, exponentials)
    return (exponentials / sums[group_index]).to(dtype)


def micro_batch_parameters(advantages: torch.Tensor, group_index: torch.Tensor | None, cfg: LossConfig,
                           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response, the CE weight ``softmax(A_g / tau)_i / k`` and the contrastive weight ``lam / k`` (``lam /
    (k n_g)`` under ``contrastive_scale: per_response``) that make one fused call over the ``k`` groups of a
    micro-batch the mean of their group losses."""
    if group_index is None:
        group_index = torch.zeros(advantages.shape[0], dtype=torch.long, device=advantages.device)
    group_index = group_index.to(advantages.device)
    sizes = torch.bincount(group_index)
    groups = sizes.numel()
    weights = advantage_weights(advantages, cfg.tau, torch.float64, group_index) / groups
    lam = torch.full_like(weights, cfg.lam / groups)
    if cfg.contrastive_scale == "per_response":
        lam = lam / sizes.double()[group_index]
    return weights.to(dtype), lam


def sft_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    flat_hidden, targets, _ = next_token_view(hidden, labels)
    single = torch.zeros_like(targets)
    return advdistill_loss(flat_hidden, weight, targets, single,
                           torch.ones(1, device=hidden.device), torch.zeros(1, dtype=torch.bool, device=hidden.device),
                           lam=0.0, p_max=cfg.p_max, ignore_index=IGNORE_INDEX, backend=cfg.backend,
                           chunk_size=cfg.chunk_size)


def flat_contrastive_mask(contrastive_mask: torch.Tensor | None, cfg: LossConfig) -> torch.Tensor | None:
    """``contrastive_mask [R, L]`` (aligned with the labels) as the kernel's ``[R(L-1)]`` mask of the targets; None
    for ``contrastive_tokens: all``, which must not get one (and ``divergent`` must)."""
    if cfg.contrastive_tokens == "all":
        if contrastive_mask is not None:
            raise ValueError("a contrastive_mask was given with training.loss.contrastive_tokens: all")
        return None
    if contrastive_mask is None:
        raise ValueError("training.loss.contrastive_tokens: divergent needs the contrastive_mask of the micro-batch "
                         "(GroupCollator with contrastive_tokens='divergent')")
    return contrastive_mask[:, 1:].reshape(-1).bool()


def group_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, advantages: torch.Tensor,
               correct: torch.Tensor, cfg: LossConfig, group_index: torch.Tensor | None = None,
               contrastive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """AdvDistill loss of a micro-batch: the mean over its groups of each group's loss, in one fused call.

    ``hidden [R, L, d]`` and ``labels [R, L]`` (prompt and padding masked) hold every response of every group;
    ``advantages``, ``correct`` and ``group_index`` (the group of each response, ``0..k-1``; None: one group)
    are ``[R]``; ``contrastive_mask [R, L]`` (with ``contrastive_tokens: divergent`` only) marks the label
    positions whose tokens the contrastive term's mean probability is taken over.
    """
    flat_hidden, targets, rows = next_token_view(hidden, labels)
    weights, lam = micro_batch_parameters(advantages, group_index, cfg,
                                          torch.promote_types(hidden.dtype, torch.float32))
    return advdistill_loss(flat_hidden, weight, targets, rows, weights,
                           ~correct.bool(), lam=lam, p_max=cfg.p_max, ignore_index=IGNORE_INDEX,
                           backend=cfg.backend, chunk_size=cfg.chunk_size, ce_reduction=cfg.ce_reduction,
                           contrastive_mask=flat_contrastive_mask(contrastive_mask, cfg))


def group_loss_terms(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, advantages: torch.Tensor,
                     correct: torch.Tensor, cfg: LossConfig, group_index: torch.Tensor | None = None,
                     contrastive_mask: torch.Tensor | None = None) -> dict[str, float | None]:
    """The two terms of :func:`group_loss` and what drives the contrastive one, without gradient (telemetry).

    ``weighted_ce`` + ``contrastive`` equals the loss; ``wrong_p_mean`` is the mean of ``p_mean_i`` over
    the micro-batch's wrong responses that have a contrastive term (with ``contrastive_tokens: divergent``, those
    with tokens after their shared prefix) and ``wrong_at_clamp`` the share of them at ``p_max`` (no gradient
    there); both are None for a micro-batch without such responses.
    """
    flat_hidden, targets, rows = next_token_view(hidden.detach(), labels)
    stats = response_stats(flat_hidden, weight.detach(), targets, rows, advantages.shape[0],
                           ignore_index=IGNORE_INDEX, backend=cfg.backend, chunk_size=cfg.chunk_size,
                           contrastive_mask=flat_contrastive_mask(contrastive_mask, cfg))
    weights, lam = micro_batch_parameters(advantages.to(stats.ce.device), group_index, cfg, torch.float64)
    weights, lam = reading_parameters(targets, rows, weights, lam, IGNORE_INDEX, cfg.ce_reduction, "none")
    wrong = ~correct.bool().to(stats.ce.device) & (stats.contrastive_counts().to(stats.ce.device) > 0)
    p_wrong = stats.p_mean.double()[wrong]
    contrastive = (lam[wrong] * -torch.log1p(-p_wrong.clamp(max=cfg.p_max))).sum()
    return {"weighted_ce": float((weights * stats.ce.double()).sum()), "contrastive": float(contrastive),
            "wrong_p_mean": float(p_wrong.mean()) if p_wrong.numel() else None,
            "wrong_at_clamp": float((p_wrong >= cfg.p_max).double().mean()) if p_wrong.numel() else None}
