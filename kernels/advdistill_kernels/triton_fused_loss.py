"""The ``triton`` backend: two Triton kernels, two GEMMs per chunk and a thin autograd.Function.

Pass 1 (:mod:`.triton_kernels.token_logsumexp`) gives each token's log-sum-exp and target logit
without writing logits; the per-response aggregation (a few ``[N]``/``[R]`` torch ops) gives the
loss and ``c_t = dloss/dlogp_t``. Pass 2 goes over ``chunk_size`` tokens at a time:
:mod:`.triton_kernels.logit_grad` recomputes the chunk's logits and writes ``dlogits`` (input
dtype), then ``grad_hidden = dlogits @ W`` and ``grad_weight += dlogits^T @ h`` are cuBLAS GEMMs
(float32 accumulation across chunks). So at most ``chunk_size x V`` ``dlogits`` are alive, and no
floating-point atomics are needed. As in Liger-Kernel, the gradients are computed in the forward
call and backward only rescales them (skipped when the incoming gradient is 1).

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (which must be set before
triton is imported). The interpreter multiplies bfloat16 wrongly in ``tl.dot``, so tiles are cast
to float32 before every dot there. float32 inputs use IEEE float32 dots unless
``torch.backends.cuda.matmul.allow_tf32`` is set, as PyTorch matmuls would.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton

from advdistill_kernels._aggregation import ResponseStats, combine_loss, response_means, token_coefficients
from advdistill_kernels._saved_gradients import scale_saved_gradient
from advdistill_kernels.triton_kernels.logit_grad import logit_grad_kernel
from advdistill_kernels.triton_kernels.token_logsumexp import token_logsumexp_kernel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DLOGITS_BUDGET_ELEMENTS = 256 * 1024 * 1024
"""Default pass-2 chunk: this many ``dlogits`` alive at once (512 MiB in bfloat16)."""


class KernelConfig(NamedTuple):
    block_tokens: int
    block_vocab: int
    block_dim: int
    num_warps: int
    num_stages: int
    min_programs: int
    """Vocabulary splits of pass 1 are added until the grid has at least this many programs."""


GPU_CONFIG = KernelConfig(block_tokens=128, block_vocab=128, block_dim=64, num_warps=8, num_stages=3,
                          min_programs=512)
INTERPRETER_CONFIG = KernelConfig(block_tokens=16, block_vocab=64, block_dim=16, num_warps=4, num_stages=1,
                                  min_programs=1)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _config(dtype: torch.dtype) -> KernelConfig:
    if interpreting():
        return INTERPRETER_CONFIG
    # float32 tiles are twice as large: halve BLOCK_DIM to keep the pipelined tiles in shared memory
    return GPU_CONFIG._replace(block_dim=32) if dtype == torch.float32 else GPU_CONFIG


def _dot_options(dtype: torch.dtype) -> dict:
    fp32_dots = interpreting() or dtype == torch.float32
    precision = "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return {"DOT_IN_FP32": fp32_dots, "INPUT_PRECISION": precision}


def _token_logsumexp(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     config: KernelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lse, target_logit)`` per token in float32 (target logit 0 at masked tokens)."""
    num_tokens, hidden_dim = hidden.shape
    vocab_size = weight.shape[0]
    token_blocks = triton.cdiv(num_tokens, config.block_tokens)
    vocab_blocks = triton.cdiv(vocab_size, config.block_vocab)
    wanted_splits = min(vocab_blocks, max(1, triton.cdiv(config.min_programs, token_blocks)))
    blocks_per_split = triton.cdiv(vocab_blocks, wanted_splits)
    splits = triton.cdiv(vocab_blocks, blocks_per_split)
    split_max = torch.empty(splits, num_tokens, dtype=torch.float32, device=hidden.device)
    split_sumexp = torch.empty_like(split_max)
    target_logit = torch.zeros(num_tokens, dtype=torch.float32, device=hidden.device)
    token_logsumexp_kernel[(token_blocks, splits)](
        hidden, weight, targets, split_max, split_sumexp, target_logit,
        num_tokens, vocab_size, hidden_dim, blocks_per_split,
        BLOCK_TOKENS=config.block_tokens, BLOCK_VOCAB=config.block_vocab, BLOCK_DIM=config.block_dim,
        num_warps=config.num_warps, num_stages=config.num_stages, **_dot_options(hidden.dtype),
    )
    overall_max = split_max.max(dim=0).values
    lse = overall_max + torch.log((split_sumexp * torch.exp(split_max - overall_max)).sum(dim=0))
    return lse, target_logit


