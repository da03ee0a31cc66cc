"""``kernels/benchmarks/bench_fused_loss.py``: it runs, prints its table and appends its CSV, measures each
provider's error against float64, and keeps going when one provider fails."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from advdistill_kernels.backends import cpp as cpp_backend

from tests.helpers import loaded_script

BENCHMARK = Path(__file__).resolve().parents[2] / "kernels" / "benchmarks" / "bench_fused_loss.py"


@pytest.fixture(scope="module")
def bench():
    with loaded_script(BENCHMARK) as module:
        yield module


def test_benchmark_writes_one_row_per_provider_and_mode(tmp_path):
    if reason := cpp_backend.load_error():
        pytest.skip(reason)
    results = tmp_path / "results.csv"
    providers = ["limit", "naive", "cpp", "cpp_plain_ce", "torch_lce", "triton"]
    command = [sys.executable, str(BENCHMARK), "--sizes", "tiny", "--rounds", "2", "--providers", *providers,
               "--no-memory", "--csv", str(results)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "GEMM: " in completed.stdout and "triton" in completed.stdout
    with results.open() as handle:
        rows = list(csv.DictReader(handle))
    has_lce = hasattr(torch.nn, "LinearCrossEntropyOptions")
    measured = {"limit", "naive", "cpp", "cpp_plain_ce"} | ({"torch_lce"} if has_lce else set())
    assert {(row["provider"], row["mode"]) for row in rows} == {
        (provider, mode) for provider in measured for mode in ("forward", "backward", "full")}
    assert all(row["cpu"] and row["torch"] and row["gemm_provider"] and row["cpu_capability"] for row in rows)
    losses = [row for row in rows if row["provider"] != "limit"]
    assert all(float(row["loss_abs_err"]) < 1e-4 and float(row["grad_weight_rel_err"]) < 1e-4 for row in losses)
    assert all(float(row["full_over_limit"]) > 0 for row in rows)


def test_a_failing_provider_is_reported_and_the_others_measured(bench, monkeypatch, tmp_path, capsys):
    def broken(x):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setitem(bench.SETUPS, "naive", broken)
    measured = bench.time_providers(["naive", "torch"], bench.SIZES["tiny"], torch.float32, "cpu", rounds=1,
                                    chunk_size=None, accuracy=True)
    assert measured.failed == {"naive": "warm-up: RuntimeError: CUDA out of memory (simulated)"}
    assert len(measured.times["torch"]["full"]) == 1 and "naive" not in measured.times
    assert measured.step["torch"]["loss_abs_err"] < 1e-5
    rows = bench.report("tiny", "float32", ["naive", "torch"], measured, {}, {},
                        bench.machine("cpu", torch.float32, bench.SIZES["tiny"]), 0, 1, None)
    assert "naive                       FAILED at warm-up: RuntimeError" in capsys.readouterr().out
    assert [row["provider"] for row in rows] == ["naive", "torch", "torch", "torch"]
    results = tmp_path / "results.csv"
    bench.append_csv(results, rows)
    with results.open() as handle:
        written = list(csv.DictReader(handle))
    assert written[0]["error"].startswith("warm-up") and written[1]["error"] == ""


def test_an_older_csv_gains_the_new_columns(bench, tmp_path):
    old_columns = [c for c in bench.CSV_COLUMNS if c not in bench.ACCURACY_COLUMNS + ("error", "full_over_limit")]
    results = tmp_path / "results.csv"
    results.write_text(",".join(old_columns) + "\n" + ",".join("x" for _ in old_columns) + "\n")
    bench.append_csv(results, [{"provider": "torch", "loss": "1.5"}])
    with results.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["provider"] for row in rows] == ["x", "torch"] and rows[0]["loss"] == "" and rows[1]["loss"] == "1.5"
    results.write_text("unrelated,columns\n1,2\n")
    with pytest.raises(ValueError, match="not this benchmark's"):
        bench.append_csv(results, [{"provider": "torch"}])


PROFILE = BENCHMARK.with_name("profile_fused_loss.py")


@pytest.mark.parametrize(("dtype", "phases"), [
    ("float32", {"logits_gemm", "exp_rows", "grad_hidden_gemm", "grad_weight_gemm", "other"}),
    ("bfloat16", {"logits_gemm", "exp_rows", "dlogits", "grad_hidden_gemm", "grad_weight_gemm", "other"}),
])
def test_profile_splits_a_cpp_step_into_the_extension_phases(dtype, phases):
    if reason := cpp_backend.load_error():
        pytest.skip(reason)
    command = [sys.executable, str(PROFILE), "--size", "tiny", "--dtype", dtype, "--steps", "2", "--warmup", "1"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = {cells[1].strip(): cells[2].strip() for line in completed.stdout.splitlines()
            if (cells := line.split("|")) and len(cells) > 3 and cells[2].strip()[:1].isdigit()}
    assert set(rows) == phases | {"step"} | {name for name in rows if name.startswith("limit")}
    timings = {name: float(rows[name]) for name in phases | {"step"}}
    # bfloat16 rows without a pending contrastive term become dlogits inside exp_rows: its own phase may round to 0
    assert all(timings[name] > 0 for name in phases - {"other", "dlogits"})
    # "other" is the step less the named phases: negative if a phase were counted twice (nested scopes)
    assert timings["other"] >= -0.1
    assert sum(timings[name] for name in phases - {"other"}) > 0.25 * timings["step"]
