"""Where a ``cpp`` fused-loss step spends its time, phase by phase, beside the GEMM limit of the same size.

The extension marks its phases for ``torch.profiler`` (``RECORD_PHASE`` in ``cpp/fused_loss.cpp``):
``logits_gemm`` (logits of a tile), ``exp_rows`` (row max, ``exp(z - max)`` in place, log-sum-exp),
``dlogits`` (bfloat16 only: the in-place ``dlogits`` pass over the rows whose coefficient waits for the tile's
statistics; the other rows become ``dlogits`` inside ``exp_rows``), ``grad_hidden_gemm`` and ``grad_weight_gemm``
(for bfloat16 the latter includes the float32 accumulation of each slice). ``other`` is the rest of the
step: the tile plan, input conversions, the statistics and the outputs. Every figure is the wall time of
the calling thread per step (OpenMP and the GEMM threads work inside it), the median over ``--steps``
profiled steps after ``--warmup`` unprofiled ones; ``limit`` is the benchmark's provider of that name
(the step's 6 N d V FLOPs as GEMMs of 1,024 tokens), timed in the same process.

Usage::

    python kernels/benchmarks/profile_fused_loss.py --size small --dtype float32
    python kernels/benchmarks/profile_fused_loss.py --size medium --dtype bfloat16 --plain-ce
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))

from advdistill_kernels.backends import cpp as cpp_backend  # noqa: E402
from bench_fused_loss import SIZES, make_forward, make_inputs  # noqa: E402

PHASES = ("logits_gemm", "exp_rows", "dlogits", "grad_hidden_gemm", "grad_weight_gemm")
STEP = "advdistill::profiled_step"


def phase_times(events) -> dict[str, float]:
    """Per phase (and the whole step), the wall ms of one profiled step."""
    totals = {name: 0.0 for name in PHASES + ("step",)}
    for event in events:
        name = event.name.removeprefix("advdistill::")
        if event.name == STEP:
            totals["step"] += event.cpu_time_total / 1e3
        elif name in totals:
            totals[name] += event.cpu_time_total / 1e3
    totals["other"] = totals["step"] - sum(totals[name] for name in PHASES)
    return totals


def profile_steps(forward, x, steps: int) -> list[dict[str, float]]:
    per_step = []
    for _ in range(steps):
        x.hidden.grad = x.weight.grad = None
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function(STEP):
                forward().backward()
        per_step.append(phase_times(prof.events()))
    return per_step


def time_limit(x, steps: int) -> list[float]:
    run = make_forward("limit", x, None)
    run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--plain-ce", action="store_true", help="plain token-mean CE (lam = 0, uniform weights)")
    parser.add_argument("--chunk-size", type=int, default=None, help="tokens per logits tile (default: the backend's)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    x = make_inputs(SIZES[args.size], dtype, "cpu", args.plain_ce)
    forward = make_forward("cpp_plain_ce" if args.plain_ce else "cpp", x, args.chunk_size)
    for _ in range(args.warmup):
        x.hidden.grad = x.weight.grad = None
        forward().backward()
    per_step = profile_steps(forward, x, args.steps)
    limit = statistics.median(time_limit(x, args.steps))
    medians = {name: statistics.median(step[name] for step in per_step) for name in per_step[0]}
    provider = cpp_backend.gemm_description(dtype, (x.hidden.shape[1], x.weight.shape[0]))
    print(f"cpp {args.size} {args.dtype}{' plain CE' if args.plain_ce else ''}, GEMM provider "
          f"{provider}, {torch.get_num_threads()} threads, "
          f"tile tokens {args.chunk_size or cpp_backend.default_tile_tokens(SIZES[args.size].vocab_size)}; "
          f"median of {args.steps} steps")
    print("| phase | ms per step | share of step |")
    print("|---|---|---|")
    for name in PHASES + ("other", "step"):
        if name == "dlogits" and medians[name] == 0.0:
            continue
        print(f"| {name} | {medians[name]:.1f} | {100 * medians[name] / medians['step']:.1f} % |")
    gemms = sum(medians[name] for name in ("logits_gemm", "grad_hidden_gemm", "grad_weight_gemm"))
    print(f"| limit (the same FLOPs as 1,024-token GEMMs) | {limit:.1f} | step / limit = "
          f"{medians['step'] / limit:.2f}, tile GEMMs / limit = {gemms / limit:.2f} |")


if __name__ == "__main__":
    main()
