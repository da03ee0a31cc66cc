"""Fused AdvDistill loss: LM head, response-weighted cross-entropy and contrastive term in one op.

A group is the ``n`` responses of one prompt flattened to ``N`` tokens. With ``logp_t`` the
log-probability of token ``t``'s target under ``softmax(hidden_t @ weight.T)``, ``T_i`` the
unmasked tokens of response ``i``, ``CE_i = -mean logp_t`` and ``p_mean_i = mean exp(logp_t)``::

    loss = sum_i w_i CE_i + lam * sum_{i wrong} -log(1 - min(p_mean_i, p_max))

The fused backends (:mod:`advdistill_kernels.backends`) never materialise the ``[N, V]`` logits:
``torch`` (chunked reference), ``cpp`` (single-pass C++/OpenMP extension for CPU, compiled on
first use) and ``triton`` (CUDA kernels).
"""

from advdistill_kernels._aggregation import ResponseStats
from advdistill_kernels._errors import BackendUnavailableError
from advdistill_kernels.api import (
    BACKENDS,
    AdvDistillLoss,
    advdistill_loss,
    available_backends,
    reading_parameters,
    resolve_backend,
    response_stats,
)
from advdistill_kernels.inputs import LossInputs
from advdistill_kernels.naive import advdistill_loss_from_logits

__all__ = [
    "BACKENDS",
    "AdvDistillLoss",
    "BackendUnavailableError",
    "LossInputs",
    "ResponseStats",
    "advdistill_loss",
    "advdistill_loss_from_logits",
    "available_backends",
    "reading_parameters",
    "resolve_backend",
    "response_stats",
]
