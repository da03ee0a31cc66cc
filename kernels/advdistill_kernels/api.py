"""Public entry points: input validation, backend choice and dropping masked tokens.

Masked tokens (prompt, padding) carry no loss, so they are removed before a backend runs: the
backends then do LM-head work only for response tokens, and the masked rows of the hidden-state
gradient are exact zeros.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from advdistill_kernels import backends
from advdistill_kernels._aggregation import ResponseStats, compute_dtype
from advdistill_kernels._errors import BackendUnavailableError
from advdistill_kernels._validation import validate_inputs

BACKENDS = backends.BACKENDS
log = logging.getLogger(__name__)


@functools.cache
def _log_auto_fallback(wanted: str, reason: str) -> None:
    """Once per reason: ``auto`` runs the slower torch backend instead of ``wanted``."""
    log.warning("loss backend auto: %s is unavailable (%s); using the torch backend, which is slower", wanted, reason)


def available_backends(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """Backends that can run on tensors of ``device`` here (may compile the C++ extension)."""
    device = torch.device(device)
    return tuple(name for name in BACKENDS if backends.unavailable_reason(name, device) is None)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for ``backend`` (``auto`` or a name) on ``device``.

    ``auto`` is triton for CUDA tensors when triton imports, cpp for CPU tensors when the
    extension builds, torch otherwise. A named backend that cannot run raises
    :class:`BackendUnavailableError`.
    """
    if backend == "auto":
        wanted = {"cuda": "triton", "cpu": "cpp"}.get(device.type)
        reason = backends.unavailable_reason(wanted, device) if wanted else None
        if wanted and reason is None:
            return wanted
        if wanted:
            _log_auto_fallback(wanted, reason)
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")
    reason = backends.unavailable_reason(backend, device)
    if reason is not None:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {reason}")
    return backend


def _valid_tokens(targets: torch.Tensor, ignore_index: int) -> torch.Tensor | None:
    """Indices of the unmasked tokens, or None when no token is masked."""
    valid = targets != ignore_index
    if bool(valid.all()):
        return None
    return valid.nonzero().squeeze(1)


