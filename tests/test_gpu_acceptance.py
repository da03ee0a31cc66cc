"""``scripts/gpu_acceptance.py``: its CPU rehearsal runs every stage from a wheelhouse installed with
``--no-index`` into a fresh folder, and packs at most 8 result files; the wheelhouse's dependency check."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import loaded_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_acceptance.py"


@pytest.fixture(scope="module")
def acceptance():
    with loaded_script(SCRIPT) as module:
        yield module


def make_wheel(folder: Path, name: str, requires: list[str] = (), module: str | None = None) -> Path:
    """A minimal pure-Python wheel, as pip installs it."""
    dist_info = f"{name}-1.0.dist-info"
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        if module:
            archive.writestr(f"{module}.py", "PROBE = 1\n")
        archive.writestr(f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
                         + "".join(f"Requires-Dist: {r}\n" for r in requires))
        archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n")
        archive.writestr(f"{dist_info}/RECORD", "")
    return wheel


@pytest.mark.slow
def test_rehearsal_runs_every_stage_from_the_wheelhouse_and_packs_at_most_8_files(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    make_wheel(wheelhouse, "acceptance_probe", module="acceptance_probe")
    out = tmp_path / "out"
    completed = subprocess.run([sys.executable, str(SCRIPT), "run", "--rehearse", "--wheelhouse", str(wheelhouse),
                                "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench_paper.csv", "bench_paper_compiled.csv", "logs.tar.gz", "summary.json", "summary.md"]
    summary = json.loads((out / "summary.json").read_text())
    statuses = {stage["name"]: stage["status"] for stage in summary["stages"]}
    assert statuses.pop("install") == "passed"
    assert statuses == dict.fromkeys(["environment", "kernels", "benchmark", "benchmark-compiled", "training",
                                      "evaluate"], "no CUDA: rehearsed on the CPU")
    figures = {stage["name"]: stage["figures"] for stage in summary["stages"]}
    assert figures["environment"]["wheelhouse_installed"] == {"acceptance_probe": "1.0"}
    assert figures["kernels"]["tests"] == 2 and figures["kernels"]["failures"] == 0
    assert float(figures["benchmark"]["torch"]["loss_abs_err"]) < 1e-4
    assert [case["case"] for case in figures["training"]["cases"]] == [
        "advdistill, without checkpointing", "advdistill, with checkpointing", "sft, without checkpointing",
        "sft, with checkpointing"]
    assert all(case["seconds_per_step"] > 0 and case["planned_gib"] > 0 for case in figures["training"]["cases"])
    assert figures["evaluate"]["device"] == "cpu" and figures["evaluate"]["prompts"] == 32
    assert "| training | no CUDA: rehearsed on the CPU |" in (out / "summary.md").read_text()


def test_without_cuda_and_without_rehearse_only_the_environment_runs(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    make_wheel(wheelhouse, "acceptance_probe", module="acceptance_probe")
    out = tmp_path / "out"
    completed = subprocess.run([sys.executable, str(SCRIPT), "run", "--wheelhouse", str(wheelhouse), "--out",
                                str(out)], capture_output=True, text=True, timeout=300)
    stages = json.loads((out / "summary.json").read_text())["stages"]
    baselines = all(importlib.util.find_spec(name) for name in ("liger_kernel", "cut_cross_entropy"))
    # outside a rehearsal, a package the wheelhouse should have brought fails the environment stage
    environment = "passed, but no CUDA device is visible" if baselines else "failed (exit 1)"
    assert [stage["status"] for stage in stages][:2] == ["passed", environment]
    assert completed.returncode == (0 if baselines else 1)
    assert all(stage["status"].startswith("not run: no CUDA device visible") for stage in stages[2:])


def test_an_empty_wheelhouse_fails_the_install_and_says_how_to_fill_it(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run([sys.executable, str(SCRIPT), "run", "--wheelhouse", str(tmp_path), "--out", str(out)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert "no wheels in" in completed.stdout and "make gpu-wheelhouse" in completed.stdout


def test_a_result_folder_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep")
    completed = subprocess.run([sys.executable, str(SCRIPT), "run", "--out", str(tmp_path)], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 2 and "not empty" in completed.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]


def test_wheelhouse_requirements_must_be_in_the_wheelhouse_or_on_the_node(acceptance, tmp_path):
    front = make_wheel(tmp_path, "polars", ["polars-runtime-32 ==2.1.0", "numpy>=1.20",
                                            "pyarrow>=7; extra == 'pyarrow'", "backports-x; python_version < '3.9'"])
    assert acceptance.missing_requirements([front]) == {front.name: ["polars-runtime-32"]}
    runtime = make_wheel(tmp_path, "polars_runtime_32")
    assert acceptance.missing_requirements([front, runtime]) == {}
