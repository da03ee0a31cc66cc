"""The pipeline through a real single-node SLURM cluster (Debian's slurm-wlm + munge on localhost).

The cluster is started by scripts/slurm/start_cluster.sh (which installs the packages if needed)
and stopped at the end, also when a test fails. Skipped where packages cannot be installed, and where
/etc/slurm/slurm.conf belongs to a real installation that the test cluster must not replace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

CONFIG = REPO / ".test" / "config_basic.yaml"
PROFILE = REPO / ".test" / "slurm"
COMPARED = ["results/prepare/arith/train.parquet", "results/sample/arith/samples.parquet",
            "results/score/arith/scored.parquet"]


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or not (shutil.which("apt-get") or shutil.which("slurmctld")):
        pytest.skip("a local SLURM cluster needs root and apt-get to install slurm-wlm and munge")
    existing = Path("/etc/slurm/slurm.conf")
    if existing.exists() and "ClusterName=advdistill-test" not in existing.read_text():
        pytest.skip(f"{existing} belongs to another SLURM installation; the test cluster would overwrite it")
    started = subprocess.run(["bash", str(REPO / "scripts/slurm/start_cluster.sh")], capture_output=True,
                             text=True, timeout=900)
    try:
        if started.returncode != 0 and not shutil.which("slurmctld"):
            pytest.skip(f"slurm-wlm could not be installed: {started.stderr.strip()[-300:]}")
        assert started.returncode == 0, started.stdout + started.stderr
        yield
    finally:
        subprocess.run(["bash", str(REPO / "scripts/slurm/stop_cluster.sh")], timeout=120)


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), *args], cwd=workdir, capture_output=True,
                          text=True, timeout=900)


def test_slurm_run_equals_local_run(cluster, tmp_path):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    slurm.mkdir()
    run_local = snakemake(local, "--cores", "2", "--configfile", str(CONFIG), "--until", "score")
    assert run_local.returncode == 0, run_local.stderr[-3000:]
    run_slurm = snakemake(slurm, "--workflow-profile", str(PROFILE), "--configfile", str(CONFIG), "--until", "score")
    assert run_slurm.returncode == 0, run_slurm.stderr[-3000:]
    assert "has been submitted with SLURM jobid" in run_slurm.stdout + run_slurm.stderr
    for path in COMPARED:
        assert pl.read_parquet(local / path).equals(pl.read_parquet(slurm / path)), path


def test_failing_slurm_job_is_reported_and_finished_outputs_are_kept(cluster, tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config["datasets"]["arith_ood"]["options"]["variant"] = "no-such-variant"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--workflow-profile", str(PROFILE), "--configfile", str(tmp_path / "broken.yaml"),
                       "--keep-going", "results/prepare/arith/test.parquet", "results/prepare/arith_ood/test.parquet")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error in rule prepare" in output and "arith_ood" in output
    assert (tmp_path / "results/prepare/arith/test.parquet").exists()
    assert not (tmp_path / "results/prepare/arith_ood/test.parquet").exists()
    assert "unknown variant 'no-such-variant'" in (tmp_path / "logs/prepare/arith_ood/test.log").read_text()
