"""Per-row log-sum-exp of a logits tile and the target's log-probability.

Program ``row`` streams its row of the ``[rows, V]`` logits tile in ``BLOCK_VOCAB`` slices with a
lane-wise online max and sum of exponentials (float32 whatever the tile's dtype), then writes
``lse`` and ``logp = z[target] - lse``.
"""

import triton
import triton.language as tl

NEGATIVE_SENTINEL = tl.constexpr(-1.0e30)
"""Finite stand-in for -inf, so that lanes without a logit yet never compute inf - inf (a ``tl.constexpr``:
the only kind of global a ``@triton.jit`` function may read once compiled)."""


@triton.jit
def row_logsumexp_kernel(logits_ptr, targets_ptr, lse_ptr, logp_ptr, vocab_size, BLOCK_VOCAB: tl.constexpr):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * vocab_size
    lane_max = tl.full([BLOCK_VOCAB], NEGATIVE_SENTINEL, dtype=tl.float32)
    lane_sum = tl.zeros([BLOCK_VOCAB], dtype=tl.float32)
    for start in range(0, vocab_size, BLOCK_VOCAB):
        columns = start + tl.arange(0, BLOCK_VOCAB)
        in_vocab = columns < vocab_size
        logits = tl.load(row_ptr + columns, mask=in_vocab, other=0.0).to(tl.float32)
        logits = tl.where(in_vocab, logits, NEGATIVE_SENTINEL)
        new_max = tl.maximum(lane_max, logits)
        lane_sum = lane_sum * tl.exp(lane_max - new_max) + tl.where(in_vocab, tl.exp(logits - new_max), 0.0)
        lane_max = new_max
    row_max = tl.max(lane_max, axis=0)
    lse = row_max + tl.log(tl.sum(lane_sum * tl.exp(lane_max - row_max), axis=0))
    target = tl.load(targets_ptr + row)
    target_logit = tl.load(row_ptr + target).to(tl.float32)
    tl.store(lse_ptr + row, lse)
    tl.store(logp_ptr + row, target_logit - lse)
