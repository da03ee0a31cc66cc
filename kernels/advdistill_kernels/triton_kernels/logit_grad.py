"""Pass 2: recompute a logits tile and write ``dlogits = c_t (onehot(y_t) - exp(z - lse_t))``.

Program ``(token_block, vocab_block)`` handles tokens of the current chunk (rows ``row_offset +``
``[0, num_rows)`` of ``hidden``) and writes rows ``[0, num_rows)`` of the ``[chunk, V]``
``grad_logits`` buffer, in the buffer's dtype. The two gradient matmuls that follow are plain
GEMMs left to cuBLAS (``grad_hidden = dlogits @ W``, ``grad_weight += dlogits^T @ h``), which
avoids floating-point atomics.
"""

import triton
import triton.language as tl

from advdistill_kernels.triton_kernels.logits_tile import logits_tile


@triton.jit
def logit_grad_kernel(
    hidden_ptr, weight_ptr, targets_ptr, lse_ptr, coefficient_ptr, grad_logits_ptr,
    row_offset, num_rows, vocab_size, hidden_dim,
    BLOCK_TOKENS: tl.constexpr, BLOCK_VOCAB: tl.constexpr, BLOCK_DIM: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    token_block = tl.program_id(0)
    vocab_block = tl.program_id(1)
    rows = token_block * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    row_mask = rows < num_rows
    tokens = row_offset + rows
    vocab = vocab_block * BLOCK_VOCAB + tl.arange(0, BLOCK_VOCAB)
    vocab_mask = vocab < vocab_size

    logits = logits_tile(hidden_ptr, weight_ptr, tokens, row_mask, vocab, vocab_mask, hidden_dim,
                         BLOCK_TOKENS, BLOCK_VOCAB, BLOCK_DIM, DOT_IN_FP32, INPUT_PRECISION)

    targets = tl.load(targets_ptr + tokens, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + tokens, mask=row_mask, other=0.0)
    coefficient = tl.load(coefficient_ptr + tokens, mask=row_mask, other=0.0)
    probs = tl.exp(logits - lse[:, None])
    onehot = tl.where(vocab[None, :] == targets[:, None], 1.0, 0.0)
    grad_logits = coefficient[:, None] * (onehot - probs)
    tl.store(grad_logits_ptr + rows[:, None].to(tl.int64) * vocab_size + vocab[None, :],
             grad_logits.to(grad_logits_ptr.dtype.element_ty),
             mask=row_mask[:, None] & vocab_mask[None, :])
