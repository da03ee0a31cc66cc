"""The device check of the GPU stages (``sample``, ``train``, ``evaluate``), run before any model is loaded.

Without a visible CUDA device the stages run on the CPU: the HF sampler picks ``cpu``, the trainer sets
``use_cpu`` and ``training.precision: auto`` resolves to fp32, or to bf16-mixed for a wide student on a CPU with
bfloat16 dot products (:func:`cpu_training_precision`). On a CPU run that is what is wanted, and it is logged once. Under ``resources.gpu_rules: true`` the rules pass ``--device cuda``, and a job that asked for a GPU
but sees none (no GPU granted, a container started without ``--nv``, a driver older than torch's CUDA) stops
here at once with a :class:`~advdistill.errors.DeviceError` naming what it saw, instead of spending its whole
time limit on the CPU.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import shutil
import subprocess
import warnings
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from advdistill.errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")
"""The kernel module's version line, where the driver is loaded: "NVRM version: NVIDIA UNIX x86_64 Kernel
Module  550.54.15  Tue Mar 5 ..." (read when ``nvidia-smi`` is not on the PATH, as in some containers)."""


def driver_version() -> str:
    """The NVIDIA driver's version from ``nvidia-smi`` or :data:`NVIDIA_PROC_VERSION`, else ``unknown``."""
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            done = None
        versions = sorted(set(done.stdout.split())) if done is not None and done.returncode == 0 else []
        if versions:
            return ", ".join(versions)
    try:
        words = NVIDIA_PROC_VERSION.read_text().split()
        return next(w for w in words if w[:1].isdigit() and "." in w)
    except (OSError, StopIteration):
        return "unknown"


def cuda_report() -> tuple[bool, str]:
    """Whether torch sees a CUDA device, and what it saw: device count, ``CUDA_VISIBLE_DEVICES``, driver and
    torch CUDA versions, and torch's own warning (e.g. a driver too old for its CUDA)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
    seen = (f"{count} CUDA device(s) visible, CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)}, "
            f"NVIDIA driver {driver_version()}, torch {torch.__version__} built for {built}")
    reasons = [" ".join(str(w.message).split()) for w in caught if "cuda" in str(w.message).lower()]
    if reasons:
        seen += f"; torch says: {reasons[0]}"
    return available and count > 0, seen


def require_cuda(stage: str) -> None:
    """Stop with a :class:`DeviceError` unless a CUDA device is visible to stage ``stage``."""
    available, seen = cuda_report()
    if not available:
        raise DeviceError(f"resources.gpu_rules is true (--device cuda) but the {stage} stage sees no CUDA device "
                          f"({seen}); it will not fall back to the CPU: check the job's GPU request, apptainer's "
                          f"--nv and the driver, or set resources.gpu_rules: false to run on the CPU")


@cache
def _log_cpu_fallback(stage: str) -> None:
    log.info("no CUDA device: running on CPU (the %s stage)", stage)


def machine_gpus(environ: Mapping[str, str] = os.environ) -> int:
    """The GPUs of this machine that jobs can use, found without importing torch (planning asks on every
    ``snakemake`` call): those ``CUDA_VISIBLE_DEVICES`` names when it is set (up to its first empty or negative entry,
    where CUDA stops reading it; no more than ``nvidia-smi`` lists where it runs), else those ``nvidia-smi -L``
    lists; 0 without either."""
    listed = _listed_gpus()
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return listed or 0
    entries = [entry.strip() for entry in visible.split(",")]
    named = len(list(itertools.takewhile(lambda entry: entry and not entry.startswith("-"), entries)))
    return named if listed is None else min(named, listed)


def _listed_gpus() -> int | None:
    """How many GPUs ``nvidia-smi -L`` lists; None where it is missing or fails."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines())


CPUINFO = Path("/proc/cpuinfo")
BF16_DOT_PRODUCT_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags of bfloat16 dot-product instructions (AVX-512-BF16, AMX): where oneDNN runs bf16 GEMMs faster than
fp32 ones."""
CPU_BF16_MIN_HIDDEN_SIZE = 896
"""The smallest student width trained in bf16-mixed by ``training.precision: auto`` on such a CPU: a Qwen2.5-0.5B-shaped
student (896 wide) stepped 1.33x faster in bf16-mixed on an AVX-512-BF16 EPYC and 2.1x on an AMX Xeon, with losses
agreeing; the default's 128-wide student gained nothing on the EPYC and was 1.23x slower on the Xeon (README,
``precision``). Widths in between were not measured, and keep fp32."""


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first processor's flags in ``/proc/cpuinfo`` (none where it cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    return next((frozenset(line.split(":", 1)[1].split()) for line in text.splitlines()
                 if line.startswith("flags")), frozenset())


def cpu_training_precision(hidden_size: int, flags: frozenset[str] | None = None) -> str:
    """What ``training.precision: auto`` means for a CPU run: ``bf16-mixed`` for a student at least
    :data:`CPU_BF16_MIN_HIDDEN_SIZE` wide on a CPU with bfloat16 dot products (``flags``, default this machine's),
    where it was measured faster with the same losses, else ``fp32``."""
    flags = cpu_flags() if flags is None else flags
    if flags & BF16_DOT_PRODUCT_FLAGS and hidden_size >= CPU_BF16_MIN_HIDDEN_SIZE:
        return "bf16-mixed"
    return "fp32"


def check_device(stage: str, device: str = "auto") -> None:
    """The check at the start of a GPU stage, by its ``--device``: ``cuda`` (what the rules pass under
    ``resources.gpu_rules: true``) requires a device (:func:`require_cuda`); ``auto`` uses one when visible
    and logs the CPU fallback once when there is none."""
    if device == "cuda":
        require_cuda(stage)
        return
    import torch

    if not torch.cuda.is_available():
        _log_cpu_fallback(stage)


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_backends(stage: str, settings) -> None:
    """The backends a stage's settings name can run here, checked before any model is loaded: vLLM must import for
    ``backend: vllm``, and a loss backend named explicitly (``cpp``, ``triton``) must run on this stage's device
    (``auto`` falls back to ``torch`` and says so in the log)."""
    section = {"sample": "sampling", "evaluate": "evaluation"}.get(stage)
    if section and settings.backend == "vllm" and not importable("vllm"):
        raise ConfigError(f"config {section}.backend: vllm is not installed in this environment (the GPU image has "
                          f"it; on a CPU see docs/vllm.md); install it or set {section}.backend: hf")
    if stage == "train" and settings.loss.backend != "auto":
        import torch
        from advdistill_kernels import BackendUnavailableError, resolve_backend

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            resolve_backend(settings.loss.backend, device)
        except BackendUnavailableError as err:
            raise ConfigError(f"config training.loss.backend: {err} (on {device}); set it to auto to use the "
                              "fastest backend that runs here") from err
