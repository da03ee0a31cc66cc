"""One group's arguments to :func:`advdistill_loss`, bundled so tests and benchmarks build them alike."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class LossInputs:
    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    response_index: torch.Tensor
    response_weights: torch.Tensor
    wrong: torch.Tensor
    lam: float | torch.Tensor = 0.5
    """One number, or a float tensor ``[R]`` with each response's own contrastive weight."""
    p_max: float = 0.999
    contrastive_mask: torch.Tensor | None = None
    """``[N]`` bool: the tokens ``p_mean_i`` of the contrastive term is taken over (None: every token)."""

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> LossInputs:
        """A copy on ``device``; ``dtype`` (default: unchanged) applies to ``hidden`` and ``weight`` only."""
        dtype = dtype or self.hidden.dtype
        lam = self.lam.to(device) if isinstance(self.lam, torch.Tensor) else self.lam
        mask = None if self.contrastive_mask is None else self.contrastive_mask.to(device)
        return replace(self, hidden=self.hidden.to(device, dtype), weight=self.weight.to(device, dtype),
                       targets=self.targets.to(device), response_index=self.response_index.to(device),
                       response_weights=self.response_weights.to(device), wrong=self.wrong.to(device), lam=lam,
                       contrastive_mask=mask)
