"""The ``triton`` backend: the single-pass tile plan of ``cpp`` on a GPU, with a thin autograd.Function.

Tokens are ordered by response and packed into tiles of whole responses (:mod:`._tiles`). Per tile:
one cuBLAS GEMM writes the ``[tile, V]`` logits in the input dtype (float32 accumulation inside);
:mod:`.triton_kernels.row_logsumexp` gives each row's log-sum-exp and target log-probability in
float32; a few ``[tile]``/``[R]`` torch ops give ``c_t = dloss/dlogp_t``;
:mod:`.triton_kernels.logits_to_grad` turns the logits into ``dlogits`` in place; two cuBLAS GEMMs
give ``grad_hidden`` and ``grad_weight`` (float32 accumulation across tiles). The logits are
computed once (6 N d V FLOPs), at most ``chunk_size x V`` of them alive. As in Liger-Kernel, the
gradients are computed in the forward call and backward only rescales them.

bfloat16 and float16 inputs keep their logits and ``dlogits`` in their own dtype, as autograd
would; the softmax statistics are float32. float32 inputs use TF32 GEMMs only where
``torch.backends.cuda.matmul.allow_tf32`` allows it, as PyTorch matmuls would.

Runs on CUDA tensors (the element-wise kernels autotuned per vocabulary size), or on CPU tensors
under ``TRITON_INTERPRET=1`` (which must be set before triton is imported) with one small block.
"""

from __future__ import annotations

import os

import torch
import triton

from advdistill_kernels._aggregation import ResponseStats, combine_loss, response_means, token_coefficients
from advdistill_kernels.backends import chunk_tokens
from advdistill_kernels.backends._precomputed_gradients import loss_with_precomputed_gradients
from advdistill_kernels.backends._tiles import plan_tiles
from advdistill_kernels.triton_kernels.logits_to_grad import logits_to_grad_kernel
from advdistill_kernels.triton_kernels.row_logsumexp import row_logsumexp_kernel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOGITS_BUDGET_ELEMENTS = 256 * 1024 * 1024
"""Default tile: this many logits alive at once (512 MiB in bfloat16)."""
MIN_TILE_TOKENS = 128
INTERPRETER_BLOCK_VOCAB = 64

GPU_CONFIGS = [triton.Config({"BLOCK_VOCAB": block}, num_warps=warps)
               for block in (1024, 2048, 4096) for warps in (4, 8, 16)]
"""Autotuning space of both element-wise kernels on a GPU (keyed by the vocabulary size)."""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernels():
    """(row_logsumexp, logits_to_grad) launchers: autotuned on a GPU, one fixed block in the interpreter."""
    if interpreting():
        return row_logsumexp_kernel, logits_to_grad_kernel
    return (triton.autotune(GPU_CONFIGS, key=["vocab_size"])(row_logsumexp_kernel),
            triton.autotune(GPU_CONFIGS, key=["vocab_size"], restore_value=["logits_ptr"])(logits_to_grad_kernel))


_ROW_LOGSUMEXP, _LOGITS_TO_GRAD = _kernels()


def _block_options() -> dict:
    return {"BLOCK_VOCAB": INTERPRETER_BLOCK_VOCAB} if interpreting() else {}


