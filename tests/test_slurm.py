"""The pipeline through a real single-node SLURM cluster (Debian's slurm-wlm + munge on localhost).

The cluster is private to the test: scripts/slurm/start_cluster.sh keeps its slurm.conf, state, spool, logs
and its own munge daemon (key, socket) in a temporary folder, on free ports, and every Slurm command here finds
it through SLURM_CONF (its jobs, through a mount namespace of slurmd's own); nothing under /etc or /var is
written. It is stopped at the end, also when a test fails, and packages the script had to install are purged
again (a warning says so), so the machine is left as it was. Skipped where packages cannot be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
import yaml

from tests.helpers import ONE_THREAD, REPO

pytestmark = pytest.mark.slow

CONFIG = REPO / ".test" / "config_basic.yaml"
PROFILE = REPO / ".test" / "slurm"
COMPARED = ["results/test_basic/prepare/arith/train.parquet", "results/test_basic/sample/arith/samples.parquet",
            "results/test_basic/score/arith/scored.parquet"]


def free_ports(count: int) -> list[str]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [str(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The private cluster: its folder, the environment of its commands (SLURM_CONF points into the folder), and
    the machine's own /etc/slurm/slurm.conf before it started (None if there was none)."""
    if os.geteuid() != 0 or not (shutil.which("apt-get") or shutil.which("slurmctld")):
        pytest.skip("a local SLURM cluster needs root and apt-get to install slurm-wlm and munge")
    home = tmp_path_factory.mktemp("slurm")
    machine_conf = Path("/etc/slurm/slurm.conf")
    before = machine_conf.read_bytes() if machine_conf.exists() else None
    started = subprocess.run(["bash", str(REPO / "scripts/slurm/start_cluster.sh"), str(home), *free_ports(2)],
                             capture_output=True, text=True, timeout=900)
    try:
        if started.returncode != 0 and not shutil.which("slurmctld"):
            pytest.skip(f"slurm-wlm could not be installed: {started.stderr.strip()[-300:]}")
        assert started.returncode == 0, started.stdout + started.stderr
        yield SimpleNamespace(home=home, env={**os.environ, "SLURM_CONF": str(home / "etc" / "slurm.conf")},
                              machine_conf_before=before)
    finally:
        stopped = subprocess.run(["bash", str(REPO / "scripts/slurm/stop_cluster.sh"), str(home)],
                                 capture_output=True, text=True, timeout=600)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        if (home / "installed-packages").exists():
            warnings.warn(f"the SLURM test apt-installed slurm-wlm and munge for its cluster: {stopped.stdout.strip()}",
                          stacklevel=1)


def snakemake(workdir: Path, cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), *ONE_THREAD, *args], cwd=workdir,
                          capture_output=True, text=True, timeout=900, env=cluster.env)


def test_cluster_is_private(cluster):
    """Its configuration, state, logs and munge socket are in its folder; the machine's /etc/slurm is untouched."""
    home = cluster.home
    conf = (home / "etc" / "slurm.conf").read_text()
    assert f"AuthInfo=socket={home}/munge/socket" in conf and f"StateSaveLocation={home}/state" in conf
    paths = [value for line in conf.splitlines() for value in re.findall(r"=(/\S+)", line)]
    assert paths and all(path.startswith(str(home)) for path in paths), paths
    machine_conf = Path("/etc/slurm/slurm.conf")
    assert (machine_conf.read_bytes() if machine_conf.exists() else None) == cluster.machine_conf_before
    done = subprocess.run(["scontrol", "show", "config"], env=cluster.env, capture_output=True, text=True, timeout=30)
    assert re.search(rf"SLURM_CONF\s*=\s*{home}/etc/slurm.conf", done.stdout), done.stdout[-2000:]


def test_slurm_run_equals_local_run(cluster, tmp_path):
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    slurm.mkdir()
    run_local = snakemake(local, cluster, "--cores", "2", "--configfile", str(CONFIG), "--until", "score")
    assert run_local.returncode == 0, run_local.stderr[-3000:]
    run_slurm = snakemake(slurm, cluster, "--workflow-profile", str(PROFILE), "--configfile", str(CONFIG),
                          "--until", "score")
    assert run_slurm.returncode == 0, run_slurm.stderr[-3000:]
    assert "has been submitted with SLURM jobid" in run_slurm.stdout + run_slurm.stderr
    for path in COMPARED:
        assert pl.read_parquet(local / path).equals(pl.read_parquet(slurm / path)), path


@pytest.mark.failure_mode(
    "a SLURM job fails",
    sees="'Error in rule' naming the job; its log names the cause",
    kept="outputs of the jobs that finished")
def test_failing_slurm_job_is_reported_and_finished_outputs_are_kept(cluster, tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config["datasets"]["arith_ood"]["options"]["variant"] = "no-such-variant"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, cluster, "--workflow-profile", str(PROFILE), "--configfile",
                       str(tmp_path / "broken.yaml"), "--keep-going", "results/test_basic/prepare/arith/test.parquet",
                       "results/test_basic/prepare/arith_ood/test.parquet")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error in rule prepare" in output and "arith_ood" in output
    assert (tmp_path / "results/test_basic/prepare/arith/test.parquet").exists()
    assert not (tmp_path / "results/test_basic/prepare/arith_ood/test.parquet").exists()
    assert "options.variant: expected in_distribution, ood or mixed, got 'no-such-variant'" in (
        tmp_path / "results/test_basic/logs/prepare/arith_ood/test.log").read_text()
