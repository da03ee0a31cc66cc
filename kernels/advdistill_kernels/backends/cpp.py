"""The ``cpp`` backend: a C++/OpenMP extension for CPU tensors, compiled on first use.

The extension (``cpp/fused_loss.cpp``) computes the loss and both gradients in a single pass over
the logits, tile by tile (its header explains why one pass suffices); backward only scales them by
the incoming gradient. It is built with
``torch.utils.cpp_extension.load`` into a cache directory (``$ADVDISTILL_KERNELS_CACHE``, else
``$TORCH_EXTENSIONS_DIR/advdistill_kernels``, else ``~/.cache/advdistill_kernels``), one
sub-directory per torch version, Python version, CPU (it is compiled with ``-march=native``) and
digest of source and compiler flags (two checkouts with different sources never rebuild over each other).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from advdistill_kernels._aggregation import ResponseStats, per_response_lam
from advdistill_kernels._errors import BackendUnavailableError
from advdistill_kernels.backends import chunk_tokens
from advdistill_kernels.backends._precomputed_gradients import loss_with_precomputed_gradients
from advdistill_kernels.backends._tiles import plan_tiles, tiles_tensor

SOURCE = Path(__file__).parent.parent / "cpp" / "fused_loss.cpp"
LOGITS_BUDGET_ELEMENTS = 8 * 1024 * 1024
"""Default tile: this many logits alive at once (32 MiB in float32) ..."""
MIN_TILE_TOKENS = 256
"""... but at least this many tokens: thinner tiles make the weight-gradient GEMM (inner size = the
tile's tokens) rewrite ``grad_weight`` too often, and the GEMMs lose much of their speed."""
GEMM_PROVIDERS = ("onednn", "aten")
GEMM_CHOICES_FILE = "gemm_choices.json"
ATEN_MARGIN = 0.9
"""``at::mm`` replaces oneDNN only where it takes less than this share of oneDNN's time."""
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math") + (
    ("-mprefer-vector-width=256",) if platform.machine() in ("x86_64", "AMD64") else ())
"""``-fno-trapping-math`` lets GCC vectorise the exponential loop (without it, its clamps and underflow
select are branches and the loop takes 3x as long); only floating-point exception flags change, not
results. ``-march=native`` on Zen 1-class CPUs (and on VMs that report one) prefers 128-bit vectors."""


_build_failure: BackendUnavailableError | None = None
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
    source_digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:12]
    return root / f"{tag}-{_cpu_fingerprint()}-src{source_digest}"


