"""Workflow tests: the tiny configuration run end to end, then dry-runs that assert what reruns.

The repository is copied (workflow, package sources, kernels) so that a test can edit a package
module and see the code-version parameter change; jobs themselves run the installed package.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, assert_clean_stop, copy_workflow, file_stamps, snakemake

pytestmark = pytest.mark.slow

CONFIG = REPO / ".test" / "config_basic.yaml"
RUN = "results/test_basic"
TRAINED = {"train": 2, "evaluate": 4, "report": 1, "all": 1}


def planned_jobs(workdir: Path, *configfiles: str) -> dict[str, int]:
    result = snakemake(workdir, "--dry-run", "--configfile", *(configfiles or ["config_basic.yaml"]))
    assert result.returncode == 0, result.stdout + result.stderr
    if "Nothing to be done" in result.stdout + result.stderr:
        return {}
    table = result.stdout.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@contextmanager
def edited_config(workdir: Path, edit) -> Iterator[None]:
    """The run's own config file edited in place, as a user edits theirs (another file with the same run_name
    and other settings would be refused as another run's), and restored afterwards."""
    path = workdir / "config_basic.yaml"
    original = path.read_text()
    config = yaml.safe_load(original)
    edit(config)
    path.write_text(yaml.safe_dump(config))
    try:
        yield
    finally:
        path.write_text(original)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    shutil.copy2(CONFIG, workdir / "config_basic.yaml")
    result = snakemake(workdir, "--configfile", "config_basic.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def test_run_produces_the_report(finished_run):
    run = finished_run / RUN
    assert (run / "report/index.html").stat().st_size > 0
    assert (run / "report/accuracy.csv").read_text().startswith("model")
    manifest = yaml.safe_load((run / "score/arith/scored.parquet.manifest.json").read_text())
    assert manifest["stage"] == "score" and manifest["settings"]["settings"]["min_correct"] == 0
    assert "Provenance" in (run / "report/index.html").read_text()
    for rule in ("prepare", "sample", "score", "train", "evaluate"):
        assert list((run / "logs" / rule).rglob("*.log")), rule
        assert list((run / "benchmarks" / rule).rglob("*.tsv")), rule
    assert (run / "logs/report.log").is_file() and (run / "benchmarks/report.tsv").is_file()
    assert sorted(p.name for p in (finished_run / "results").iterdir()) == ["test_basic"]
    assert not (finished_run / "logs").exists() and not (finished_run / "benchmarks").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["config_files"] == ["config_basic.yaml"] and record["config"]["run_name"] == "test_basic"
    costs = {row.split(",")[0]: int(row.split(",")[1]) for row in (run / "report/stage_costs.csv").read_text()
             .splitlines()[1:]}
    assert costs == {"prepare": 3, "bootstrap": 2, "sample": 2, "score": 1, "train": 2, "evaluate": 8}


def test_unchanged_rerun_plans_nothing(finished_run):
    assert planned_jobs(finished_run) == {}


def test_training_hyperparameter_reruns_training_and_downstream_only(finished_run):
    with edited_config(finished_run, lambda c: c["training"]["optim"].update(learning_rate=2e-3)):
        assert planned_jobs(finished_run) == TRAINED


def test_a_one_key_edit_is_the_rerun_reason_with_old_and_new_value(finished_run):
    """Snakemake's own reason prints the old and new training sections whole (advdistill/rerun_reasons.py)."""
    with edited_config(finished_run, lambda c: c["training"]["optim"].update(learning_rate=2e-3)):
        result = snakemake(finished_run, "--dry-run", "--configfile", "config_basic.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    reasons = re.findall(r"reason: Params have changed since last execution: ?((?:\n {8}\S.*)+)", output)
    lines = [reason.strip().split("\n") for reason in reasons]
    assert lines == [["training.optim.learning_rate: 0.001 -> 0.002"]] * 2  # the two trainings
    assert "Union of exclusive params" not in output


def test_reward_constant_reruns_scoring_not_sampling(finished_run):
    with edited_config(finished_run, lambda c: c["score"]["cosine"].update(wrong_at_max=-1.0)):
        assert planned_jobs(finished_run) == {"score": 1, **TRAINED}


def test_sampling_temperature_reruns_everything_from_sampling(finished_run):
    with edited_config(finished_run, lambda c: c["sampling"].update(temperature=0.7)):
        assert planned_jobs(finished_run) == {"sample": 1, "merge_samples": 1, "score": 1, **TRAINED}


def test_reward_code_change_reruns_scoring_and_evaluation_not_sampling(finished_run):
    rewards = finished_run / "advdistill" / "rewards.py"
    original = rewards.read_text()
    try:
        rewards.write_text(original + "\n# a change to the reward code\n")
        # evaluation judges format with the reward code, so every model is re-evaluated
        assert planned_jobs(finished_run) == {"score": 1, "train": 2, "evaluate": 8, "report": 1, "all": 1}
    finally:
        rewards.write_text(original)


@pytest.mark.failure_mode(
    "mistyped or unknown config key",
    sees="the run stops before any job, naming the key",
    kept="every result of earlier runs")
def test_invalid_config_key_stops_before_any_job(finished_run):
    with edited_config(finished_run, lambda c: c["sampling"].update(temprature=0.7)):
        result = snakemake(finished_run, "--dry-run", "--configfile", "config_basic.yaml")
    assert "config sampling.temprature: unknown key (known: backend," in assert_clean_stop(result)


@pytest.mark.failure_mode(
    "a second configuration that gives the run name of another and differs from it",
    sees="planning stops before any job, naming both runs' config files, the first key that differs and the way out",
    kept="every file of the other run")
def test_another_config_under_the_same_run_name_stops_at_planning(finished_run, tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config["sampling"]["temperature"] = 0.7
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    before = file_stamps(finished_run / RUN)
    result = snakemake(finished_run, "--configfile", str(other))
    assert result.returncode != 0
    assert ("config run_name: 'test_basic' is the run of other config files (config_basic.yaml; "
            "results/test_basic/run.json)") in result.stderr
    assert "differs from it in sampling.temperature" in result.stderr
    assert file_stamps(finished_run / RUN) == before
    config["sampling"]["temperature"] = 0.9  # the same configuration from another file is the same run: only the
    other.write_text(yaml.safe_dump(config))  # report, whose page names the config files, is written again
    assert planned_jobs(finished_run, str(other)) == {"report": 1, "all": 1}


def test_rerun_after_a_training_edit_trains_a_new_model(finished_run, tmp_path):
    """A real rerun, in a copy of the finished run: the edited learning rate must give another model
    (the finished run's last checkpoint was once resumed, which trained nothing and saved the old model)."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    student = workdir / RUN / "train/arith/student-advdistill"
    before = hashlib.sha256((student / "model.safetensors").read_bytes()).hexdigest()
    with edited_config(workdir, lambda c: c["training"]["optim"].update(learning_rate=2e-3)):
        result = snakemake(workdir, "--configfile", "config_basic.yaml", "--until", "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert hashlib.sha256((student / "model.safetensors").read_bytes()).hexdigest() != before
    assert json.loads((student / "train_metrics.json").read_text())["resumed_from"] is None


VARIANTS = {"lam0": {"objectives": ["advdistill"], "training": {"loss": {"lam": 0.0}}}}


def test_adding_a_variant_or_a_seed_plans_only_its_own_jobs(finished_run):
    with edited_config(finished_run, lambda c: c.update(variants=VARIANTS)):
        assert planned_jobs(finished_run) == {"train": 1, "evaluate": 2, "report": 1, "all": 1}
    with edited_config(finished_run, lambda c: c.update(seeds=[7, 8])):
        assert planned_jobs(finished_run) == {"train": 2, "evaluate": 4, "report": 1, "all": 1}


def test_a_sweep_builds_on_the_run_and_reports_replicates(finished_run, tmp_path):
    """A real run, in a copy: a sweep of its own name (two seeds, a variant) on top of the finished run reads its
    results up to scoring and its base models' evaluations, trains and evaluates only its own models under its own
    folder, and its report summarises the seeds; not one file of the finished run is written."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    (workdir / "sweep.yaml").write_text(yaml.safe_dump({"run_name": "sweep", "upstream_run": "test_basic",
                                                         "seeds": [7, 8], "variants": VARIANTS}))
    before = file_stamps(workdir / RUN)
    assert planned_jobs(workdir, "config_basic.yaml", "sweep.yaml") == {"train": 6, "evaluate": 12, "report": 1,
                                                                          "all": 1}
    result = snakemake(workdir, "--configfile", "config_basic.yaml", "sweep.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert file_stamps(workdir / RUN) == before
    sweep = workdir / "results/sweep"
    assert sorted(p.name for p in sweep.iterdir()) == ["benchmarks", "evaluate", "logs", "report", "run.json",
                                                       "trackers", "train"]
    assert not [p for p in (sweep / "trackers").rglob("*") if p.is_file()]  # report_to: none writes no tracker
    trained = sorted(p.name for p in (sweep / "train/arith").iterdir() if not p.name.startswith("."))
    assert [name for name in trained if not name.endswith(".manifest.json")] == [
        "student-advdistill", "student-advdistill@lam0", "student-advdistill@lam0@seed8", "student-advdistill@seed8",
        "student-sft", "student-sft@seed8"]
    settings = json.loads((sweep / "train/arith/student-advdistill@lam0@seed8.manifest.json").read_text())
    assert settings["seed"] == 8 and settings["settings"]["settings"]["loss"]["lam"] == 0.0
    assert "results/test_basic/score/arith/scored.parquet" in settings["inputs"]
    replicates = (sweep / "report/replicates.csv").read_text().splitlines()
    assert replicates[0].startswith("testset,student,objective,variant,seeds,accuracy,lower,upper")
    assert sum(line.startswith("arith,student,advdistill,lam0,2,") for line in replicates) == 1
    costs = (sweep / "report/stage_costs.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:2] for row in costs] == [["evaluate", "12"], ["train", "6"]]
    assert "teacher" in (sweep / "report/accuracy.csv").read_text()


def test_an_upstream_run_that_disagrees_stops_at_planning(finished_run, tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config.update(run_name="sweep", upstream_run="test_basic")
    config["score"]["min_correct"] = 1
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished_run, "--dry-run", "--configfile", str(tmp_path / "sweep.yaml"))
    assert result.returncode != 0
    assert ("config upstream_run: run 'test_basic' (config_basic.yaml) was made with another score.min_correct"
            in result.stdout + result.stderr)
    assert not (finished_run / "results/sweep").exists()
