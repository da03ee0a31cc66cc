"""Planning of what the command line and the machine add to a config, through `snakemake --dry-run`: nested
``--config`` values get their schema type, and a workstation's GPU jobs at once are limited to its GPUs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from advdistill import devices
from tests.helpers import REPO, assert_clean_stop
from tests.test_planning import write_config

FAKE_NVIDIA_SMI = ("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n"
                   "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\n")


def dry_run(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "--dry-run", "--printshellcmds", *args],
                          cwd=workdir, capture_output=True, text=True, timeout=300, env=env)


def test_nested_config_overrides_of_a_number_and_a_boolean_plan(tmp_path):
    config = write_config(tmp_path, lambda config: None)
    result = dry_run(tmp_path, "--configfile", str(config), "--config",
                     'training={"optim": {"learning_rate": 0.002}}', 'score={"drop_zero_variance": true}')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '"learning_rate":0.002' in result.stdout and '"learning_rate":0.001' not in result.stdout
    assert '"drop_zero_variance":true' in result.stdout


def test_a_nested_config_override_that_is_no_number_names_the_key(tmp_path):
    config = write_config(tmp_path, lambda config: None)
    output = assert_clean_stop(dry_run(tmp_path, "--configfile", str(config), "--config",
                                       'training={"optim": {"learning_rate": "fast"}}'))
    assert "config training.optim.learning_rate: 'fast' from --config is not a number" in output
    assert "override.yaml holding training: {optim: {learning_rate: ...}}" in output


@pytest.fixture
def two_gpus(tmp_path) -> dict[str, str]:
    """An environment whose nvidia-smi lists two GPUs, without CUDA_VISIBLE_DEVICES."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (folder / "nvidia-smi").chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    return {**env, "PATH": f"{folder}{os.pathsep}{env['PATH']}"}


GPU_LIMIT = "GPU jobs: at most 2 GPU(s) in use at once, the GPUs of this machine"


@pytest.mark.parametrize("gpu_rules, extra, limited", [
    (True, (), True),
    (True, ("--resources", "gpu=3"), False),  # the user's limit wins
    (False, (), False),  # a CPU run: no rule asks for a GPU, nothing changes
])
def test_a_workstation_runs_no_more_gpu_jobs_than_its_gpus(tmp_path, two_gpus, gpu_rules, extra, limited):
    config = write_config(tmp_path, lambda config: config.update(resources={"gpu_rules": gpu_rules}))
    result = dry_run(tmp_path, "--configfile", str(config), *extra, env=two_gpus)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (GPU_LIMIT in result.stdout + result.stderr) == limited
    assert ("gpu=1" in result.stdout) == gpu_rules  # what each GPU job asks for


@pytest.mark.failure_mode(
    "a GPU job asking for more GPUs than the workstation has",
    sees="planning stops naming the key, its GPUs and the limit with where it comes from",
    kept="everything; no job starts")
@pytest.mark.parametrize("settings, extra, message", [
    ({"training": {"processes": 3}}, (), "config training.processes: 3 GPUs for one job, but this machine's GPUs"),
    ({"variants": {"wide": {"training": {"processes": 4}}}}, (),
     "config variants.wide.training.processes: 4 GPUs for one job"),
    ({"training": {"processes": 2}}, ("--resources", "gpu=1"),
     "config training.processes: 2 GPUs for one job, but --resources gpu=1 allow(s) 1 at once"),
])
def test_a_gpu_job_larger_than_the_workstation_stops_planning(tmp_path, two_gpus, settings, extra, message):
    def edit(config):
        config["resources"] = {"gpu_rules": True}
        for section, values in settings.items():
            config.setdefault(section, {}).update(values) if section == "training" else config.update({section: values})

    config = write_config(tmp_path, edit)
    output = assert_clean_stop(dry_run(tmp_path, "--configfile", str(config), *extra, env=two_gpus))
    assert message in output


@pytest.mark.parametrize("visible, listed, count", [
    (None, None, 0),  # no GPU tools: a CPU machine
    (None, 4, 4),
    ("0,1", None, 2),
    ("2,0", 4, 2),
    ("0,1,2", 1, 1),  # no more than the machine has
    ("", 4, 0),
    ("-1", 4, 0),
    ("1,-1,0", 4, 1),  # CUDA stops reading at the first invalid entry
    ("GPU-a1b2,GPU-c3d4", 2, 2),
])
def test_machine_gpus_reads_cuda_visible_devices_and_nvidia_smi(monkeypatch, visible, listed, count):
    monkeypatch.setattr(devices, "_listed_gpus", lambda: listed)
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert devices.machine_gpus(environ) == count
