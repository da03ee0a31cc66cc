"""Benchmark the AdvDistill loss providers: forward, backward and full time, peak memory, a CSV.

Providers (``setup_<provider>`` returns a function that runs the forward pass and returns the loss):

* ``limit``           not a loss: the 6 N d V FLOPs of logits, grad_hidden and grad_weight as large
  GEMMs (1,024 tokens at a time) on the fastest GEMM here (the cpp backend's provider on CPU,
  cuBLAS on CUDA); every other provider's ``full/limit`` is its full step over this one's (over
  ``limit_torch_mm``'s where ``limit`` is not run)
* ``limit_torch_mm``  the same GEMMs through ``torch.mm``
* ``naive``           full ``[N, V]`` logits, then :func:`advdistill_loss_from_logits` (autograd)
* ``naive_compiled``  ``torch.compile`` of the same function
* ``torch``, ``cpp``, ``triton``  ``advdistill_loss(backend=...)``
* ``cpp_plain_ce``    ``cpp`` on the plain cross-entropy problem, to compare with the next two
* ``cce``, ``liger``  cut-cross-entropy's ``linear_cross_entropy`` (its ``torch_compile`` impl on
  CPU, the Triton kernels on CUDA) and Liger-Kernel's fused linear CE (CUDA only)
* ``torch_lce``       PyTorch's own ``F.linear_cross_entropy`` with ``LinearCrossEntropyOptions()``
  (its chunked path; skipped on a torch that lacks it)

The plain-CE providers compute token-mean cross-entropy: AdvDistill with ``lam = 0``, uniform
weights and equal-length responses (the benchmark's responses all have the same length).

A provider that fails (at set-up, in a run, out of memory) is reported as failed with its error,
and the others go on; the exit status is 1 when any failed.

Accuracy: after the timed rounds, one more step of each provider is compared with the float64
value of the same function on the provider's own inputs upcast to float64 (the ``torch``
backend's AdvDistill loss, which is plain token-mean CE on the plain-CE inputs): the loss's
absolute error, and the relative Frobenius error of ``grad_hidden`` and ``grad_weight``
(``--no-accuracy`` skips it).

Time: all providers live in one process and are run in alternating rounds (the order rotates each
round), after one discarded warm-up run each (which also compiles), so a change in machine load
hits every provider alike. Each run times the forward call and ``loss.backward()`` separately;
``full`` is their sum. Reported: median over ``--rounds`` and the spread (min-max). Fused
backends compute their gradients in the forward call, so their ``backward`` is near zero.

Peak memory: one full step after a warm-up, gradients cleared beforehand (the inputs are the
baseline, the new ``.grad`` tensors count). CUDA, in the accuracy step: ``max_memory_allocated``
minus ``memory_allocated`` before (the allocator counts tensors exactly, whatever ran before).
CPU, each provider in a fresh subprocess: the kernel's peak-RSS counter is
reset (``5`` to ``/proc/self/clear_refs``) after ``malloc_trim(0)`` has handed the memory freed by
the warm-up back to the system, and ``VmHWM`` after the step minus ``VmRSS`` before is reported.
The worker runs with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``), so that every larger
buffer is a mapping of its own, unmapped when freed: by default the threshold rises to the size of the largest
freed buffer (up to 32 MiB), buffers below it then come from the heap, and whether a freed one was reused varied
from process to process (the same float16 ``cpp`` step measured 70.8 or 86.5 MB; fixed, four runs agreed within
0.4 MB). The figure counts everything the step touches (tensors, GEMM workspaces) at page granularity.

Competing load: ``--load K`` starts ``K`` processes that run single-threaded float32 GEMMs for the
whole run, as another job on a shared node would.

FLOPs: ``6 N d V`` for every provider (logits, and the two gradient GEMMs); TFLOP/s uses it.
Each row is appended to ``--csv`` (default ``kernels/benchmarks/data/fused_loss.csv``, kept under
version control) with the machine it came from: CPU model, cores, torch version, GEMM provider,
the competing load started and the 1-minute load average (other users of the machine).

Usage::

    python kernels/benchmarks/bench_fused_loss.py --sizes small medium --dtypes float32 bfloat16
    python kernels/benchmarks/bench_fused_loss.py --sizes large --rounds 3 --load 1
    python kernels/benchmarks/bench_fused_loss.py --sizes paper --device cuda      # needs a GPU
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from advdistill_kernels import LossInputs, advdistill_loss, advdistill_loss_from_logits
from advdistill_kernels.backends import cpp as cpp_backend

PROVIDERS = ("limit", "limit_torch_mm", "naive", "naive_compiled", "torch", "cpp", "cpp_plain_ce", "cce", "liger",
             "triton", "torch_lce")
DEFAULT_PROVIDERS = ("limit", "limit_torch_mm", "naive", "naive_compiled", "cpp", "cpp_plain_ce", "cce", "triton",
                     "liger", "torch_lce")
PLAIN_CE = {"cpp_plain_ce", "cce", "liger", "torch_lce"}
MMAP_THRESHOLD_BYTES = 1 << 20
"""glibc's mmap threshold in the memory worker (module docstring)."""
CUDA_ONLY = {"triton", "liger"}
CPU_ONLY = {"cpp", "cpp_plain_ce"}
GEMMS_ONLY = {"limit", "limit_torch_mm"}
"""Not losses: no memory or accuracy figure."""
MODES = ("forward", "backward", "full")
DEFAULT_CSV = Path(__file__).parent / "data" / "fused_loss.csv"


