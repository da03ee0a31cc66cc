"""The autograd pattern of the backends that compute their gradients in the forward call.

As in Liger-Kernel, ``cpp`` and ``triton`` produce the loss and the gradients wrt ``hidden`` and
``weight`` in one call (only those autograd will ask for); backward rescales them by the incoming
gradient and skips the multiply when it is exactly 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossAndGradients = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def scale_saved_gradient(gradient: torch.Tensor | None, grad_loss: torch.Tensor) -> torch.Tensor | None:
    """``gradient * grad_loss``, skipping the multiply in the common ``grad_loss == 1`` case."""
    if gradient is None or torch.equal(grad_loss, torch.ones_like(grad_loss)):
        return gradient
    return gradient * grad_loss.to(gradient.dtype)


class _PrecomputedGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, compute, hidden, weight, need_hidden_grad, need_weight_grad):
        loss, grad_hidden, grad_weight = compute(need_hidden_grad, need_weight_grad)
        ctx.save_for_backward(grad_hidden if need_hidden_grad else None, grad_weight if need_weight_grad else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = (scale_saved_gradient(saved, grad_loss) for saved in ctx.saved_tensors)
        return None, grad_hidden, grad_weight, None, None


def loss_with_precomputed_gradients(compute: Callable[[bool, bool], LossAndGradients], hidden: torch.Tensor,
                                    weight: torch.Tensor) -> torch.Tensor:
    """The loss of ``compute(need_hidden_grad, need_weight_grad) -> (loss, grad_hidden, grad_weight)``,
    differentiable wrt ``hidden`` and ``weight`` through the gradients ``compute`` returned."""
    grad_enabled = torch.is_grad_enabled()
    return _PrecomputedGradients.apply(compute, hidden, weight, grad_enabled and hidden.requires_grad,
                                       grad_enabled and weight.requires_grad)
