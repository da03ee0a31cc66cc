"""Dress rehearsal of every paper configuration: the whole DAG, for real, on a CPU, in seconds per stage.

Each ``config/paper/*.yaml`` is rehearsed as ``make rehearse`` rehearses it, through :mod:`advdistill.rehearsal`
(the same stand-ins, sizes, overrides file and Snakemake command), in a copy of the repository; a 3-response
ablation reruns in its full configuration's copy and must leave that run's folder as it was. The datasets come from
local copies, as from a user's offline file: each hub id's official file in ``../shared/data``, or, where that is
absent (a user's clone), a small fixture in the official layout (``tests/fixtures/datasets``). The GPU plan of the
paper configs is checked in ``tests/test_memory_plan.py``.

Everything else (responses per prompt, temperature, rewards, learning rate, lambda, tau, precision, few-shot
turns) is the paper's, so a paper configuration that cannot run fails here. Run with ``pytest -k rehearsal -s``
to see the wall time of each configuration. The checks of the rehearsal's folder (another run's results, links at
the files it writes) run on stand-ins that cost nothing, and are not slow.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from advdistill import rehearsal
from advdistill.errors import ConfigError
from advdistill.runs import write_record
from tests.helpers import PAPER_CONFIGS, REPO, SHARED_DATA, copy_workflow, file_stamps

FIXTURES = REPO / "tests" / "fixtures" / "datasets"
# Dataset hub id -> official file(s) in ../shared/data, and -> fixture in the official layout.
SHARED_FILES = {
    "openai/gsm8k": {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"},
    "qtli/GSM-Plus": "gsm_plus_testmini.jsonl",
    "TIGER-AI-Lab/MMLU-Pro": "mmlu_pro_test.jsonl",
}
FIXTURE_FILES = {
    "openai/gsm8k": {"train": "gsm8k.jsonl", "test": "gsm8k_test.jsonl"},
    "qtli/GSM-Plus": "gsm_plus.jsonl",
    "TIGER-AI-Lab/MMLU-Pro": "mmlu_pro.jsonl",
    "knoveleng/open-s1": "open_s1.jsonl",
    "knoveleng/open-rs": "open_rs.jsonl",
}


def dataset_file(hub_id: str) -> str | dict[str, str]:
    """The official release file(s) where ../shared/data has them, else the fixture."""
    shared = SHARED_FILES.get(hub_id)
    names = list(shared.values()) if isinstance(shared, dict) else [shared] if shared else []
    folder, files = SHARED_DATA, shared
    if not names or not all((SHARED_DATA / name).is_file() for name in names):
        folder, files = FIXTURES, FIXTURE_FILES[hub_id]
    if isinstance(files, dict):
        return {split: str(folder / name) for split, name in files.items()}
    return str(folder / files)


def planned_outputs(paper: dict) -> tuple[list[Path], list[Path]]:
    """The trained student folders and evaluation metrics files that the configuration plans."""
    students = [(s["name"], objective) for s in paper["students"] for objective in s["objectives"]]
    models = [paper["teacher"]["name"], *(f"{s['name']}-base" for s in paper["students"]),
              *(f"{name}-{objective}" for name, objective in students)]
    run = Path("results", rehearsal.rehearsal_name(paper))
    trained = [run / "train" / train_set / f"{name}-{objective}"
               for train_set in paper["experiments"] for name, objective in students]
    metrics = [run / "evaluate" / train_set / model / testset / "metrics.json"
               for train_set, experiment in paper["experiments"].items()
               for model in models for testset in experiment["testsets"]]
    return trained, metrics


@pytest.fixture(scope="session")
def workdirs(tmp_path_factory):
    """One copy of the workflow per training set: a 3-response ablation runs in the checkout its full
    configuration ran in (when that ran first), as a user runs one configuration after the other."""
    made: dict[str, Path] = {}

    def workdir(train_set: str) -> Path:
        if train_set not in made:
            made[train_set] = copy_workflow(tmp_path_factory.mktemp(f"rehearsal-{train_set}"))
        return made[train_set]

    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("paper_config", PAPER_CONFIGS, ids=lambda path: path.stem)
def test_rehearsal_of_paper_config(paper_config, workdirs, monkeypatch, record_property):
    paper = rehearsal.read_config(paper_config)
    datasets = {spec["source"]: dataset_file(spec["source"]) for spec in paper["datasets"].values()}
    (train_set,) = paper["experiments"]
    workdir = workdirs(train_set)
    config_file = paper_config.relative_to(REPO)
    trained, metrics_files = planned_outputs(paper)
    earlier = {folder: file_stamps(folder) for folder in (workdir / "results").glob("*")}

    monkeypatch.chdir(workdir)
    started = time.monotonic()
    overrides = rehearsal.prepare_rehearsal(config_file, datasets)
    built = time.monotonic()
    result = subprocess.run(rehearsal.snakemake_command(config_file, overrides, "2"), cwd=workdir,
                            capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - built
    record_property("wall_s", round(wall, 1))
    fixtures = sorted(hub_id for hub_id, source in datasets.items() if str(FIXTURES) in str(source))
    print(f"\nrehearsal {paper_config.stem}: {wall:.1f} s of snakemake after {built - started:.1f} s of stand-ins, "
          f"fixtures for {', '.join(fixtures) or 'no dataset'}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for folder, stamps in earlier.items():  # the full configuration's run, when it ran first: not one file written
        assert file_stamps(folder) == stamps, folder

    run = workdir / "results" / rehearsal.rehearsal_name(paper)
    assert (run / "report/index.html").stat().st_size > 0
    for train_set in paper["experiments"]:
        assert json.loads((run / f"score/{train_set}/summary.json").read_text())["groups_kept"] > 0
    for folder in trained:
        assert {"config.json", "model.safetensors", "tokenizer.json", "train_metrics.json"} <= {
            p.name for p in (workdir / folder).iterdir()}, folder
    base_models = {paper["teacher"]["name"], *(f"{s['name']}-base" for s in paper["students"])}
    requested = paper["evaluation"]["base_few_shot"]
    for path in metrics_files:
        metrics = json.loads((workdir / path).read_text())
        train_set, model = path.parts[3:5]
        if model in base_models:  # few-shot where the training split has enough worked solutions (not MMLU-PRO)
            rows = pl.read_parquet(run / "prepare" / train_set / "train.parquet")
            expected = requested if (rows["solution"] != "").sum() >= requested else 0
            assert (metrics["few_shot"], metrics["few_shot_requested"]) == (expected, requested), path
            assert ("few_shot_note" in metrics) == (expected < requested), path
        else:
            assert metrics["few_shot"] == paper["prompt"]["few_shot"], path
    paper_accuracy = pl.read_csv(run / "report/paper_accuracy.csv")
    assert paper_accuracy.height == sum(map(len, paper["paper_reference"]["accuracy"].values()))
    assert paper_accuracy["reproduced"].null_count() == 0  # every model the paper reports was evaluated here


GSM8K = REPO / "config" / "paper" / "gsm8k.yaml"


@pytest.fixture
def no_standins(monkeypatch):
    """Stand-ins that cost nothing to build: these tests are about the rehearsal's folder."""
    monkeypatch.setattr(rehearsal, "build_standins", lambda config, rows, folder: {})
    monkeypatch.setattr(rehearsal, "training_rows", lambda config, datasets: [])


