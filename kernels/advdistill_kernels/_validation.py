"""Input checks run once at the public entry point, so the backends can assume well-formed input.

Every message states what was expected and what was passed.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def _require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def _require_ndim(name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    if tensor.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor {layout}, got shape {_shape(tensor)}")


def _require_dtype(name: str, tensor: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if tensor.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name}: expected dtype in ({names}), got {str(tensor.dtype).removeprefix('torch.')}")


def validate_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    response_index: torch.Tensor, response_weights: torch.Tensor, wrong: torch.Tensor,
                    lam: float | torch.Tensor, p_max: float, ignore_index: int,
                    contrastive_mask: torch.Tensor | None = None) -> None:
    """Raise ``TypeError``/``ValueError`` unless the inputs match the documented contract.

    ``lam`` is a number or a float tensor ``[R]`` (one contrastive weight per response); ``contrastive_mask``
    None or a bool tensor ``[N]``.

    The range checks (target ids, response ids, finite weights) cost one host synchronisation.
    """
    tensors = {
        "hidden": hidden, "weight": weight, "targets": targets, "response_index": response_index,
        "response_weights": response_weights, "wrong": wrong,
    }
    for name, value in tensors.items():
        _require_tensor(name, value)

    _require_ndim("hidden", hidden, 2, "[N, d]")
    _require_ndim("weight", weight, 2, "[V, d]")
    _require_ndim("targets", targets, 1, "[N]")
    _require_ndim("response_index", response_index, 1, "[N]")
    _require_ndim("response_weights", response_weights, 1, "[R]")
    _require_ndim("wrong", wrong, 1, "[R]")

    _require_dtype("hidden", hidden, FLOAT_DTYPES)
    _require_dtype("weight", weight, FLOAT_DTYPES)
    _require_dtype("targets", targets, (torch.int64,))
    _require_dtype("response_index", response_index, (torch.int64,))
    _require_dtype("response_weights", response_weights, FLOAT_DTYPES)
    _require_dtype("wrong", wrong, (torch.bool,))
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden and weight: expected the same dtype, got {hidden.dtype} and {weight.dtype}")

    num_tokens, hidden_dim = hidden.shape
    vocab_size = weight.shape[0]
    if weight.shape[1] != hidden_dim:
        raise ValueError(f"weight: expected shape [V, {hidden_dim}] (d from hidden {_shape(hidden)}), "
                         f"got {_shape(weight)}")
    for name in ("targets", "response_index"):
        if tensors[name].shape[0] != num_tokens:
            raise ValueError(f"{name}: expected shape [{num_tokens}] (N from hidden), got {_shape(tensors[name])}")
    num_responses = response_weights.shape[0]
    if wrong.shape[0] != num_responses:
        raise ValueError(f"wrong: expected shape [{num_responses}] (R from response_weights), got {_shape(wrong)}")
    if vocab_size == 0:
        raise ValueError("weight: expected at least one vocabulary row, got shape " f"{_shape(weight)}")

    if isinstance(lam, torch.Tensor):
        _require_ndim("lam", lam, 1, "[R] (one per response) or a number")
        _require_dtype("lam", lam, FLOAT_DTYPES)
        if lam.shape[0] != num_responses:
            raise ValueError(f"lam: expected shape [{num_responses}] (R from response_weights) or a number, "
                             f"got {_shape(lam)}")
        tensors["lam"] = lam
    if contrastive_mask is not None:
        _require_tensor("contrastive_mask", contrastive_mask)
        _require_ndim("contrastive_mask", contrastive_mask, 1, "[N]")
        _require_dtype("contrastive_mask", contrastive_mask, (torch.bool,))
        if contrastive_mask.shape[0] != num_tokens:
            raise ValueError(f"contrastive_mask: expected shape [{num_tokens}] (N from hidden), "
                             f"got {_shape(contrastive_mask)}")
        tensors["contrastive_mask"] = contrastive_mask

    devices = {name: value.device for name, value in tensors.items()}
    if len(set(devices.values())) != 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"expected all tensors on one device, got {listing}")

    if not isinstance(lam, torch.Tensor) and not math.isfinite(lam):
        raise ValueError(f"lam: expected a finite number, got {lam}")
    if isinstance(lam, torch.Tensor) and not bool(torch.isfinite(lam).all()):
        raise ValueError(f"lam: expected finite values, got {lam.tolist()}")
    if not 0.0 < p_max < 1.0:
        raise ValueError(f"p_max: expected a value in (0, 1), got {p_max}")

    _validate_ranges(targets, response_index, response_weights, vocab_size, num_responses, ignore_index)


def _validate_ranges(targets: torch.Tensor, response_index: torch.Tensor, response_weights: torch.Tensor,
                     vocab_size: int, num_responses: int, ignore_index: int) -> None:
    valid = targets != ignore_index
    bad_target = valid & ((targets < 0) | (targets >= vocab_size))
    bad_response = valid & ((response_index < 0) | (response_index >= num_responses))
    bad_weight = ~torch.isfinite(response_weights)
    flags = torch.stack([bad_target.any(), bad_response.any(), bad_weight.any()]).tolist()
    if flags[0]:
        position = int(bad_target.nonzero()[0, 0])
        raise ValueError(f"targets[{position}]: expected a token id in [0, {vocab_size}) or ignore_index "
                         f"{ignore_index}, got {int(targets[position])}")
    if flags[1]:
        position = int(bad_response.nonzero()[0, 0])
        raise ValueError(f"response_index[{position}]: expected a response id in [0, {num_responses}) for an "
                         f"unmasked token, got {int(response_index[position])}")
    if flags[2]:
        raise ValueError(f"response_weights: expected finite values, got {response_weights.tolist()}")