def _autocast_inputs(hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside ``torch.autocast`` both inputs go to the autocast dtype, as they would for ``nn.Linear``."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return hidden.to(dtype), weight.to(dtype)
    return hidden, weight


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive number of tokens or None, got {chunk_size}")


CE_REDUCTIONS = ("mean", "sum")
CONTRASTIVE_SCALES = ("none", "per_response")


def check_readings(ce_reduction: str, contrastive_scale: str) -> None:
    if ce_reduction not in CE_REDUCTIONS:
        raise ValueError(f"ce_reduction: expected one of {CE_REDUCTIONS}, got {ce_reduction!r}")
    if contrastive_scale not in CONTRASTIVE_SCALES:
        raise ValueError(f"contrastive_scale: expected one of {CONTRASTIVE_SCALES}, got {contrastive_scale!r}")


def reading_parameters(targets: torch.Tensor, response_index: torch.Tensor, response_weights: torch.Tensor,
                       lam: float | torch.Tensor, ignore_index: int, ce_reduction: str,
                       contrastive_scale: str) -> tuple[torch.Tensor, float | torch.Tensor]:
    """``(w', lam')`` that turn the token-mean loss every backend computes into the chosen reading, exactly.

    ``sum_i w_i sum_t ce_t = sum_i (w_i T_i) CE_i``, so the token-sum reading weighs response ``i`` by its
    unmasked tokens ``T_i``; the ``1/n`` reading divides ``lam`` (a number or one per response) by the call's
    ``n = R`` responses, which are one group's: a call over several groups passes each response's own
    ``lam / n_g`` as a tensor instead (what :mod:`advdistill.losses` does).
    """
    if ce_reduction == "sum":
        valid = targets != ignore_index
        counts = torch.zeros_like(response_weights).index_add(
            0, torch.where(valid, response_index, 0), valid.to(response_weights.dtype))
        response_weights = response_weights * counts
    if contrastive_scale == "per_response":
        lam = lam / response_weights.shape[0]
    return response_weights, lam


def advdistill_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    response_index: torch.Tensor, response_weights: torch.Tensor, wrong: torch.Tensor, *,
                    lam: float | torch.Tensor = 0.5, p_max: float = 0.999, ignore_index: int = -100,
                    backend: str = "auto", chunk_size: int | None = None, ce_reduction: str = "mean",
                    contrastive_scale: str = "none", contrastive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """AdvDistill loss of one group (or of several, see ``lam``), differentiable wrt ``hidden`` and ``weight``.

    ``hidden`` ``[N, d]`` and ``weight`` ``[V, d]`` share a float dtype; ``targets`` ``[N]`` (int64,
    ``ignore_index`` = masked), ``response_index`` ``[N]`` (int64 in ``[0, R)`` for unmasked
    tokens), ``response_weights`` ``[R]`` (float) and ``wrong`` ``[R]`` (bool); ``lam`` is one number or a
    float tensor ``[R]``, the contrastive weight ``lam_i`` of each (wrong) response, which lets one call hold
    several groups with their own weights (``response_weights`` are per response already). The loss is a
    float32 scalar (float64 for float64 inputs). Under ``torch.autocast`` both ``hidden`` and
    ``weight`` are first cast to the autocast dtype. ``chunk_size`` tunes memory vs speed: the
    number of tokens whose full-vocabulary logits a backend holds at once (``None``: its default).
    ``ce_reduction`` (``mean``: ``CE_i`` is a token mean; ``sum``: a token sum) and ``contrastive_scale``
    (``none``; ``per_response``: ``lam / n``) select a reading of the paper's eqs. 5-6. ``contrastive_mask``
    (``[N]`` bool; None: every token) restricts ``p_mean_i`` of the contrastive term to the response's tokens in
    the mask (``CE_i`` is unchanged); a wrong response without such tokens has no contrastive term (an extension,
    not the paper's: ``training.loss.contrastive_tokens: divergent``).
    """
    hidden, weight = _autocast_inputs(hidden, weight)
    validate_inputs(hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
                    contrastive_mask)
    _check_chunk_size(chunk_size)
    check_readings(ce_reduction, contrastive_scale)
    response_weights, lam = reading_parameters(targets, response_index, response_weights, lam, ignore_index,
                                               ce_reduction, contrastive_scale)
    name = resolve_backend(backend, hidden.device)
    kept = _valid_tokens(targets, ignore_index)
    if kept is not None:
        if kept.numel() == 0:
            return (hidden[:0].sum() + weight[:0].sum()).to(compute_dtype(hidden.dtype))
        hidden = hidden.index_select(0, kept)
        targets = targets[kept]
        response_index = response_index[kept]
        contrastive_mask = None if contrastive_mask is None else contrastive_mask[kept]
    with torch.autocast(hidden.device.type, enabled=False):
        return backends.load(name).fused_loss(hidden, weight, targets, response_index, response_weights, wrong,
                                              lam=lam, p_max=p_max, ignore_index=ignore_index, chunk_size=chunk_size,
                                              contrastive_mask=contrastive_mask)


def response_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, response_index: torch.Tensor,
                   num_responses: int, *, ignore_index: int = -100, backend: str = "auto",
                   chunk_size: int | None = None, contrastive_mask: torch.Tensor | None = None) -> ResponseStats:
    """Per-response ``(ce, p_mean, num_tokens, contrastive_tokens)`` of one group, without gradient (for logging);
    ``p_mean`` over the tokens in ``contrastive_mask`` (None: every token, and ``contrastive_tokens`` None)."""
    hidden, weight = _autocast_inputs(hidden, weight)
    placeholder_weights = torch.zeros(num_responses, device=hidden.device)
    no_wrong = torch.zeros(num_responses, dtype=torch.bool, device=hidden.device)
    validate_inputs(hidden, weight, targets, response_index, placeholder_weights, no_wrong, 0.0, 0.5, ignore_index,
                    contrastive_mask)
    _check_chunk_size(chunk_size)
    name = resolve_backend(backend, hidden.device)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        return backends.load(name).response_stats(hidden.detach(), weight.detach(), targets, response_index,
                                                  num_responses, ignore_index=ignore_index, chunk_size=chunk_size,
                                                  contrastive_mask=contrastive_mask)


class AdvDistillLoss(nn.Module):
    """:func:`advdistill_loss` with its options stored on the module."""

    def __init__(self, lam: float = 0.5, p_max: float = 0.999, ignore_index: int = -100, backend: str = "auto",
                 chunk_size: int | None = None, ce_reduction: str = "mean", contrastive_scale: str = "none"):
        super().__init__()
        check_readings(ce_reduction, contrastive_scale)
        self.lam = lam
        self.p_max = p_max
        self.ignore_index = ignore_index
        self.backend = backend
        self.chunk_size = chunk_size
        self.ce_reduction = ce_reduction
        self.contrastive_scale = contrastive_scale

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                response_index: torch.Tensor, response_weights: torch.Tensor, wrong: torch.Tensor,
                contrastive_mask: torch.Tensor | None = None) -> torch.Tensor:
        return advdistill_loss(hidden, weight, targets, response_index, response_weights, wrong, lam=self.lam,
                               p_max=self.p_max, ignore_index=self.ignore_index, backend=self.backend,
                               chunk_size=self.chunk_size, ce_reduction=self.ce_reduction,
                               contrastive_scale=self.contrastive_scale, contrastive_mask=contrastive_mask)

    def extra_repr(self) -> str:
        return (f"lam={self.lam}, p_max={self.p_max}, ignore_index={self.ignore_index}, "
                f"backend={self.backend!r}, chunk_size={self.chunk_size}, ce_reduction={self.ce_reduction!r}, "
                f"contrastive_scale={self.contrastive_scale!r}")
