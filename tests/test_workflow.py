"""Workflow tests: the tiny configuration run end to end, then dry-runs that assert what reruns.

The repository is copied (workflow, package sources, kernels) so that a test can edit a package
module and see the code-version parameter change; jobs themselves run the installed package.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, copy_workflow, snakemake

pytestmark = pytest.mark.slow

CONFIG = REPO / ".test" / "config_basic.yaml"
TRAINED = {"train": 2, "evaluate": 4, "report": 1, "all": 1}


def planned_jobs(workdir: Path, configfile: Path) -> dict[str, int]:
    result = snakemake(workdir, "--dry-run", "--configfile", str(configfile))
    assert result.returncode == 0, result.stdout + result.stderr
    if "Nothing to be done" in result.stdout + result.stderr:
        return {}
    table = result.stdout.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def edited_config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    edit(config)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    result = snakemake(workdir, "--configfile", str(CONFIG))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def test_run_produces_the_report(finished_run):
    assert (finished_run / "results/report/index.html").stat().st_size > 0
    assert (finished_run / "results/report/accuracy.csv").read_text().startswith("model")
    manifest = yaml.safe_load((finished_run / "results/score/arith/scored.parquet.manifest.json").read_text())
    assert manifest["stage"] == "score" and manifest["settings"]["settings"]["min_correct"] == 0
    assert "Provenance" in (finished_run / "results/report/index.html").read_text()
    for rule in ("prepare", "sample", "score", "train", "evaluate", "report"):
        assert list((finished_run / "logs" / rule).rglob("*.log")), rule
        assert list((finished_run / "benchmarks" / rule).rglob("*.tsv")), rule


def test_unchanged_rerun_plans_nothing(finished_run):
    assert planned_jobs(finished_run, CONFIG) == {}


def test_training_hyperparameter_reruns_training_and_downstream_only(finished_run, tmp_path):
    config = edited_config(tmp_path, lambda c: c["training"]["optim"].update(learning_rate=2e-3))
    assert planned_jobs(finished_run, config) == TRAINED


def test_reward_constant_reruns_scoring_not_sampling(finished_run, tmp_path):
    config = edited_config(tmp_path, lambda c: c["score"]["cosine"].update(wrong_at_max=-1.0))
    assert planned_jobs(finished_run, config) == {"score": 1, **TRAINED}


def test_sampling_temperature_reruns_everything_from_sampling(finished_run, tmp_path):
    config = edited_config(tmp_path, lambda c: c["sampling"].update(temperature=0.7))
    assert planned_jobs(finished_run, config) == {"sample": 1, "merge_samples": 1, "score": 1, **TRAINED}


def test_reward_code_change_reruns_scoring_and_evaluation_not_sampling(finished_run):
    rewards = finished_run / "advdistill" / "rewards.py"
    original = rewards.read_text()
    try:
        rewards.write_text(original + "\n# a change to the reward code\n")
        # evaluation judges format with the reward code, so every model is re-evaluated
        assert planned_jobs(finished_run, CONFIG) == {"score": 1, "train": 2, "evaluate": 8, "report": 1, "all": 1}
    finally:
        rewards.write_text(original)


@pytest.mark.failure_mode(
    "mistyped or unknown config key",
    sees="the run stops before any job, naming the key",
    kept="every result of earlier runs")
def test_invalid_config_key_stops_before_any_job(finished_run, tmp_path):
    config = edited_config(tmp_path, lambda c: c["sampling"].update(temprature=0.7))
    result = snakemake(finished_run, "--dry-run", "--configfile", str(config))
    assert result.returncode != 0
    assert "temprature" in result.stdout + result.stderr


def test_rerun_after_a_training_edit_trains_a_new_model(finished_run, tmp_path):
    """A real rerun, in a copy of the finished run: the edited learning rate must give another model
    (the finished run's last checkpoint was once resumed, which trained nothing and saved the old model)."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    student = workdir / "results/train/arith/student-advdistill"
    before = hashlib.sha256((student / "model.safetensors").read_bytes()).hexdigest()
    config = edited_config(tmp_path, lambda c: c["training"]["optim"].update(learning_rate=2e-3))
    result = snakemake(workdir, "--configfile", str(config), "--until", "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert hashlib.sha256((student / "model.safetensors").read_bytes()).hexdigest() != before
    assert json.loads((student / "train_metrics.json").read_text())["resumed_from"] is None


SWEEP = {"report_name": "sweep", "seeds": [7, 8],
         "variants": {"lam0": {"objectives": ["advdistill"], "training": {"loss": {"lam": 0.0}}}}}


def test_adding_a_variant_or_a_seed_plans_only_its_own_jobs(finished_run, tmp_path):
    variant = edited_config(tmp_path, lambda c: c.update(variants=SWEEP["variants"]))
    assert planned_jobs(finished_run, variant) == {"train": 1, "evaluate": 2, "report": 1, "all": 1}
    seed = edited_config(tmp_path, lambda c: c.update(seeds=[7, 8]))
    assert planned_jobs(finished_run, seed) == {"train": 2, "evaluate": 4, "report": 1, "all": 1}


def test_a_sweep_reuses_the_run_and_reports_replicates(finished_run, tmp_path):
    """A real run, in a copy: two seeds and a variant train only their own models, under their own names, and
    the sweep's report (its own folder) summarises the seeds; the plain run's models are left as they were."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    plain = workdir / "results/train/arith/student-advdistill/model.safetensors"
    before = plain.stat().st_mtime_ns
    result = snakemake(workdir, "--configfile", str(edited_config(tmp_path, lambda c: c.update(SWEEP))))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert plain.stat().st_mtime_ns == before
    trained = sorted(p.name for p in (workdir / "results/train/arith").iterdir() if not p.name.startswith("."))
    assert [name for name in trained if not name.endswith(".manifest.json")] == [
        "student-advdistill", "student-advdistill@lam0", "student-advdistill@lam0@seed8", "student-advdistill@seed8",
        "student-sft", "student-sft@seed8"]
    settings = json.loads((workdir / "results/train/arith/student-advdistill@lam0@seed8.manifest.json").read_text())
    assert settings["seed"] == 8 and settings["settings"]["settings"]["loss"]["lam"] == 0.0
    replicates = (workdir / "results/sweep/replicates.csv").read_text().splitlines()
    assert replicates[0].startswith("testset,student,objective,variant,seeds,accuracy,lower,upper")
    assert sum(line.startswith("arith,student,advdistill,lam0,2,") for line in replicates) == 1
    assert (workdir / "results/report/index.html").stat().st_mtime_ns == (
        finished_run / "results/report/index.html").stat().st_mtime_ns