@dataclass(frozen=True)
class Size:
    responses: int
    tokens_per_response: int
    hidden_dim: int
    vocab_size: int

    @property
    def num_tokens(self) -> int:
        return self.responses * self.tokens_per_response

    @property
    def flops(self) -> int:
        return 6 * self.num_tokens * self.hidden_dim * self.vocab_size


SIZES = {
    "tiny": Size(responses=4, tokens_per_response=64, hidden_dim=64, vocab_size=4096),
    "small": Size(responses=8, tokens_per_response=256, hidden_dim=256, vocab_size=32000),
    "medium": Size(responses=8, tokens_per_response=512, hidden_dim=512, vocab_size=65536),
    "large": Size(responses=8, tokens_per_response=1024, hidden_dim=896, vocab_size=151936),
    "paper": Size(responses=8, tokens_per_response=2048, hidden_dim=1536, vocab_size=151936),
}


def make_inputs(size: Size, dtype: torch.dtype, device: str, plain_ce: bool) -> LossInputs:
    """Seeded inputs; ``plain_ce`` gives uniform weights and ``lam = 0`` (plain token-mean CE)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(size.num_tokens, size.hidden_dim, generator=generator)
    weight = torch.randn(size.vocab_size, size.hidden_dim, generator=generator) / size.hidden_dim ** 0.5
    targets = torch.randint(0, size.vocab_size, (size.num_tokens,), generator=generator)
    response_index = torch.arange(size.num_tokens) // size.tokens_per_response
    if plain_ce:
        response_weights = torch.full((size.responses,), 1.0 / size.responses)
        wrong = torch.zeros(size.responses, dtype=torch.bool)
    else:
        response_weights = torch.softmax(torch.randn(size.responses, generator=generator), dim=0)
        wrong = torch.arange(size.responses) % 2 == 1
    inputs = LossInputs(hidden=hidden, weight=weight, targets=targets, response_index=response_index,
                        response_weights=response_weights, wrong=wrong, lam=0.0 if plain_ce else 0.5)
    inputs = inputs.to(device, dtype)
    inputs.hidden.requires_grad_()
    inputs.weight.requires_grad_()
    return inputs


Forward = Callable[[], torch.Tensor]


def _naive_loss(hidden, weight, targets, response_index, response_weights, wrong, lam, p_max):
    return advdistill_loss_from_logits(hidden @ weight.T, targets, response_index, response_weights, wrong,
                                       lam=lam, p_max=p_max)


def setup_naive(x: LossInputs) -> Forward:
    return lambda: _naive_loss(x.hidden, x.weight, x.targets, x.response_index, x.response_weights, x.wrong,
                               x.lam, x.p_max)


def setup_naive_compiled(x: LossInputs) -> Forward:
    compiled = torch.compile(_naive_loss)
    return lambda: compiled(x.hidden, x.weight, x.targets, x.response_index, x.response_weights, x.wrong, x.lam,
                            x.p_max)


FUSED_BACKENDS = {"torch": "torch", "cpp": "cpp", "cpp_plain_ce": "cpp", "triton": "triton"}
"""Providers that are a backend of ``advdistill_loss``; ``--chunk-size`` applies to them."""


def setup_fused(x: LossInputs, backend: str, chunk_size: int | None) -> Forward:
    return lambda: advdistill_loss(x.hidden, x.weight, x.targets, x.response_index, x.response_weights, x.wrong,
                                   lam=x.lam, p_max=x.p_max, backend=backend, chunk_size=chunk_size)


LIMIT_TILE_TOKENS = 1024


def _limit(x: LossInputs, use_onednn: bool) -> Forward:
    """The three GEMMs of the loss (6 N d V FLOPs) in large tiles, nothing else; returns a dummy loss."""
    hidden, weight = x.hidden.detach(), x.weight.detach()
    if hidden.dtype == torch.float16 and not hidden.is_cuda:
        hidden, weight = hidden.float(), weight.float()
    tile = min(LIMIT_TILE_TOKENS, hidden.shape[0])
    logits = torch.empty(tile, weight.shape[0], dtype=hidden.dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros_like(weight)
    if use_onednn:
        cpp_backend.load_extension()
        gemm = torch.ops.advdistill_kernels.gemm

    def run() -> torch.Tensor:
        for start in range(0, hidden.shape[0], tile):
            rows = hidden[start:start + tile]
            tile_logits = logits[:rows.shape[0]]
            if use_onednn:
                gemm(rows, weight.T, tile_logits, False, True)
                gemm(tile_logits, weight, grad_hidden[start:start + tile], False, True)
                gemm(tile_logits.T, rows, grad_weight, True, True)
            else:
                torch.mm(rows, weight.T, out=tile_logits)
                torch.mm(tile_logits, weight, out=grad_hidden[start:start + tile])
                grad_weight.addmm_(tile_logits.T, rows)
        return grad_hidden.new_zeros(())

    return run


def _cce(x: LossInputs) -> Forward:
    from cut_cross_entropy import linear_cross_entropy

    impl = "cce" if x.hidden.is_cuda else "torch_compile"
    return lambda: linear_cross_entropy(x.hidden, x.weight, x.targets, impl=impl)


def _liger(x: LossInputs) -> Forward:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss_module = LigerFusedLinearCrossEntropyLoss()
    return lambda: loss_module(x.weight, x.hidden, x.targets)


def _torch_lce(x: LossInputs) -> Forward:
    options = torch.nn.LinearCrossEntropyOptions()
    return lambda: torch.nn.functional.linear_cross_entropy(x.hidden, x.weight, x.targets, options=options)


def _fastest_gemm_is_onednn(x: LossInputs) -> bool:
    return not x.hidden.is_cuda and cpp_backend.gemm_provider(x.hidden.dtype, tuple(x.weight.shape[::-1])) == "onednn"


SETUPS: dict[str, Callable[[LossInputs], Forward]] = {
    "limit": lambda x: _limit(x, use_onednn=_fastest_gemm_is_onednn(x)),
    "limit_torch_mm": lambda x: _limit(x, use_onednn=False),
    "naive": setup_naive,
    "naive_compiled": setup_naive_compiled,
    "cce": _cce,
    "liger": _liger,
    "torch_lce": _torch_lce,
}


def make_forward(provider: str, x: LossInputs, chunk_size: int | None) -> Forward:
    if provider in FUSED_BACKENDS:
        return setup_fused(x, FUSED_BACKENDS[provider], chunk_size)
    return SETUPS[provider](x)


def skip_reason(provider: str, device: str) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return "needs CUDA"
    if provider in CUDA_ONLY and device != "cuda":
        return "CUDA only"
    if provider in CPU_ONLY and device != "cpu":
        return "CPU only"
    module = {"triton": "triton", "liger": "liger_kernel", "cce": "cut_cross_entropy"}.get(provider)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{module} not installed (pip install {module.replace('_', '-')})"
    if provider == "torch_lce" and not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        return f"torch {torch.__version__} has no F.linear_cross_entropy with LinearCrossEntropyOptions"
    needs_extension = provider in CPU_ONLY or (provider == "limit" and device == "cpu")
    if needs_extension and cpp_backend.load_error() is not None:
        return f"cpp extension unavailable: {cpp_backend.load_error()}"
    return None


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _clear_grads(x: LossInputs) -> None:
    x.hidden.grad = None
    x.weight.grad = None


def timed_run(forward: Forward, x: LossInputs, device: str) -> tuple[float, float]:
    """(forward ms, backward ms) of one step."""
    _clear_grads(x)
    _synchronize(device)
    start = time.perf_counter()
    loss = forward()
    _synchronize(device)
    middle = time.perf_counter()
    if loss.requires_grad:
        loss.backward()
    _synchronize(device)
    return (middle - start) * 1e3, (time.perf_counter() - middle) * 1e3


def _failure(provider: str, stage: str, error: BaseException, x: LossInputs) -> str:
    """The one-line reason a provider is dropped; frees what a failed CUDA step left behind."""
    _clear_grads(x)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    message = f"{stage}: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    print(f"  {provider} failed at {message}", file=sys.stderr)
    return message


@dataclass
class Measurements:
    """What one size and dtype gave: times per provider and mode, the providers that failed and why, and the
    accuracy step's figures (errors against float64, CUDA peak memory)."""

    times: dict[str, dict[str, list[float]]]
    failed: dict[str, str]
    step: dict[str, dict[str, float]]


