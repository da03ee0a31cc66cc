"""Smoke test of ``kernels/benchmarks/bench_fused_loss.py``: it runs, prints its table and appends its CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from advdistill_kernels.backends import cpp as cpp_backend

BENCHMARK = Path(__file__).resolve().parents[2] / "kernels" / "benchmarks" / "bench_fused_loss.py"


def test_benchmark_writes_one_row_per_provider_and_mode(tmp_path):
    if reason := cpp_backend.load_error():
        pytest.skip(reason)
    results = tmp_path / "results.csv"
    command = [sys.executable, str(BENCHMARK), "--sizes", "tiny", "--rounds", "2", "--providers", "limit", "naive",
               "cpp", "cpp_plain_ce", "triton", "--no-memory", "--csv", str(results)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "GEMM: " in completed.stdout and "triton" in completed.stdout
    with results.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["provider"], row["mode"]) for row in rows} == {
        (provider, mode) for provider in ("limit", "naive", "cpp", "cpp_plain_ce")
        for mode in ("forward", "backward", "full")}
    assert all(row["cpu"] and row["torch"] and row["gemm_provider"] for row in rows)
