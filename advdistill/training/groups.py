"""The training items of a scored table: one :class:`Group` (all kept responses of a prompt, tokenised, with their
advantages and correctness) per prompt, the SFT baseline's best response of each, and the held-out validation
groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from advdistill.errors import InputError
from advdistill.training.tokens import TokenizedPair, tokenize_pairs


@dataclass
class Group:
    """All responses of one prompt, tokenized, with their advantages and correctness."""

    group_id: str
    pairs: list[TokenizedPair]
    advantages: list[float]
    correct: list[bool]


def build_groups(prompts: dict[str, str], scored: Any, tokenizer: Any, max_length: int) -> tuple[list[Group], int]:
    """Kept groups of a scored table (polars) as :class:`Group`; also returns the truncated-response count."""
    groups, truncated = [], 0
    kept = scored.filter(scored["kept"]).sort("prompt_id", "sample_idx")
    unknown = sorted(set(kept["prompt_id"]) - set(prompts))
    if unknown:
        raise InputError(f"scored groups of {len(unknown)} prompt(s) not in the training rows, e.g. {unknown[:3]}: "
                         "were the rows prepared again after scoring?")
    all_pairs = iter(tokenize_pairs(tokenizer, [prompts[p] for p in kept["prompt_id"]], kept["response"].to_list(),
                                    max_length))
    for (prompt_id,), frame in kept.group_by("prompt_id", maintain_order=True):
        pairs = [next(all_pairs) for _ in range(frame.height)]
        truncated += sum(p.truncated for p in pairs)
        groups.append(Group(prompt_id, pairs, frame["advantage"].to_list(), frame["correct"].to_list()))
    return groups, truncated


def best_pairs(groups: Sequence[Group]) -> list[TokenizedPair]:
    """The SFT baseline's data: per group, the response with the highest advantage (first on ties)."""
    return [g.pairs[max(range(len(g.pairs)), key=lambda i: (g.advantages[i], -i))] for g in groups]


def split_validation(groups: Sequence[Group], fraction: float, seed: int) -> tuple[list[Group], list[Group]]:
    """Hold out ``fraction`` of the groups (at least one when ``fraction > 0`` and there are two)."""
    order = sorted(groups, key=lambda g: g.group_id)
    if fraction <= 0 or len(order) < 2:
        return list(order), []
    held = max(1, int(round(fraction * len(order))))
    shuffled = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed)).tolist()
    held_ids = set(shuffled[:held])
    return ([g for i, g in enumerate(order) if i not in held_ids], [g for i, g in enumerate(order) if i in held_ids])