def time_providers(providers: list[str], size: Size, dtype: torch.dtype, device: str, rounds: int,
                   chunk_size: int | None, accuracy: bool) -> Measurements:
    """Per provider and mode, the times (ms) of ``rounds`` alternating rounds after a warm-up each; then the
    accuracy (and, on CUDA, memory) step. A provider that raises is dropped with its reason."""
    inputs = {plain: make_inputs(size, dtype, device, plain) for plain in (False, True)}
    forwards, failed = {}, {}
    for provider in providers:
        x = inputs[provider in PLAIN_CE]
        try:
            forwards[provider] = make_forward(provider, x, chunk_size)
            timed_run(forwards[provider], x, device)
        except Exception as error:  # noqa: BLE001 - one provider's failure must not cost the table
            failed[provider] = _failure(provider, "warm-up", error, x)
            forwards.pop(provider, None)
    running = [p for p in providers if p in forwards]
    times = {p: {mode: [] for mode in MODES} for p in running}
    for round_index in range(rounds):
        shift = round_index % max(len(running), 1)
        for provider in running[shift:] + running[:shift]:
            if provider in failed:
                continue
            x = inputs[provider in PLAIN_CE]
            try:
                forward_ms, backward_ms = timed_run(forwards[provider], x, device)
            except Exception as error:  # noqa: BLE001
                failed[provider] = _failure(provider, f"round {round_index + 1}", error, x)
                continue
            times[provider]["forward"].append(forward_ms)
            times[provider]["backward"].append(backward_ms)
            times[provider]["full"].append(forward_ms + backward_ms)
        print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr)
    step, references = {}, {}
    for provider in running:
        if provider in failed or provider in GEMMS_ONLY or not (accuracy or device == "cuda"):
            continue
        plain = provider in PLAIN_CE
        x = inputs[plain]
        try:
            if accuracy and plain not in references:
                references[plain] = float64_reference(x)
            step[provider] = accuracy_step(forwards[provider], x, device, references.get(plain))
        except Exception as error:  # noqa: BLE001
            failed[provider] = _failure(provider, "accuracy step", error, x)
    return Measurements({p: t for p, t in times.items() if p not in failed}, failed, step)