def default_token_chunk(vocab_size: int, block_tokens: int) -> int:
    """Tokens per ``dlogits`` chunk: about ``DLOGITS_BUDGET_ELEMENTS`` elements, whole token blocks."""
    tokens = max(1, DLOGITS_BUDGET_ELEMENTS // vocab_size)
    return max(block_tokens, tokens // block_tokens * block_tokens)


def _gradients(hidden, weight, targets, lse, coefficients, need_hidden_grad, need_weight_grad, chunk_size,
               config):
    """Pass 2 chunk by chunk: Triton writes ``dlogits`` for the chunk, then two GEMMs use it."""
    num_tokens, hidden_dim = hidden.shape
    vocab_size = weight.shape[0]
    chunk = chunk_size or default_token_chunk(vocab_size, config.block_tokens)
    starts = range(0, num_tokens, chunk)
    # dlogits in the input dtype, as autograd would have them
    grad_logits_buffer = torch.empty(min(chunk, num_tokens), vocab_size, dtype=hidden.dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
    # several chunks add up in float32; a single chunk is one GEMM with float32 accumulation inside
    weight_accumulator_dtype = torch.float32 if len(starts) > 1 else hidden.dtype
    grad_weight = (torch.zeros(vocab_size, hidden_dim, dtype=weight_accumulator_dtype, device=hidden.device)
                   if need_weight_grad else None)
    for start in starts:
        rows = min(chunk, num_tokens - start)
        grad_logits = grad_logits_buffer[:rows]
        grid = (triton.cdiv(rows, config.block_tokens), triton.cdiv(vocab_size, config.block_vocab))
        logit_grad_kernel[grid](
            hidden, weight, targets, lse, coefficients, grad_logits,
            start, rows, vocab_size, hidden_dim,
            BLOCK_TOKENS=config.block_tokens, BLOCK_VOCAB=config.block_vocab, BLOCK_DIM=config.block_dim,
            num_warps=config.num_warps, num_stages=config.num_stages, **_dot_options(hidden.dtype),
        )
        hidden_chunk = hidden[start:start + rows]
        if need_hidden_grad:
            grad_hidden[start:start + rows] = grad_logits @ weight
        if need_weight_grad and weight_accumulator_dtype == hidden.dtype:
            grad_weight.addmm_(grad_logits.T, hidden_chunk)
        elif need_weight_grad:
            grad_weight += grad_logits.T @ hidden_chunk
    return grad_hidden, grad_weight.to(weight.dtype) if need_weight_grad else None


def _forward(hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
             need_hidden_grad, need_weight_grad, chunk_size):
    hidden = hidden.contiguous()
    weight = weight.contiguous()
    config = _config(hidden.dtype)
    valid = targets != ignore_index
    if hidden.shape[0] == 0:
        lse = target_logit = hidden.new_zeros(0, dtype=torch.float32)
    else:
        lse, target_logit = _token_logsumexp(hidden, weight, targets, config)
    logp = torch.where(valid, target_logit - lse, 0.0)
    stats = response_means(logp, valid, response_index, response_weights.shape[0])
    loss = combine_loss(stats, response_weights, wrong, lam, p_max)
    grad_hidden = grad_weight = None
    if need_hidden_grad or need_weight_grad:
        coefficients = token_coefficients(logp, valid, response_index, stats, response_weights, wrong, lam, p_max)
        grad_hidden, grad_weight = _gradients(hidden, weight, targets, lse, coefficients.contiguous(),
                                              need_hidden_grad, need_weight_grad, chunk_size, config)
    return loss, stats, grad_hidden, grad_weight


class _TritonAdvDistillLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
                need_hidden_grad, need_weight_grad, chunk_size):
        loss, _, grad_hidden, grad_weight = _forward(
            hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
            need_hidden_grad, need_weight_grad, chunk_size)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = (scale_saved_gradient(saved, grad_loss) for saved in ctx.saved_tensors)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None, None


def _require_supported(hidden: torch.Tensor) -> None:
    if hidden.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"backend 'triton': expected float16, bfloat16 or float32 inputs, got {hidden.dtype}")
    if hidden.device.type != "cuda" and not interpreting():
        raise ValueError(f"backend 'triton': expected CUDA tensors (or TRITON_INTERPRET=1), got {hidden.device}")


def advdistill_loss_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           response_index: torch.Tensor, response_weights: torch.Tensor, wrong: torch.Tensor, *,
                           lam: float, p_max: float, ignore_index: int, chunk_size: int | None) -> torch.Tensor:
    """Fused Triton loss; ``chunk_size`` is the number of tokens per ``dlogits`` chunk of pass 2."""
    _require_supported(hidden)
    grad_enabled = torch.is_grad_enabled()
    return _TritonAdvDistillLoss.apply(hidden, weight, targets, response_index, response_weights, wrong, lam,
                                       p_max, ignore_index, grad_enabled and hidden.requires_grad,
                                       grad_enabled and weight.requires_grad, chunk_size)


def response_stats_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          response_index: torch.Tensor, num_responses: int, *, ignore_index: int,
                          chunk_size: int | None) -> ResponseStats:
    """Per-response ``(CE_i, p_mean_i, T_i)`` from pass 1 only, without gradient."""
    _require_supported(hidden)
    with torch.no_grad():
        placeholder_weights = torch.zeros(num_responses, device=hidden.device)
        no_wrong = torch.zeros(num_responses, dtype=torch.bool, device=hidden.device)
        _, stats, _, _ = _forward(hidden, weight, targets, response_index, placeholder_weights, no_wrong, 0.0, 0.5,
                                  ignore_index, False, False, chunk_size)
    return stats
