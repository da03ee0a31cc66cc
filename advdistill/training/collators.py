"""What the ``Trainer``'s data loader hands the model: a list dataset, and micro-batches of tokenised pairs (SFT)
or of whole groups (AdvDistill): ``training.optim.per_device_batch_size`` counts prompts for both objectives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from advdistill.errors import TrainingError
from advdistill.training.groups import Group, divergent_masks
from advdistill.training.tokens import TokenizedPair, pad_sequences


class ListDataset(Dataset):
    """Training or validation items (pairs or groups) as the map-style dataset the ``Trainer`` loads from."""

    def __init__(self, items: Sequence[Any]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class PairCollator:
    """Batches of :class:`TokenizedPair` for plain causal-LM training."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
        return pad_sequences(pairs, self.pad_id)


class GroupCollator:
    """Micro-batches of whole groups (the AdvDistill objective): every response of every group as one row, with
    ``group_index`` (the group of each row within the micro-batch) so that the loss weighs each group by its own
    advantages, and ``group_ids`` (the prompts, for messages and for counting groups). With ``contrastive_tokens``
    ``divergent`` also ``contrastive_mask`` ``[rows, length]``: the response tokens after each wrong response's
    longest common prefix with a correct response of its group (:func:`~advdistill.training.groups.divergent_masks`).
    """

    def __init__(self, pad_id: int, contrastive_tokens: str = "all"):
        if contrastive_tokens not in ("all", "divergent"):
            raise ValueError(f"contrastive_tokens: expected 'all' or 'divergent', got {contrastive_tokens!r}")
        self.pad_id = pad_id
        self.contrastive_tokens = contrastive_tokens

    def __call__(self, groups: Sequence[Group]) -> dict[str, Any]:
        if not groups:
            raise TrainingError("AdvDistill got a micro-batch without groups")
        batch = pad_sequences([pair for group in groups for pair in group.pairs], self.pad_id)
        batch["advantages"] = torch.tensor([a for group in groups for a in group.advantages], dtype=torch.float32)
        batch["correct"] = torch.tensor([c for group in groups for c in group.correct], dtype=torch.bool)
        batch["group_index"] = torch.tensor([g for g, group in enumerate(groups) for _ in group.pairs],
                                            dtype=torch.long)
        batch["group_ids"] = [group.group_id for group in groups]
        if self.contrastive_tokens == "divergent":
            mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
            rows = [row for group in groups for row in divergent_masks(group)]
            for index, row in enumerate(rows):
                mask[index, :len(row)] = torch.tensor(row, dtype=torch.bool)
            batch["contrastive_mask"] = mask
        return batch