def test_rehearsal_refuses_the_folder_of_a_real_run_of_that_name(tmp_path, monkeypatch, no_standins):
    monkeypatch.chdir(tmp_path)
    paper = rehearsal.read_config(GSM8K)
    (tmp_path / "mine.yaml").write_text("")
    record = write_record({**paper, "run_name": "gsm8k-rehearsal"}, [tmp_path / "mine.yaml"])  # a real run
    stamps = file_stamps(tmp_path / "results")
    with pytest.raises(ConfigError, match=r"config run_name: results/gsm8k-rehearsal holds the results of another "
                                          r"run \(results/gsm8k-rehearsal/run.json: config files mine.yaml\)"):
        rehearsal.prepare_rehearsal(GSM8K)
    assert file_stamps(tmp_path / "results") == stamps and record.is_file()


def test_rehearsal_reruns_in_its_own_folder_and_writes_through_no_link(tmp_path, monkeypatch, no_standins):
    monkeypatch.chdir(tmp_path)
    paper = rehearsal.read_config(GSM8K)
    overrides = Path("results", "gsm8k-rehearsal", "rehearsal.yaml")
    write_record({**paper, "run_name": "gsm8k-rehearsal"}, [GSM8K, overrides])  # an earlier rehearsal's record
    victim = tmp_path / "victim.yaml"
    victim.write_text("the user's own file\n")
    overrides.symlink_to(victim)
    assert rehearsal.prepare_rehearsal(GSM8K) == overrides
    assert victim.read_text() == "the user's own file\n"
    assert not overrides.is_symlink() and yaml.safe_load(overrides.read_text())["run_name"] == "gsm8k-rehearsal"


def test_standin_key_is_written_through_no_link(tmp_path, monkeypatch):
    from advdistill import standin

    monkeypatch.setattr(standin, "standin_tokenizer", lambda rows: None)
    monkeypatch.setattr(standin, "build_standin", lambda like, tokenizer, rows, prompt, seed, out: out.mkdir())
    paper = rehearsal.read_config(GSM8K)
    folder = tmp_path / "standins"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    (folder / "key.txt").symlink_to(victim)
    rehearsal.build_standins(paper, [[]], folder)
    assert victim.read_text() == "the user's own file\n"
    assert not (folder / "key.txt").is_symlink()
    assert (folder / "key.txt").read_text() == rehearsal.standin_key(paper, [[]])
