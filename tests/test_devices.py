"""No silent CPU fallback: under resources.gpu_rules the GPU stages stop at once without a CUDA device; on a CPU
run they go on and say so once. The test machines have no GPU, so CUDA is never visible here."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import warnings

import pytest
import torch
import yaml

from advdistill import devices
from advdistill.errors import DeviceError
from tests.helpers import REPO, files_under, run_cli

STAGE_ARGUMENTS = {
    "sample": ("--rows", "rows.parquet", "--out", "out/samples.parquet"),
    "train": ("--rows", "rows.parquet", "--scored", "scored.parquet", "--objective", "sft", "--out", "out/model"),
    "evaluate": ("--rows", "rows.parquet", "--out", "out/responses.parquet", "--metrics", "out/metrics.json"),
}


def stage_argv(stage: str, folder) -> list[str]:
    """The stage's arguments with every input an empty file: the device check comes before anything is read, and
    the model is a hub id nobody has, so a stage that went on to load it would fail differently."""
    argv = [stage, "--model", "nobody/no-such-model", "--device", "cuda"]
    for option, value in zip(STAGE_ARGUMENTS[stage][::2], STAGE_ARGUMENTS[stage][1::2]):
        if option in ("--rows", "--scored"):
            (folder / value).touch()
        argv += [option, str(folder / value) if "/" in value or value.endswith(".parquet") else value]
    return argv


@pytest.mark.failure_mode(
    "a GPU job (resources.gpu_rules: true) that sees no CUDA device (no GPU granted, apptainer without --nv, "
    "a driver too old for torch's CUDA)",
    sees="sample, train and evaluate stop at once (exit 2) with one line naming the visible device count, "
         "CUDA_VISIBLE_DEVICES, the driver and torch's CUDA versions; no CPU fallback",
    kept="everything; no model is loaded and nothing is written")
@pytest.mark.parametrize("stage", sorted(STAGE_ARGUMENTS))
def test_gpu_stage_without_cuda_stops_at_once(capsys, monkeypatch, tmp_path, stage):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    argv = stage_argv(stage, tmp_path)
    before = files_under(tmp_path)
    code, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"advdistill {stage}: error: resources.gpu_rules is true (--device cuda) but the {stage} "
                          f"stage sees no CUDA device (0 CUDA device(s) visible, CUDA_VISIBLE_DEVICES='0', "
                          f"NVIDIA driver ")
    cuda = torch.version.cuda or "no CUDA (a CPU-only build)"
    assert f"torch {torch.__version__} built for " in err and cuda in err
    assert "it will not fall back to the CPU" in err and "resources.gpu_rules: false" in err
    assert files_under(tmp_path) == before


def test_the_message_names_the_driver_and_torch_s_reason(monkeypatch, tmp_path):
    """The driver from nvidia-smi where there is one, and torch's warning (here: a driver too old)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 470.57.02\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def old_driver() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).\n"
                      "Please update your GPU driver", UserWarning, stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", old_driver)
    assert devices.driver_version() == "470.57.02"
    with pytest.raises(DeviceError) as caught:
        devices.require_cuda("train")
    message = str(caught.value)
    assert "CUDA_VISIBLE_DEVICES=unset, NVIDIA driver 470.57.02, torch " in message
    assert ("torch says: CUDA initialization: The NVIDIA driver on your system is too old (found version 11040). "
            "Please update your GPU driver)") in message


def test_driver_version_is_unknown_without_nvidia_smi_or_the_kernel_module(monkeypatch, tmp_path):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(devices, "NVIDIA_PROC_VERSION", tmp_path / "no-such-file")
    assert devices.driver_version() == "unknown"


def test_cpu_run_goes_on_and_logs_the_fallback_once(caplog):
    devices._log_cpu_fallback.cache_clear()
    with caplog.at_level(logging.INFO, logger="advdistill.devices"):
        devices.check_device("evaluate")
        devices.check_device("evaluate", "auto")
    assert [r.getMessage() for r in caplog.records] == ["no CUDA device: running on CPU (the evaluate stage)"]


def test_cpu_sample_stage_runs_as_before(capsys, caplog, tmp_path, tiny_model_dir, rows_file):
    devices._log_cpu_fallback.cache_clear()
    settings = json.dumps({"n_samples": 2, "max_new_tokens": 4, "batch_size": 2, "shard_size": 2, "max_prompts": 2})
    with caplog.at_level(logging.INFO, logger="advdistill.devices"):
        code, err = run_cli(capsys, "sample", "--model", tiny_model_dir, "--rows", rows_file, "--settings", settings,
                            "--device", "auto", "--out", tmp_path / "samples.parquet")
    assert code == 0, err
    assert (tmp_path / "samples.parquet").is_file()
    assert "no CUDA device: running on CPU (the sample stage)" in caplog.messages


