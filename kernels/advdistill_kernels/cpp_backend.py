"""The ``cpp`` backend: a C++/OpenMP extension for CPU tensors, compiled on first use.

The extension (``cpp/fused_loss.cpp``) computes the loss and both gradients in its forward
call; backward only scales them by the incoming gradient. It is built with
``torch.utils.cpp_extension.load`` into a cache directory (``$ADVDISTILL_KERNELS_CACHE``, else
``$TORCH_EXTENSIONS_DIR/advdistill_kernels``, else ``~/.cache/advdistill_kernels``), one
sub-directory per torch version, Python version and CPU (it is compiled with ``-march=native``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from advdistill_kernels._aggregation import ResponseStats
from advdistill_kernels._errors import BackendUnavailableError
from advdistill_kernels._saved_gradients import scale_saved_gradient

SOURCE = Path(__file__).parent / "cpp" / "fused_loss.cpp"
DEFAULT_TOKEN_CHUNK = 512
DEFAULT_VOCAB_CHUNK = 2048


_load_error: BackendUnavailableError | None = None
_loaded = False


def _cpu_fingerprint() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:12]


def build_directory() -> Path:
    """Where the compiled extension is cached (created on demand)."""
    if "ADVDISTILL_KERNELS_CACHE" in os.environ:
        root = Path(os.environ["ADVDISTILL_KERNELS_CACHE"])
    elif "TORCH_EXTENSIONS_DIR" in os.environ:
        root = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "advdistill_kernels"
    else:
        root = Path.home() / ".cache" / "advdistill_kernels"
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info.major}{sys.version_info.minor}"
    return root / f"{tag}-{_cpu_fingerprint()}"


def _compile_and_load() -> None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BackendUnavailableError(
            f"backend 'cpp' needs a C++ compiler to build {SOURCE.name}: '{compiler}' (from $CXX, default c++) "
            "was not found on PATH; install g++ or point CXX at a compiler")
    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(
            name="advdistill_fused_loss",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:
        raise BackendUnavailableError(
            f"backend 'cpp' failed to build {SOURCE} with compiler '{compiler}' in {directory}: {exc}") from exc


def load_extension() -> None:
    """Compile (once per cache directory) and load the extension; raises BackendUnavailableError."""
    global _load_error, _loaded
    if _loaded:
        return
    if _load_error is not None:
        raise _load_error
    try:
        _compile_and_load()
    except BackendUnavailableError as exc:
        _load_error = exc
        raise
    _loaded = True


def is_available() -> bool:
    """True when the extension compiles and loads (the first call may take a minute)."""
    try:
        load_extension()
    except BackendUnavailableError:
        return False
    return True


def _fused_loss(hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
                vocab_chunk, need_hidden_grad, need_weight_grad):
    load_extension()
    return torch.ops.advdistill_kernels.fused_loss(
        hidden, weight, targets, response_index, response_weights, wrong, float(lam), float(p_max),
        int(ignore_index), DEFAULT_TOKEN_CHUNK, int(vocab_chunk), need_hidden_grad, need_weight_grad)


class _CppAdvDistillLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
                vocab_chunk, need_hidden_grad, need_weight_grad):
        loss, grad_hidden, grad_weight, *_ = _fused_loss(
            hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
            vocab_chunk, need_hidden_grad, need_weight_grad)
        ctx.save_for_backward(grad_hidden if need_hidden_grad else None, grad_weight if need_weight_grad else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = (scale_saved_gradient(saved, grad_loss) for saved in ctx.saved_tensors)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None, None


def advdistill_loss_cpp(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        response_index: torch.Tensor, response_weights: torch.Tensor, wrong: torch.Tensor, *,
                        lam: float, p_max: float, ignore_index: int, chunk_size: int | None) -> torch.Tensor:
    """Fused CPU loss; ``chunk_size`` is the number of vocabulary columns per logits tile.

    Gradients are computed in this call (and only those that autograd will ask for).
    """
    grad_enabled = torch.is_grad_enabled()
    need_hidden_grad = grad_enabled and hidden.requires_grad
    need_weight_grad = grad_enabled and weight.requires_grad
    return _CppAdvDistillLoss.apply(hidden, weight, targets, response_index, response_weights, wrong, lam, p_max,
                                    ignore_index, chunk_size or DEFAULT_VOCAB_CHUNK, need_hidden_grad,
                                    need_weight_grad)


def response_stats_cpp(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       response_index: torch.Tensor, num_responses: int, *, ignore_index: int,
                       chunk_size: int | None) -> ResponseStats:
    """Per-response ``(CE_i, p_mean_i, T_i)`` from the extension, without gradient."""
    placeholder_weights = torch.zeros(num_responses, dtype=torch.float64)
    no_wrong = torch.zeros(num_responses, dtype=torch.bool)
    _, _, _, ce, p_mean, counts = _fused_loss(
        hidden.detach(), weight.detach(), targets, response_index, placeholder_weights, no_wrong, 0.0, 0.5,
        ignore_index, chunk_size or DEFAULT_VOCAB_CHUNK, False, False)
    return ResponseStats(ce, p_mean, counts)
