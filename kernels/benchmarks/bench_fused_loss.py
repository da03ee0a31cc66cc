"""Benchmark the AdvDistill loss providers: forward + backward time and peak memory.

Providers (each has a ``setup_<provider>`` factory returning a zero-argument step that runs
forward + backward once):

* ``naive``            full ``[N, V]`` logits, then :func:`advdistill_loss_from_logits` (autograd)
* ``naive_compiled``   ``torch.compile`` of the same function
* ``torch_reference``  ``advdistill_loss(backend="torch")``, the chunked reference
* ``cpp``              ``advdistill_loss(backend="cpp")`` (CPU only)
* ``triton``           ``advdistill_loss(backend="triton")`` (CUDA only)
* ``liger``, ``cce``   Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` and cut-cross-entropy's
  ``linear_cross_entropy`` (CUDA only, when installed). They only compute the plain
  cross-entropy, which is the AdvDistill special case ``lam = 0`` with uniform weights and
  equal-length responses (the benchmark's responses all have the same length).

Every provider runs in a fresh worker subprocess on identical seeded inputs.

Time: median wall-clock of ``--iters`` steps after ``--warmup`` discarded steps, with
``torch.cuda.synchronize()`` around each step on CUDA.

Peak memory, measured on one extra step after the timed ones, gradients cleared beforehand, so
the inputs are the baseline and the new ``.grad`` tensors count:

* CUDA: ``torch.cuda.max_memory_allocated()`` during the step minus ``memory_allocated()`` before.
* CPU: the worker is started with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every
  allocation of 64 KiB or more with ``mmap`` and returns it on free; the resident set then follows
  live tensor memory. The worker resets the kernel's peak-RSS counter (writes ``5`` to
  ``/proc/self/clear_refs``) and reports ``VmHWM`` after the step minus ``VmRSS`` before it.
  This counts everything the step touches (tensors, BLAS workspaces, freshly paged code) at page
  granularity; where ``clear_refs`` cannot be written the peak column reads ``n/a``.

TFLOP/s uses the nominal ``8 N d V`` FLOPs of a fused forward + backward (logits, their
recomputation, and the two gradient matmuls) for every provider.

Usage::

    python kernels/benchmarks/bench_fused_loss.py --size cpu --json cpu.json
    python kernels/benchmarks/bench_fused_loss.py --size paper --json paper.json   # needs a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from advdistill_kernels import LossInputs

PROVIDERS = ("naive", "naive_compiled", "torch_reference", "cpp", "triton", "liger", "cce")
CUDA_ONLY = {"triton", "liger", "cce"}
CPU_ONLY = {"cpp"}
PLAIN_CE = {"liger", "cce"}


@dataclass(frozen=True)
class Size:
    responses: int
    tokens_per_response: int
    hidden_dim: int
    vocab_size: int
    dtype: str
    device: str
    warmup: int
    iters: int

    @property
    def num_tokens(self) -> int:
        return self.responses * self.tokens_per_response


SIZES = {
    "cpu": Size(responses=8, tokens_per_response=256, hidden_dim=256, vocab_size=32000, dtype="float32",
                device="cpu", warmup=1, iters=5),
    "paper": Size(responses=8, tokens_per_response=2048, hidden_dim=1536, vocab_size=151936, dtype="bfloat16",
                  device="cuda", warmup=3, iters=10),
}


def make_inputs(size: Size, plain_ce: bool) -> LossInputs:
    """Seeded inputs; ``plain_ce`` gives uniform weights and ``lam = 0`` (plain token-mean CE)."""
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, size.dtype)
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
    inputs = inputs.to(size.device, dtype)
    inputs.hidden.requires_grad_()
    inputs.weight.requires_grad_()
    return inputs


Step = Callable[[], torch.Tensor]


def _naive_loss(hidden, weight, targets, response_index, response_weights, wrong, lam, p_max):
    from advdistill_kernels import advdistill_loss_from_logits

    return advdistill_loss_from_logits(hidden @ weight.T, targets, response_index, response_weights, wrong,
                                       lam=lam, p_max=p_max)


def _backward_step(loss_fn: Callable[[], torch.Tensor]) -> Step:
    def step() -> torch.Tensor:
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    return step


def setup_naive(x: LossInputs) -> Step:
    return _backward_step(lambda: _naive_loss(x.hidden, x.weight, x.targets, x.response_index, x.response_weights,
                                              x.wrong, x.lam, x.p_max))


def setup_naive_compiled(x: LossInputs) -> Step:
    compiled = torch.compile(_naive_loss)
    return _backward_step(lambda: compiled(x.hidden, x.weight, x.targets, x.response_index, x.response_weights,
                                           x.wrong, x.lam, x.p_max))


def _fused(x: LossInputs, backend: str) -> Step:
    from advdistill_kernels import advdistill_loss

    return _backward_step(lambda: advdistill_loss(x.hidden, x.weight, x.targets, x.response_index,
                                                  x.response_weights, x.wrong, lam=x.lam, p_max=x.p_max,
                                                  backend=backend))


def setup_torch_reference(x: LossInputs) -> Step:
    return _fused(x, "torch")


def setup_cpp(x: LossInputs) -> Step:
    return _fused(x, "cpp")


def setup_triton(x: LossInputs) -> Step:
    return _fused(x, "triton")


def setup_liger(x: LossInputs) -> Step:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss_module = LigerFusedLinearCrossEntropyLoss()
    return _backward_step(lambda: loss_module(x.weight, x.hidden, x.targets))


def setup_cce(x: LossInputs) -> Step:
    from cut_cross_entropy import linear_cross_entropy

    return _backward_step(lambda: linear_cross_entropy(x.hidden, x.weight, x.targets))


SETUPS: dict[str, Callable[[LossInputs], Step]] = {
    "naive": setup_naive, "naive_compiled": setup_naive_compiled, "torch_reference": setup_torch_reference,
    "cpp": setup_cpp, "triton": setup_triton, "liger": setup_liger, "cce": setup_cce,
}


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _clear_grads(x: LossInputs) -> None:
    x.hidden.grad = None
    x.weight.grad = None


def _peak_memory_mb(step: Step, x: LossInputs, device: torch.device) -> float | None:
    _clear_grads(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - baseline) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    baseline_kib = _proc_status_kib("VmRSS")
    step()
    return (_proc_status_kib("VmHWM") - baseline_kib) / 1024


def run_worker(provider: str, size_name: str) -> dict:
    """Measure one provider in this process; returns the result row."""
    size = SIZES[size_name]
    device = torch.device(size.device)
    x = make_inputs(size, plain_ce=provider in PLAIN_CE)
    step = SETUPS[provider](x)

    def timed_step() -> tuple[float, torch.Tensor]:
        _clear_grads(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3, loss

    for _ in range(size.warmup):
        timed_step()
    times = []
    for _ in range(size.iters):
        elapsed, loss = timed_step()
        times.append(elapsed)
    peak_mb = _peak_memory_mb(step, x, device)
    return {"provider": provider, "ms": statistics.median(times), "ms_all": times, "peak_mb": peak_mb,
            "loss": float(loss), "plain_ce": provider in PLAIN_CE}


def _skip_reason(provider: str, size: Size) -> str | None:
    cuda = size.device == "cuda"
    if cuda and not torch.cuda.is_available():
        return "size needs CUDA"
    if provider in CUDA_ONLY and not cuda:
        return "CUDA only"
    if provider in CPU_ONLY and cuda:
        return "CPU only"
    module = {"triton": "triton", "liger": "liger_kernel", "cce": "cut_cross_entropy"}.get(provider)
    if module is not None:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            return f"{module} not installed"
    return None


def _run_in_subprocess(provider: str, size_name: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, __file__, "--size", size_name, "--worker", provider]
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        return {"provider": provider, "error": " | ".join(tail)}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _format_table(rows: list[dict], size: Size) -> str:
    naive = next((r for r in rows if r["provider"] == "naive" and "ms" in r), None)
    flops = 8 * size.num_tokens * size.hidden_dim * size.vocab_size
    header = (f"{'provider':<24}{'ms':>10}{'peak MB':>10}{'time/naive':>12}{'mem/naive':>11}"
              f"{'TFLOP/s':>9}{'loss':>12}")
    lines = [header, "-" * len(header)]
    for row in rows:
        name = row["provider"] + (" (plain CE)" if row.get("plain_ce") else "")
        if "ms" not in row:
            lines.append(f"{name:<24}  {row.get('skipped') or 'error: ' + row.get('error', '')}")
            continue
        peak = row["peak_mb"]
        time_ratio = f"{row['ms'] / naive['ms']:.2f}x" if naive else "n/a"
        mem_ratio = f"{peak / naive['peak_mb']:.3f}x" if naive and peak is not None and naive["peak_mb"] else "n/a"
        peak_text = f"{peak:.1f}" if peak is not None else "n/a"
        tflops = flops / (row["ms"] * 1e-3) / 1e12
        lines.append(f"{name:<24}{row['ms']:>10.1f}{peak_text:>10}{time_ratio:>12}{mem_ratio:>11}"
                     f"{tflops:>9.2f}{row['loss']:>12.5f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", choices=PROVIDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(run_worker(args.worker, args.size)))
        return

    size = SIZES[args.size]
    rows = []
    for provider in args.providers:
        reason = _skip_reason(provider, size)
        row = {"provider": provider, "skipped": reason} if reason else _run_in_subprocess(provider, args.size)
        rows.append(row)
        print(f"  {provider}: {row.get('ms', row.get('skipped') or row.get('error'))}", file=sys.stderr)

    device_name = torch.cuda.get_device_name() if size.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"AdvDistill loss, forward+backward, size={args.size}: N={size.num_tokens} "
          f"({size.responses}x{size.tokens_per_response}), d={size.hidden_dim}, V={size.vocab_size}, "
          f"{size.dtype}, {device_name}, torch {torch.__version__}")
    print(_format_table(rows, size))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"size": args.size, "config": asdict(size), "device": device_name,
                                         "torch": torch.__version__, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