@pytest.mark.parametrize("gpu_rules", [True, False])
def test_the_rules_pass_device_cuda_exactly_under_gpu_rules(tmp_path, gpu_rules):
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump({"resources": {"gpu_rules": gpu_rules}}))
    done = subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "--dry-run", "--printshellcmds", "--configfile",
                           str(REPO / ".test" / "config_basic.yaml"), str(tmp_path / "gpu.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    command = r"^Shell command: (?:advdistill|accelerate launch .* -m advdistill\.cli) (sample|train|evaluate) (.*)$"
    commands = re.findall(command, done.stdout + done.stderr, re.MULTILINE)
    assert {stage for stage, _ in commands} == {"sample", "train", "evaluate"}
    expected = "--device cuda" if gpu_rules else "--device auto"
    assert all(expected in arguments for _, arguments in commands), commands


@pytest.mark.failure_mode(
    "sampling/evaluation backend vllm where vllm is not installed, or training.loss.backend cpp/triton where it "
    "cannot run",
    sees="one line naming the key and why, exit 2, before any model is loaded",
    kept="everything")
@pytest.mark.parametrize(("stage", "settings", "message"), [
    ("sample", {"backend": "vllm"}, "config sampling.backend: vllm is not installed in this environment"),
    ("evaluate", {"backend": "vllm"}, "config evaluation.backend: vllm is not installed in this environment"),
    ("train", {"loss": {"backend": "triton"}}, "config training.loss.backend: backend 'triton' is unavailable"),
])
def test_a_backend_that_cannot_run_here_stops_the_stage_first(capsys, tmp_path, monkeypatch, stage, settings,
                                                              message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(devices, "importable", lambda module: module != "vllm")
    for name in ("rows.parquet", "scored.parquet"):
        (tmp_path / name).write_text("")
    argv = [arg for arg in stage_argv(stage, tmp_path) if arg not in ("--device", "cuda")]
    code, err = run_cli(capsys, *argv, "--settings", json.dumps(settings))
    assert code == 2 and "Traceback" not in err
    assert message in err and files_under(tmp_path) == {"rows.parquet", "scored.parquet"}


def test_auto_loss_backend_says_when_it_falls_back_to_torch(monkeypatch, caplog):
    from advdistill_kernels import api, backends

    api._log_auto_fallback.cache_clear()
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device: "no C++ compiler (simulated)")
    with caplog.at_level(logging.WARNING, logger="advdistill_kernels.api"):
        assert api.resolve_backend("auto", torch.device("cpu")) == "torch"
        assert api.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert caplog.text.count("loss backend auto: cpp is unavailable (no C++ compiler (simulated)); using the "
                             "torch backend") == 1
    api._log_auto_fallback.cache_clear()


@pytest.mark.parametrize("flags, hidden_size, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, 896, "bf16-mixed"),  # an AVX-512-BF16 EPYC, a Qwen2.5-0.5B-wide student
    ({"avx512_bf16", "amx_tile", "amx_bf16"}, 1536, "bf16-mixed"),  # an AMX Xeon
    ({"amx_bf16"}, 128, "fp32"),  # the default's student: slower in bf16-mixed on the AMX Xeon
    ({"avx512_bf16"}, 895, "fp32"),
    ({"avx2", "avx512f", "fma"}, 896, "fp32"),  # no bfloat16 dot products
    (set(), 4096, "fp32"),
])
def test_auto_precision_on_a_cpu_is_bf16_mixed_only_for_wide_students_on_bf16_cpus(flags, hidden_size, expected):
    assert devices.cpu_training_precision(hidden_size, frozenset(flags)) == expected


def test_cpu_flags_are_the_first_processor_s(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert devices.cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert devices.cpu_flags(tmp_path / "missing") == frozenset()


def test_training_precision_auto_follows_the_cpu_rule_on_a_cpu(monkeypatch):
    from advdistill.training.student import resolve_precision

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert resolve_precision("auto", 896) == "bf16-mixed"
    assert resolve_precision("auto", 128) == "fp32"
    for explicit in ("fp32", "bf16-mixed", "bf16-pure"):
        assert resolve_precision(explicit, 128) == explicit
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_precision("auto", 896) == "fp32"
