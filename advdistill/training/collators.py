"""What the ``Trainer``'s data loader hands the model: a list dataset, and micro-batches of tokenised pairs (SFT)
or of exactly one group (AdvDistill)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from advdistill.errors import TrainingError
from advdistill.training.groups import Group
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
    """One group per micro-batch (the AdvDistill objective)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, groups: Sequence[Group]) -> dict[str, Any]:
        if len(groups) != 1:
            raise TrainingError(f"AdvDistill takes one group per micro-batch, got {len(groups)}")
        group = groups[0]
        batch = pad_sequences(group.pairs, self.pad_id)
        batch["advantages"] = torch.tensor(group.advantages, dtype=torch.float32)
        batch["correct"] = torch.tensor(group.correct, dtype=torch.bool)
        batch["group_id"] = group.group_id
        return batch
