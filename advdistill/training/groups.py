"""The training items of a scored table: one :class:`Group` (all kept responses of a prompt, tokenised, with their
advantages and correctness) per prompt, the SFT baseline's best response of each, the held-out validation
groups, and where each wrong response leaves every correct one (``training.loss.contrastive_tokens: divergent``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from advdistill.errors import InputError
from advdistill.losses import IGNORE_INDEX
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


def response_tokens(pair: TokenizedPair) -> list[int]:
    """The response's token ids (its labels after the masked prompt, the closing token included)."""
    return [label for label in pair.labels if label != IGNORE_INDEX]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens at the start of ``a`` and ``b`` that are the same."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def shared_prefix_lengths(group: Group) -> list[int]:
    """Per response of ``group``: for a wrong response, its longest token-level common prefix with any correct
    response of the group (response tokens only: the prompt is the group's own and masked anyway); 0 for a correct
    response (it has no contrastive term). The tokens after it are where the wrong response went wrong
    (``training.loss.contrastive_tokens: divergent``); a wrong response that is a prefix of (or the same as) a
    correct one has none."""
    correct = [response_tokens(pair) for pair, ok in zip(group.pairs, group.correct) if ok]
    lengths = []
    for pair, ok in zip(group.pairs, group.correct):
        tokens = response_tokens(pair)
        lengths.append(0 if ok else max((common_prefix_length(tokens, other) for other in correct), default=0))
    return lengths


def divergent_masks(group: Group) -> list[list[bool]]:
    """Per response of ``group``, aligned with its ``labels``: True at the response tokens after its shared prefix
    (:func:`shared_prefix_lengths`), False at the prompt and the shared prefix."""
    masks = []
    for pair, shared in zip(group.pairs, shared_prefix_lengths(group)):
        seen, mask = 0, []
        for label in pair.labels:
            if label == IGNORE_INDEX:
                mask.append(False)
                continue
            mask.append(seen >= shared)
            seen += 1
        masks.append(mask)
    return masks


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
