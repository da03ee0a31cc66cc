"""Pass 1: per-token log-sum-exp over a slice of the vocabulary, and the target logit.

Program ``(token_block, split)`` computes logits tiles ``[BLOCK_TOKENS, BLOCK_VOCAB]`` with
``tl.dot`` over ``BLOCK_DIM`` slices of the hidden size, for the vocabulary blocks of its split,
and writes the running max and sum of exponentials of that split (combined on the host side).
The split holding a token's target also writes that token's target logit.
"""

import triton
import triton.language as tl

from advdistill_kernels.triton_kernels.logits_tile import logits_tile


@triton.jit
def token_logsumexp_kernel(
    hidden_ptr, weight_ptr, targets_ptr,
    split_max_ptr, split_sumexp_ptr, target_logit_ptr,
    num_tokens, vocab_size, hidden_dim, vocab_blocks_per_split,
    BLOCK_TOKENS: tl.constexpr, BLOCK_VOCAB: tl.constexpr, BLOCK_DIM: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    token_block = tl.program_id(0)
    split = tl.program_id(1)
    tokens = token_block * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    token_mask = tokens < num_tokens
    targets = tl.load(targets_ptr + tokens, mask=token_mask, other=-1)

    running_max = tl.full([BLOCK_TOKENS], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_TOKENS], dtype=tl.float32)
    target_logit = tl.zeros([BLOCK_TOKENS], dtype=tl.float32)
    first_block = split * vocab_blocks_per_split
    last_block = tl.minimum(first_block + vocab_blocks_per_split, tl.cdiv(vocab_size, BLOCK_VOCAB))
    for vocab_block in range(first_block, last_block):
        vocab = vocab_block * BLOCK_VOCAB + tl.arange(0, BLOCK_VOCAB)
        vocab_mask = vocab < vocab_size
        logits = logits_tile(hidden_ptr, weight_ptr, tokens, token_mask, vocab, vocab_mask, hidden_dim,
                             BLOCK_TOKENS, BLOCK_VOCAB, BLOCK_DIM, DOT_IN_FP32, INPUT_PRECISION)
        logits = tl.where(vocab_mask[None, :], logits, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
        target_logit += tl.sum(tl.where(vocab[None, :] == targets[:, None], logits, 0.0), axis=1)

    tl.store(split_max_ptr + split * num_tokens + tokens, running_max, mask=token_mask)
    tl.store(split_sumexp_ptr + split * num_tokens + tokens, running_sum, mask=token_mask)
    target_in_split = (targets >= first_block * BLOCK_VOCAB) & (targets < last_block * BLOCK_VOCAB)
    tl.store(target_logit_ptr + tokens, target_logit, mask=token_mask & target_in_split)
