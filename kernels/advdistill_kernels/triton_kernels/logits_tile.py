"""The logits tile ``hidden[tokens] @ weight[vocab]^T`` shared by both passes, accumulated in fp32.

``tl.dot`` runs over ``BLOCK_DIM`` slices of the hidden size; ``DOT_IN_FP32`` casts the operands
first (bf16 ``tl.dot`` is wrong under ``TRITON_INTERPRET=1``). Masked rows and columns load zeros.
"""

import triton
import triton.language as tl


@triton.jit
def logits_tile(hidden_ptr, weight_ptr, tokens, token_mask, vocab, vocab_mask, hidden_dim,
                BLOCK_TOKENS: tl.constexpr, BLOCK_VOCAB: tl.constexpr, BLOCK_DIM: tl.constexpr,
                DOT_IN_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    logits = tl.zeros([BLOCK_TOKENS, BLOCK_VOCAB], dtype=tl.float32)
    for dim_start in range(0, hidden_dim, BLOCK_DIM):
        dims = dim_start + tl.arange(0, BLOCK_DIM)
        dim_mask = dims < hidden_dim
        h = tl.load(hidden_ptr + tokens[:, None].to(tl.int64) * hidden_dim + dims[None, :],
                    mask=token_mask[:, None] & dim_mask[None, :], other=0.0)
        w = tl.load(weight_ptr + vocab[:, None].to(tl.int64) * hidden_dim + dims[None, :],
                    mask=vocab_mask[:, None] & dim_mask[None, :], other=0.0)
        if DOT_IN_FP32:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        logits = tl.dot(h, tl.trans(w), logits, input_precision=INPUT_PRECISION)
    return logits
