"""The SLURM profile: its plan previewed on a machine without Apptainer or images, ``--profile`` refused where the
workstation profile would override it, and the pipeline through a real single-node SLURM cluster (Debian's
slurm-wlm + munge on localhost).

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
from snakemake.cli import parse_args

from advdistill.errors import ConfigError
from advdistill.planning import check_profile_options, image_build_commands
from tests.helpers import ONE_THREAD, REPO, assert_clean_stop, copy_workflow

pytestmark = pytest.mark.slow

CONFIG = REPO / ".test" / "config_basic.yaml"
PROFILE = REPO / ".test" / "slurm"
COMPARED = ["results/test_basic/prepare/arith/train.parquet", "results/test_basic/sample/arith/samples.parquet",
            "results/test_basic/score/arith/scored.parquet"]
PAPER = "config/paper/gsm8k.yaml"
GPU_RULES = {"sample", "train", "evaluate"}


def dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "-n", *args], cwd=workdir, capture_output=True, text=True, timeout=300)


def planned_resources(output: str) -> list[tuple[str, dict[str, str]]]:
    """Each job of a dry run's printout: its rule and its resources."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", output, flags=re.MULTILINE)[1:]:
        found = re.search(r"^    resources: (.*)$", block, flags=re.MULTILINE)
        jobs.append((block.split(":")[0], dict(item.split("=", 1) for item in found.group(1).split(", "))))
    return jobs


def test_the_cluster_plan_is_previewed_without_apptainer_or_images(tmp_path):
    """On a login node without Apptainer or the .sif images, the dry run of a paper config lists every job with what
    it will ask SLURM for, and says what a run lacks."""
    workdir = copy_workflow(tmp_path / "repo")
    result = dry_run(workdir, "--workflow-profile", "profiles/slurm", "--configfile", PAPER)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = planned_resources(result.stdout)
    assert sorted({rule for rule, _ in jobs}) == ["all", "evaluate", "merge_samples", "prepare", "report", "sample",
                                                 "score", "train"]
    assert len(jobs) == 23
    for rule, resources in jobs:
        assert {"slurm_partition", "mem_mb", "runtime"} <= set(resources), rule
        assert (resources["slurm_partition"], resources.get("gpu")) == (("gpu", "1") if rule in GPU_RULES
                                                                         else ("cpu", None)), rule
    train = dict(jobs)["train"]
    assert (train["mem_mb"], train["runtime"], train["cpus_per_task"]) == ("128000", "2880", "8")
    if not (shutil.which("apptainer") or shutil.which("singularity")):
        assert "Apptainer is not installed here: this dry run plans the jobs without their images" in output
    for kind in ("cpu", "gpu"):  # both images are missing in the copy: named, with the commands that build them
        for command in image_build_commands(kind, f"containers/advdistill-{kind}_0.1.0.sif"):
            assert command in output, command
    assert "This dry run goes on; a run would stop here." in output


def test_the_workflow_profile_gives_the_cluster_settings(monkeypatch):
    """--workflow-profile profiles/slurm takes the place of profiles/default; --profile would be merged with it, and
    the workstation's values would win (Snakemake's own rule, which planning refuses below)."""
    monkeypatch.chdir(REPO)
    _, args = parse_args(["--workflow-profile", "profiles/slurm", "-n", "--configfile", PAPER])
    assert (args.executor, args.keep_going, args.apptainer_args) == ("slurm", True, "--nv --cleanenv")
    _, merged = parse_args(["--profile", "profiles/slurm", "-n", "--configfile", PAPER])
    assert (merged.executor, merged.keep_going, merged.apptainer_args) == ("slurm", False, "--nv")


@pytest.mark.failure_mode(
    "--profile profiles/slurm (or a site's own --profile, SNAKEMAKE_PROFILE) where the workstation profile "
    "profiles/default, which Snakemake loads beside it and lets win, would replace its values",
    sees="planning stops naming the keys the workstation profile would replace (keep-going, apptainer-args) and "
         "the two ways out: --workflow-profile <profile>, or --workflow-profile none",
    kept="everything; no job is submitted")
def test_a_profile_the_workstation_profile_would_override_is_refused(tmp_path):
    workdir = copy_workflow(tmp_path / "repo")
    output = assert_clean_stop(dry_run(workdir, "--profile", "profiles/slurm", "--configfile", PAPER))
    assert ("--profile profiles/slurm: Snakemake also loads this workflow's profile profiles/default (the "
            "workstation's) and lets it win key by key, so this run would take keep-going: false over true; "
            'apptainer-args: "--nv" over "--nv --cleanenv". Give the profile as --workflow-profile profiles/slurm, '
            "which replaces profiles/default, or add --workflow-profile none to use --profile alone") in output

    site = tmp_path / "site"  # a site's own profile, given by the environment
    site.mkdir()
    (site / "config.yaml").write_text("executor: slurm\nkeep-going: true\n")
    default = REPO / "profiles" / "default"
    with pytest.raises(ConfigError, match=r"^--profile .*/site: .* keep-going: false over true\. Give"):
        check_profile_options(["snakemake", "-n"], {"SNAKEMAKE_PROFILE": str(site)}, default)
    check_profile_options(["snakemake", "--workflow-profile", "none"], {"SNAKEMAKE_PROFILE": str(site)}, default)
    (site / "config.yaml").write_text("executor: slurm\njobs: 10\n")  # keys of its own only: nothing replaced
    check_profile_options(["snakemake", f"--profile={site}"], {}, default)


def free_ports(count: int) -> list[str]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [str(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_the_cluster_starts_only_in_an_empty_folder(tmp_path):
    """stop_cluster.sh purges the packages DIR/installed-packages lists (as root): a folder of an earlier start, or
    anyone's, would make it purge packages this start did not install."""
    (tmp_path / "installed-packages").write_text("slurm-wlm\n")
    started = subprocess.run(["bash", str(REPO / "scripts/slurm/start_cluster.sh"), str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 1 and f"{tmp_path} is not empty" in started.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["installed-packages"]


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
