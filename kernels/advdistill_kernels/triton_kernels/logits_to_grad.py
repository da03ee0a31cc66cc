"""Turn a logits tile, in place, into ``dlogits = c_t (onehot(y_t) - exp(z - lse_t))``.

Program ``(row, vocab_block)`` handles ``BLOCK_VOCAB`` columns of one row; the arithmetic is in
float32 and the result is stored in the tile's dtype (bfloat16 ``dlogits`` for bfloat16 inputs, as
autograd would have them), ready for the two gradient GEMMs.
"""

import triton
import triton.language as tl


@triton.jit
def logits_to_grad_kernel(logits_ptr, targets_ptr, lse_ptr, coefficient_ptr, vocab_size,
                          BLOCK_VOCAB: tl.constexpr):
    row = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK_VOCAB + tl.arange(0, BLOCK_VOCAB)
    in_vocab = columns < vocab_size
    pointers = logits_ptr + row.to(tl.int64) * vocab_size + columns
    logits = tl.load(pointers, mask=in_vocab, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + row)
    coefficient = tl.load(coefficient_ptr + row)
    target = tl.load(targets_ptr + row)
    onehot = tl.where(columns == target, 1.0, 0.0)
    grad_logits = coefficient * (onehot - tl.exp(logits - lse))
    tl.store(pointers, grad_logits.to(logits_ptr.dtype.element_ty), mask=in_vocab)