def float64_reference(x: LossInputs) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(loss, grad_hidden, grad_weight) of the AdvDistill loss on ``x``'s inputs upcast to float64."""
    hidden = x.hidden.detach().double().requires_grad_()
    weight = x.weight.detach().double().requires_grad_()
    loss = advdistill_loss(hidden, weight, x.targets, x.response_index, x.response_weights.double(), x.wrong,
                           lam=x.lam, p_max=x.p_max, backend="torch")
    loss.backward()
    return loss.item(), hidden.grad, weight.grad


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).norm() / reference.norm().clamp(min=1e-300)).item()


def accuracy_step(forward: Forward, x: LossInputs, device: str,
                  reference: tuple[float, torch.Tensor, torch.Tensor] | None) -> dict[str, float]:
    """One full step: its errors against the float64 ``reference`` (when given) and, on CUDA, its peak memory
    (MB)."""
    _clear_grads(x)
    figures = {}
    if device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    loss = forward()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        figures["peak_mb"] = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    if reference is not None:
        value, grad_hidden, grad_weight = loss.item(), x.hidden.grad, x.weight.grad
        ref_loss, ref_hidden, ref_weight = reference
        figures.update(loss=value, loss_ref=ref_loss, loss_abs_err=abs(value - ref_loss),
                       grad_hidden_rel_err=_relative_error(grad_hidden, ref_hidden),
                       grad_weight_rel_err=_relative_error(grad_weight, ref_weight),
                       grad_max_abs_err=max((grad_hidden.double() - ref_hidden).abs().max().item(),
                                            (grad_weight.double() - ref_weight).abs().max().item()))
    _clear_grads(x)
    return figures


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_peak_memory_mb(provider: str, size: Size, dtype: torch.dtype, chunk_size: int | None) -> float | None:
    """Peak memory of one full step on the CPU (method in the module docstring); run in a fresh process."""
    x = make_inputs(size, dtype, "cpu", provider in PLAIN_CE)
    forward = make_forward(provider, x, chunk_size)
    timed_run(forward, x, "cpu")
    _clear_grads(x)
    ctypes.CDLL(None).malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    baseline_kib = _proc_status_kib("VmRSS")
    timed_run(forward, x, "cpu")
    return (_proc_status_kib("VmHWM") - baseline_kib) / 1024


