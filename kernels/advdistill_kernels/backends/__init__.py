"""The fused backends, one module each (``torch``, ``cpp``, ``triton``), behind one interface.

Every backend module defines::

    fused_loss(hidden, weight, targets, response_index, response_weights, wrong, *,
               lam, p_max, ignore_index, chunk_size, contrastive_mask=None) -> loss
    response_stats(hidden, weight, targets, response_index, num_responses, *,
                   ignore_index, chunk_size, contrastive_mask=None) -> ResponseStats

``lam`` is a number or one per response ``[R]``; ``contrastive_mask`` (``[N]`` bool, None: every token) the
tokens ``p_mean_i`` is taken over.

``chunk_size`` means the same everywhere: the number of tokens whose full-vocabulary logits (or
``dlogits``) are alive at once; ``None`` picks the backend's default from a logits budget.
Modules are imported on first use, so ``triton`` is only imported where it is asked for.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("torch", "cpp", "triton")


def chunk_tokens(chunk_size: int | None, vocab_size: int, logits_budget: int, minimum: int = 1) -> int:
    """``chunk_size``, or by default as many tokens as ``logits_budget`` logits allow (at least ``minimum``)."""
    if chunk_size is not None:
        return chunk_size
    return max(minimum, logits_budget // vocab_size)


@functools.cache
def _triton_import_error() -> str | None:
    """None when triton imports, else why not."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # triton can fail with more than ImportError on unsupported platforms
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_importable() -> bool:
    return _triton_import_error() is None


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can run on tensors of ``device`` here, else why not."""
    if name == "cpp":
        if device.type != "cpu":
            return f"it runs on CPU tensors only, got {device}"
        from advdistill_kernels.backends import cpp

        return cpp.load_error()
    if name == "triton":
        if not triton_importable():
            return f"triton cannot be imported ({_triton_import_error()})"
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return f"it needs CUDA tensors (or TRITON_INTERPRET=1 for the interpreter), got {device}"
    return None


def load(name: str) -> ModuleType:
    """The module of backend ``name`` (one of :data:`BACKENDS`)."""
    return importlib.import_module(f"advdistill_kernels.backends.{name}")
