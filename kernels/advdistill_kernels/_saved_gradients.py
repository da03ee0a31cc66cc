"""Backward helper of the backends that compute their gradients in the forward call."""

from __future__ import annotations

import torch


def scale_saved_gradient(gradient: torch.Tensor | None, grad_loss: torch.Tensor) -> torch.Tensor | None:
    """``gradient * grad_loss``, skipping the multiply in the common ``grad_loss == 1`` case."""
    if gradient is None or torch.equal(grad_loss, torch.ones_like(grad_loss)):
        return gradient
    return gradient * grad_loss.to(gradient.dtype)