def memory_in_subprocess(provider: str, size_name: str, dtype: str, chunk_size: int | None) -> float | None:
    """:func:`cpu_peak_memory_mb` in a fresh process with glibc's mmap threshold fixed (module docstring); None
    where it could not be measured (the reason is printed)."""
    command = [sys.executable, __file__, "--memory-worker", provider, "--sizes", size_name, "--dtypes", dtype] + (
        ["--chunk-size", str(chunk_size)] if chunk_size else [])
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD_BYTES))
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        print(f"  memory of {provider} failed: {completed.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _gemm_loop(stop_event) -> None:
    """Competing load: single-threaded float32 GEMMs until told to stop."""
    torch.set_num_threads(1)
    a = torch.randn(1024, 1024)
    while not stop_event.is_set():
        torch.mm(a, a)


def start_load(processes: int) -> Callable[[], None]:
    """Starts ``processes`` GEMM loops; returns the function that stops them."""
    context = multiprocessing.get_context("spawn")
    stop_event = context.Event()
    workers = [context.Process(target=_gemm_loop, args=(stop_event,), daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()

    def stop() -> None:
        stop_event.set()
        for worker in workers:
            worker.join()

    return stop


# the vector instructions that decide a CPU's GEMM rate (bfloat16 above all), as /proc/cpuinfo names them
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def machine(device: str, dtype: torch.dtype, size: Size) -> dict[str, str]:
    """Where the numbers came from (and the GEMM provider ``cpp`` picked for ``size``)."""
    cpu_model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    gemm = cpp_backend.gemm_description(dtype, (size.hidden_dim, size.vocab_size)) if device == "cpu" else "cuBLAS"
    return {"cpu": cpu_model, "cores": str(os.cpu_count()), "threads": str(torch.get_num_threads()),
            "loadavg_1min": f"{os.getloadavg()[0]:.2f}",
            "gpu": torch.cuda.get_device_name() if device == "cuda" else "", "torch": torch.__version__,
            "gemm_provider": gemm, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": " ".join(flag for flag in VECTOR_FLAGS if flag in flags)}


def summarize(times: list[float]) -> tuple[float, float, float]:
    return statistics.median(times), min(times), max(times)


def _cell(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def report(size_name: str, dtype_name: str, providers: list[str], measured: Measurements, memory: dict,
           skipped: dict, info: dict, load: int, rounds: int, chunk_size: int | None) -> list[dict]:
    """Prints the table for one size and dtype; returns the CSV rows (a failed provider's row has its error)."""
    size = SIZES[size_name]
    times = measured.times
    print(f"\nAdvDistill loss, {size_name}: N={size.num_tokens} ({size.responses}x{size.tokens_per_response}), "
          f"d={size.hidden_dim}, V={size.vocab_size}, {dtype_name}; {info['cpu']} ({info['threads']} threads) "
          f"{info['gpu']}, torch {info['torch']}, GEMM: {info['gemm_provider']}; "
          f"chunk_size: {chunk_size or 'default'}; "
          f"load: {load} GEMM process(es), 1-min load average {info['loadavg_1min']} at the end; "
          f"median [min-max] of {rounds} alternating rounds; errors against float64 of the same inputs")
    header = (f"{'provider':<28}{'forward ms':>22}{'backward ms':>22}{'full ms':>24}{'TFLOP/s':>9}"
              f"{'full/limit':>11}{'peak MB':>10}{'full/naive':>11}{'mem/naive':>10}{'loss':>10}{'loss err':>10}"
              f"{'dh rel err':>11}{'dW rel err':>11}")
    print(header)
    print("-" * len(header))

    def full_median(provider: str) -> float | None:
        return statistics.median(times[provider]["full"]) if provider in times else None

    naive_full = full_median("naive")
    limit_full = full_median("limit") or full_median("limit_torch_mm")
    naive_memory = memory.get("naive")
    rows = []
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    base = {"timestamp": stamp, "size": size_name, "num_tokens": size.num_tokens, "hidden_dim": size.hidden_dim,
            "vocab_size": size.vocab_size, "dtype": dtype_name}
    for provider in providers:
        name = provider + (" (plain CE)" if provider in PLAIN_CE else "")
        if provider in skipped:
            print(f"{name:<28}skipped: {skipped[provider]}")
            continue
        if provider in measured.failed:
            print(f"{name:<28}FAILED at {measured.failed[provider]}")
            rows.append({**base, "provider": provider, "plain_ce": provider in PLAIN_CE, "mode": "full",
                         "error": measured.failed[provider], "load_processes": load, **info})
            continue
        cells = []
        for mode in MODES:
            median, low, high = summarize(times[provider][mode])
            cells.append(f"{median:>9.1f} [{low:.0f}-{high:.0f}]")
        full = full_median(provider)
        step = measured.step.get(provider, {})
        peak = memory.get(provider, step.get("peak_mb"))
        tflops = size.flops / (full * 1e-3) / 1e12
        ratios = {"full/limit": full / limit_full if limit_full else None,
                  "full/naive": full / naive_full if naive_full else None,
                  "mem/naive": peak / naive_memory if peak is not None and naive_memory else None}
        print(f"{name:<28}{cells[0]:>22}{cells[1]:>22}{cells[2]:>24}{tflops:>9.3f}"
              f"{_cell(ratios['full/limit'], '.2f'):>11}{_cell(peak, '.0f'):>10}"
              f"{_cell(ratios['full/naive'], '.2f'):>11}"
              f"{_cell(ratios['mem/naive'], '.3f'):>10}{_cell(step.get('loss'), '.4f'):>10}"
              f"{_cell(step.get('loss_abs_err'), '.1e'):>10}{_cell(step.get('grad_hidden_rel_err'), '.1e'):>11}"
              f"{_cell(step.get('grad_weight_rel_err'), '.1e'):>11}")
        for mode in MODES:
            median, low, high = summarize(times[provider][mode])
            rows.append({**base, "provider": provider, "plain_ce": provider in PLAIN_CE, "mode": mode,
                         "ms_median": round(median, 2), "ms_min": round(low, 2), "ms_max": round(high, 2),
                         "rounds": rounds, "chunk_size": chunk_size or "", "tflops_full": round(tflops, 4),
                         "full_over_limit": round(ratios["full/limit"], 4) if ratios["full/limit"] else "",
                         "peak_mb": round(peak, 1) if peak is not None else "", "load_processes": load,
                         **{key: f"{step[key]:.6g}" for key in ACCURACY_COLUMNS if key in step}, **info})
    if measured.failed:
        print(f"failed: {', '.join(sorted(measured.failed))}")
    return rows


ACCURACY_COLUMNS = ("loss", "loss_ref", "loss_abs_err", "grad_hidden_rel_err", "grad_weight_rel_err",
                    "grad_max_abs_err")
CSV_COLUMNS = ("timestamp", "size", "num_tokens", "hidden_dim", "vocab_size", "dtype", "provider", "plain_ce", "mode",
               "ms_median", "ms_min", "ms_max", "rounds", "chunk_size", "tflops_full", "full_over_limit", "peak_mb",
               *ACCURACY_COLUMNS, "error", "load_processes", "cpu", "cores", "threads", "loadavg_1min", "gpu", "torch",
               "gemm_provider", "cpu_capability", "cpu_flags")


def append_csv(path: Path, rows: list[dict]) -> None:
    """Appends ``rows``; a file with fewer columns (an older benchmark's) is rewritten with the new ones empty."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    old_rows = []
    if path.exists():
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            unknown = set(reader.fieldnames or ()) - set(CSV_COLUMNS)
            if unknown:
                raise ValueError(f"{path}: columns {sorted(unknown)} are not this benchmark's; use another --csv")
            if list(reader.fieldnames or ()) != list(CSV_COLUMNS):
                old_rows = list(reader)
    if old_rows or not path.exists():
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(old_rows)
        partial.replace(path)
    with path.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=CSV_COLUMNS).writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small"])
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "float16"), default=["float32"])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(DEFAULT_PROVIDERS))
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (after one warm-up)")
    parser.add_argument("--load", type=int, default=0, help="competing single-threaded GEMM processes")
    parser.add_argument("--chunk-size", type=int, help="tokens per logits tile of the fused backends")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory runs (CPU)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the errors against float64")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="append the results here")
    parser.add_argument("--memory-worker", choices=PROVIDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_worker:
        dtype = getattr(torch, args.dtypes[0])
        print(json.dumps(cpu_peak_memory_mb(args.memory_worker, SIZES[args.sizes[0]], dtype, args.chunk_size)))
        return

    stop_load = start_load(args.load) if args.load else None
    any_failed = False
    try:
        for size_name in args.sizes:
            for dtype_name in args.dtypes:
                dtype = getattr(torch, dtype_name)
                skipped = {p: r for p in args.providers if (r := skip_reason(p, args.device))}
                providers = [p for p in args.providers if p not in skipped]
                measured = time_providers(providers, SIZES[size_name], dtype, args.device, args.rounds,
                                          args.chunk_size, accuracy=not args.no_accuracy)
                memory = {} if args.no_memory or args.device == "cuda" else {
                    p: memory_in_subprocess(p, size_name, dtype_name, args.chunk_size)
                    for p in measured.times if p not in GEMMS_ONLY}
                rows = report(size_name, dtype_name, args.providers, measured, memory, skipped,
                              machine(args.device, dtype, SIZES[size_name]), args.load, args.rounds,
                              args.chunk_size)
                append_csv(args.csv, rows)
                any_failed = any_failed or bool(measured.failed)
    finally:
        if stop_load is not None:
            stop_load()
    if any_failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