def _compile_and_load() -> None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BackendUnavailableError(
            f"backend 'cpp' needs a C++ compiler to build {SOURCE.name}: '{compiler}' (from $CXX, default c++) "
            "was not found on PATH; install g++ or point CXX at a compiler")
    directory = build_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(
            name="advdistill_fused_loss",
            sources=[str(SOURCE)],
            extra_cflags=list(COMPILE_FLAGS),
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
    global _build_failure, _loaded
    if _loaded:
        return
    if _build_failure is not None:
        raise _build_failure
    try:
        _compile_and_load()
    except BackendUnavailableError as exc:
        _build_failure = exc
        raise
    _loaded = True


def load_error() -> str | None:
    """None when the extension compiles and loads (the first call may take a minute), else why not."""
    try:
        load_extension()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


@functools.cache
def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether ATen's oneDNN matmul takes ``dtype`` tiles on this CPU.

    It decides at call time, by CPU features that differ between torch releases (torch 2.13 refuses even
    float32 on CPUs without AVX-512), so one tiny GEMM through the extension asks it instead of guessing.
    False where the extension does not build (:func:`load_error` says why).
    """
    if not torch.backends.mkldnn.is_available() or load_error() is not None:
        return False
    gemm_dtype = torch.float32 if dtype == torch.float16 else dtype
    ones = torch.ones(4, 4, dtype=gemm_dtype)
    out = torch.empty(4, 4, dtype=gemm_dtype)
    try:
        torch.ops.advdistill_kernels.gemm(ones, ones, out, False, True)
    except RuntimeError:
        return False
    return bool((out == 4).all())


def gemm_provider(dtype: torch.dtype, shape: tuple[int, int] | None = None) -> str:
    """The GEMM library behind the tiles for ``dtype`` inputs and a ``shape`` (hidden size, vocabulary).

    ``at::mm`` (MKL/OpenBLAS) where oneDNN does not take the dtype on this CPU (:func:`onednn_runs`; float16
    tiles are upcast to float32), else whichever of the two runs a default tile of its step faster here
    (:func:`fastest_gemm`, measured once per machine, dtype, shape, tile and thread count): neither wins everywhere (on
    AVX-512 AMD CPUs MKL's sgemm runs its AVX2 kernel; on AMX Xeons ``torch.mm`` beat oneDNN in float32 at
    d = 512). Without ``shape`` oneDNN where it runs. ``$ADVDISTILL_CPP_GEMM`` (``onednn`` or ``aten``)
    overrides the choice; asking for oneDNN where it does not run is an error.
    """
    requested = os.environ.get("ADVDISTILL_CPP_GEMM")
    if requested is not None and requested not in GEMM_PROVIDERS:
        raise ValueError(f"ADVDISTILL_CPP_GEMM: expected one of {GEMM_PROVIDERS}, got {requested!r}")
    if requested == "aten" or dtype == torch.float64:
        return "aten"
    if onednn_runs(dtype):
        if requested == "onednn" or shape is None:
            return "onednn"
        return fastest_gemm(dtype, *shape, torch.get_num_threads())
    if requested == "onednn":
        why = load_error() or (f"ATen's oneDNN matmul does not take {dtype} tiles on this CPU "
                               f"({platform.processor() or platform.machine()})")
        raise BackendUnavailableError(f"ADVDISTILL_CPP_GEMM=onednn: {why}; unset it or use 'aten'")
    return "aten"


@functools.cache
def brgemm_runs() -> bool:
    """Whether oneDNN's batch-reduce GEMM micro-kernel runs here: with the oneDNN provider, bfloat16 ``grad_weight``
    products then go straight into its float32 sum (``brgemm_add_transposed_product`` in the extension)."""
    return load_error() is None and bool(torch.ops.advdistill_kernels.brgemm_runs())


def gemm_description(dtype: torch.dtype, shape: tuple[int, int]) -> str:
    """The GEMM provider for ``dtype`` and ``shape`` in words, for benchmark headers: ``onednn`` (``+ brgemm`` where
    bfloat16 ``grad_weight`` takes the micro-kernel) or ``aten (MKL)``."""
    provider = gemm_provider(dtype, shape)
    if provider == "aten":
        return f"aten ({'MKL' if torch.backends.mkl.is_available() else 'BLAS'})"
    return "onednn + brgemm" if dtype == torch.bfloat16 and brgemm_runs() else "onednn"


@functools.cache
def fastest_gemm(dtype: torch.dtype, hidden_size: int, vocab_size: int, threads: int) -> str:
    """The provider that runs a default tile of the extension's step faster here (:func:`_time_providers`).

    Timed once per machine, not per process: the choice is kept in the build directory (one per CPU, torch and
    source) under a lock, and every later process reads it, so that a run's numbers (the providers round
    differently) do not depend on how busy the machine was when another process timed them. ``at::mm`` must
    beat oneDNN by ``ATEN_MARGIN`` to be chosen, so that a near tie does not turn on timing noise.
    """
    path = build_directory() / GEMM_CHOICES_FILE
    tile = default_tile_tokens(vocab_size)
    key = f"{str(dtype).removeprefix('torch.')} d={hidden_size} V={vocab_size} tile={tile} threads={threads}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        choices = _read_choices(path)
        if key not in choices:
            seconds = _time_providers(dtype, hidden_size, vocab_size, tile)
            choices[key] = "aten" if seconds["aten"] < ATEN_MARGIN * seconds["onednn"] else "onednn"
            partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            partial.write_text(json.dumps(choices, indent=1, sort_keys=True) + "\n")
            partial.replace(path)
    return choices[key]


def _read_choices(path: Path) -> dict[str, str]:
    """The kept choices; a missing or damaged file is none (they are timed again)."""
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(choices, dict):
        return {}
    return {key: value for key, value in choices.items() if value in GEMM_PROVIDERS}


def _time_providers(dtype: torch.dtype, hidden_size: int, vocab_size: int, tile: int) -> dict[str, float]:
    """Per provider, the seconds one tile of ``tile`` tokens adds to the extension's step: the best of five steps of
    three tiles less the best of five of one tile, halved, so that the step's fixed work (its float32
    ``grad_weight`` sum and outputs, freshly allocated, at medium size about as long as a tile) cancels instead of
    diluting the providers' difference. The providers alternate run by run after a warm-up of each (a provider
    timed in one block was seen to lose by its first, slower runs)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3 * tile, hidden_size, generator=generator).to(dtype)
    weight = torch.randn(vocab_size, hidden_size, generator=generator).to(dtype)
    inputs = {"one": hidden[:tile], "three": hidden}
    for provider in GEMM_PROVIDERS:
        step_seconds(inputs["one"], weight, tile, provider == "onednn")
    runs = [{(p, n): step_seconds(x, weight, tile, p == "onednn") for p in GEMM_PROVIDERS for n, x in inputs.items()}
            for _ in range(5)]
    best = {key: min(run[key] for run in runs) for key in runs[0]}
    return {p: (best[p, "three"] - best[p, "one"]) / 2 for p in GEMM_PROVIDERS}