def _row_logsumexp(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, vocab_size = logits.shape
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    logp = torch.empty_like(lse)
    _ROW_LOGSUMEXP[(rows,)](logits, targets, lse, logp, vocab_size, **_block_options())
    return lse, logp


def _logits_to_grad(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                    coefficients: torch.Tensor) -> None:
    rows, vocab_size = logits.shape

    def grid(meta):
        return rows, triton.cdiv(vocab_size, meta["BLOCK_VOCAB"])

    _LOGITS_TO_GRAD[grid](logits, targets, lse, coefficients, vocab_size, **_block_options())


def _forward(hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
             need_hidden_grad, need_weight_grad, chunk_size, contrastive_mask=None):
    """(loss, stats, grad_hidden, grad_weight) tile by tile; gradients None unless needed."""
    weight = weight.contiguous()
    num_responses = response_weights.shape[0]
    need_gradients = need_hidden_grad or need_weight_grad
    default_tile = chunk_tokens(None, weight.shape[0], LOGITS_BUDGET_ELEMENTS, MIN_TILE_TOKENS)
    plan = plan_tiles(targets, response_index, wrong, lam, ignore_index, chunk_size, default_tile, need_gradients,
                      contrastive_mask)
    rows = hidden.index_select(0, plan.order)
    row_targets = targets[plan.order].contiguous()
    row_responses = response_index[plan.order]
    all_valid = torch.ones_like(row_targets, dtype=torch.bool)
    row_mask = None if contrastive_mask is None else contrastive_mask[plan.order]
    logp = torch.zeros(rows.shape[0], dtype=torch.float32, device=hidden.device)
    p_sums = torch.zeros(num_responses, dtype=torch.float32, device=hidden.device)
    counts = torch.bincount(row_responses, minlength=num_responses)
    contrastive_counts = counts if row_mask is None else torch.bincount(row_responses[row_mask],
                                                                        minlength=num_responses)
    largest_tile = max((tile.end - tile.begin for tile in plan.tiles), default=0)
    buffer = torch.empty(largest_tile, weight.shape[0], dtype=hidden.dtype, device=hidden.device)
    gradient_tiles = sum(tile.compute_gradients for tile in plan.tiles)
    grad_rows = torch.empty_like(rows) if need_hidden_grad else None
    # several tiles add up in float32; a single tile is one GEMM with float32 accumulation inside
    accumulator_dtype = torch.float32 if gradient_tiles > 1 else hidden.dtype
    grad_weight = torch.zeros(weight.shape, dtype=accumulator_dtype, device=hidden.device) if need_weight_grad \
        else None
    for tile in plan.tiles:
        span = slice(tile.begin, tile.end)
        logits = torch.mm(rows[span], weight.T, out=buffer[:tile.end - tile.begin])
        lse, tile_logp = _row_logsumexp(logits, row_targets[span])
        logp[span] = tile_logp
        tile_mask = None if row_mask is None else row_mask[span]
        if tile.accumulate_stats:
            probabilities = logp[span].exp()
            p_sums.index_add_(0, row_responses[span],
                              probabilities if tile_mask is None else torch.where(tile_mask, probabilities, 0.0))
        if not tile.compute_gradients:
            continue
        # p_mean is complete for every response whose coefficient needs it (the plan sees to that)
        running = ResponseStats(torch.zeros_like(p_sums), p_sums / contrastive_counts.clamp(min=1), counts,
                                contrastive_counts)
        coefficients = token_coefficients(tile_logp, all_valid[span], row_responses[span], running,
                                          response_weights, wrong, lam, p_max, tile_mask)
        _logits_to_grad(logits, row_targets[span], lse, coefficients.contiguous())
        if need_hidden_grad:
            torch.mm(logits, weight, out=grad_rows[span])
        if need_weight_grad and accumulator_dtype == hidden.dtype:
            grad_weight.addmm_(logits.T, rows[span])
        elif need_weight_grad:
            grad_weight += logits.T @ rows[span]
    stats = response_means(logp, all_valid, row_responses, num_responses, row_mask)
    loss = combine_loss(stats, response_weights, wrong, lam, p_max)
    grad_hidden = None
    if need_hidden_grad:
        grad_hidden = torch.zeros_like(hidden).index_copy_(0, plan.order, grad_rows)
    return loss, stats, grad_hidden, grad_weight.to(weight.dtype) if need_weight_grad else None


def _require_supported(hidden: torch.Tensor) -> None:
    if hidden.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"backend 'triton': expected float16, bfloat16 or float32 inputs, got {hidden.dtype}")
    if hidden.device.type != "cuda" and not interpreting():
        raise ValueError(f"backend 'triton': expected CUDA tensors (or TRITON_INTERPRET=1), got {hidden.device}")


def fused_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, response_index: torch.Tensor,
               response_weights: torch.Tensor, wrong: torch.Tensor, *, lam: float | torch.Tensor, p_max: float,
               ignore_index: int, chunk_size: int | None,
               contrastive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Single-pass Triton loss; ``chunk_size`` tokens per logits tile (tiles hold whole responses when they fit)."""
    _require_supported(hidden)

    def compute(need_hidden_grad: bool, need_weight_grad: bool):
        loss, _, grad_hidden, grad_weight = _forward(
            hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
            need_hidden_grad, need_weight_grad, chunk_size, contrastive_mask)
        return loss, grad_hidden, grad_weight

    return loss_with_precomputed_gradients(compute, hidden, weight)


def response_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, response_index: torch.Tensor,
                   num_responses: int, *, ignore_index: int, chunk_size: int | None,
                   contrastive_mask: torch.Tensor | None = None) -> ResponseStats:
    """Per-response ``(CE_i, p_mean_i, T_i, S_i)`` from the logits only, without gradient."""
    _require_supported(hidden)
    with torch.no_grad():
        placeholder_weights = torch.zeros(num_responses, device=hidden.device)
        no_wrong = torch.zeros(num_responses, dtype=torch.bool, device=hidden.device)
        _, stats, _, _ = _forward(hidden, weight, targets, response_index, placeholder_weights, no_wrong, 0.0, 0.5,
                                  ignore_index, False, False, chunk_size, contrastive_mask)
    return stats
