"""The single-pass tile plan shared by the ``cpp`` and ``triton`` backends.

A token's gradient coefficient ``c_t = dloss/dlogp_t = a_i + b_i p_t`` depends only on its own
response ``i``: ``a_i = -w_i / T_i`` is known before any logit, ``b_i`` (the contrastive part) needs
``p_mean_i``. So the unmasked tokens are ordered by response and packed into tiles of whole
responses, at most ``tile_tokens`` each; a tile's full-vocabulary logits are computed once and
give, in order, the log-sum-exp, the responses' statistics, ``c_t`` and ``dlogits`` (6 N d V FLOPs
in all). A response longer than a tile is split: without a contrastive term (``b_i = 0``) its
pieces are still single-pass; with one, a statistics-only pass over its pieces comes first, so
only those tokens have their logits computed twice.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Tile(NamedTuple):
    """Positions ``[begin, end)`` of the response-ordered tokens processed as one logits tile."""

    begin: int
    end: int
    accumulate_stats: bool
    """Add the tile's ``logp`` and ``p`` to its responses' sums (false on a second pass)."""
    compute_gradients: bool
    """Turn the logits into ``dlogits`` and run the gradient GEMMs (false on a statistics-only pass)."""


class TilePlan(NamedTuple):
    order: torch.Tensor
    """Unmasked token indices ordered by response (stable), int64 ``[M]``."""
    tiles: list[Tile]


def plan_tiles(targets: torch.Tensor, response_index: torch.Tensor, wrong: torch.Tensor, lam: float | torch.Tensor,
               ignore_index: int, chunk_size: int | None, default_tile_tokens: int,
               need_gradients: bool, contrastive_mask: torch.Tensor | None = None) -> TilePlan:
    """The tiles for one call (one host synchronisation to read the response lengths); ``lam`` is one number
    or one per response ``[R]``; a response has a contrastive term when it is wrong, its ``lam`` is not 0 and it
    has tokens in ``contrastive_mask`` (None: every token).

    ``chunk_size`` caps the tokens per tile. Without it, tiles hold ``default_tile_tokens``, or the
    longest response with a contrastive term if that is longer, so that no logit is computed twice.
    """
    valid = (targets != ignore_index).nonzero().squeeze(1)
    sorted_responses, permutation = torch.sort(response_index[valid], stable=True)
    order = valid[permutation]
    responses, lengths = torch.unique_consecutive(sorted_responses, return_counts=True)
    has_lam = lam.to(wrong.device) != 0.0 if isinstance(lam, torch.Tensor) else torch.full_like(wrong, lam != 0.0)
    flags = wrong & has_lam
    if contrastive_mask is not None:
        in_mask = (targets != ignore_index) & contrastive_mask
        flags = flags & (torch.bincount(response_index[in_mask], minlength=wrong.shape[0]) > 0).to(wrong.device)
    contrastive = flags[responses].tolist()
    tile_tokens = chunk_size
    if tile_tokens is None:
        contrastive_lengths = [length for length, flag in zip(lengths.tolist(), contrastive) if flag]
        tile_tokens = max([default_tile_tokens] + (contrastive_lengths if need_gradients else []))
    tiles: list[Tile] = []
    tile_begin = position = 0
    for length, needs_p_mean in zip(lengths.tolist(), contrastive):
        response_end = position + length
        if length > tile_tokens:
            if position > tile_begin:
                tiles.append(Tile(tile_begin, position, True, need_gradients))
            pieces = [(start, min(start + tile_tokens, response_end))
                      for start in range(position, response_end, tile_tokens)]
            two_passes = need_gradients and needs_p_mean
            tiles += [Tile(start, end, True, need_gradients and not two_passes) for start, end in pieces]
            if two_passes:
                tiles += [Tile(start, end, False, True) for start, end in pieces]
            tile_begin = response_end
        elif response_end - tile_begin > tile_tokens:
            tiles.append(Tile(tile_begin, position, True, need_gradients))
            tile_begin = position
        position = response_end
    if position > tile_begin:
        tiles.append(Tile(tile_begin, position, True, need_gradients))
    return TilePlan(order.to(response_index.device), tiles)


def tiles_tensor(tiles: list[Tile]) -> torch.Tensor:
    """``[T, 4]`` int64 (begin, end, accumulate_stats, compute_gradients), as the C++ extension takes them."""
    return torch.tensor([list(map(int, tile)) for tile in tiles], dtype=torch.int64).reshape(-1, 4)