def step_seconds(hidden: torch.Tensor, weight: torch.Tensor, tile_tokens: int, use_onednn: bool) -> float:
    """Wall seconds of the extension's loss and both gradients for ``hidden`` (one response) in tiles of
    ``tile_tokens``: the kernel's own step, so that the providers are timed on the GEMMs it runs (the bfloat16
    ``grad_weight`` as ``h^T dlogits`` slices added into its float32 sum, the float16 weight upcast slice by slice)."""
    tokens = hidden.shape[0]
    targets = torch.arange(tokens) % weight.shape[0]
    response_index = torch.zeros(tokens, dtype=torch.long)
    no_wrong = torch.zeros(1, dtype=torch.bool)
    start = time.perf_counter()
    _fused_loss(hidden, weight, targets, response_index, torch.ones(1, dtype=torch.float64), no_wrong, 0.0, 0.5, -100,
                tile_tokens, True, True, use_onednn=use_onednn)
    return time.perf_counter() - start


def default_tile_tokens(vocab_size: int) -> int:
    """Tokens per logits tile when ``chunk_size`` is None (more if a contrastive response is longer)."""
    return chunk_tokens(None, vocab_size, LOGITS_BUDGET_ELEMENTS, MIN_TILE_TOKENS)


def _fused_loss(hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
                chunk_size, need_hidden_grad, need_weight_grad, contrastive_mask=None, *,
                use_onednn: bool | None = None):
    """The extension's step; its tiles' GEMMs on oneDNN or ``at::mm`` as ``use_onednn`` says, else as
    :func:`gemm_provider` chooses."""
    load_extension()
    if use_onednn is None:
        use_onednn = gemm_provider(hidden.dtype, (weight.shape[1], weight.shape[0])) == "onednn"
    plan = plan_tiles(targets, response_index, wrong, lam, ignore_index, chunk_size,
                      default_tile_tokens(weight.shape[0]), need_hidden_grad or need_weight_grad, contrastive_mask)
    lam = per_response_lam(lam, response_weights.shape[0], torch.empty(0, dtype=torch.float64))
    return torch.ops.advdistill_kernels.fused_loss(
        hidden, weight, targets, response_index, response_weights, wrong, lam, float(p_max), contrastive_mask,
        plan.order,
        tiles_tensor(plan.tiles), need_hidden_grad, need_weight_grad, use_onednn)


def fused_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, response_index: torch.Tensor,
               response_weights: torch.Tensor, wrong: torch.Tensor, *, lam: float | torch.Tensor, p_max: float,
               ignore_index: int, chunk_size: int | None,
               contrastive_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Single-pass CPU loss; ``chunk_size`` tokens per logits tile (tiles hold whole responses when they fit).

    Gradients are computed in this call (and only those that autograd will ask for).
    """
    def compute(need_hidden_grad: bool, need_weight_grad: bool):
        loss, grad_hidden, grad_weight, *_ = _fused_loss(
            hidden, weight, targets, response_index, response_weights, wrong, lam, p_max, ignore_index,
            chunk_size, need_hidden_grad, need_weight_grad, contrastive_mask)
        return loss, grad_hidden, grad_weight

    return loss_with_precomputed_gradients(compute, hidden, weight)


def response_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, response_index: torch.Tensor,
                   num_responses: int, *, ignore_index: int, chunk_size: int | None,
                   contrastive_mask: torch.Tensor | None = None) -> ResponseStats:
    """Per-response ``(CE_i, p_mean_i, T_i, S_i)`` from the extension (logits only, no gradient)."""
    placeholder_weights = torch.zeros(num_responses, dtype=torch.float64)
    no_wrong = torch.zeros(num_responses, dtype=torch.bool)
    _, _, _, ce, p_mean, counts, contrastive_counts = _fused_loss(
        hidden.detach(), weight.detach(), targets, response_index, placeholder_weights, no_wrong, 0.0, 0.5,
        ignore_index, chunk_size, False, False, contrastive_mask)
    return ResponseStats(ce, p_mean, counts, None if contrastive_mask is None else contrastive_counts)
