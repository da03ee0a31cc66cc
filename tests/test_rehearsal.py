"""Dress rehearsal of every paper configuration: the whole DAG, for real, on a CPU, in seconds per stage.

Each ``config/paper/*.yaml`` runs as ``snakemake --cores 2 --configfile config/paper/X.yaml overrides.yaml``
in a copy of the repository; a 3-response ablation reruns in its full configuration's copy, which must keep the
teacher's evaluation. The overrides file changes sizes, sources and the CPU run only:

- ``local_sources`` maps the Qwen2.5 hub ids to stand-ins saved like the releases (:mod:`advdistill.standin`)
  and each dataset hub id to its official file in ``../shared/data``, or, where that is absent (a user's
  clone), to a small fixture in the official layout (``tests/fixtures/datasets``);
- prompt counts, token limits (the cosine ``max_length`` follows ``sampling.max_new_tokens``, as in the paper)
  and training steps;
- the sampling and evaluation backend is ``hf``: the paper's ``vllm`` is not installed in the main environment
  (it has a venv of its own, docs/vllm.md), and ``tests/test_vllm_backend.py`` checks that both backends agree.
- ``resources.gpu_rules: false``: under the paper's ``true`` the GPU stages refuse to run without CUDA
  (``advdistill/devices.py``); the GPU plan of the paper configs is checked in ``tests/test_memory_plan.py``.

Snakemake runs every job with one thread (``tests.helpers.ONE_THREAD``), two at a time: the stand-ins are too
small for two threads to help, and OpenMP threads that wait on a busy core are slower than one thread.

Everything else (responses per prompt, temperature, rewards, learning rate, lambda, tau, precision, few-shot
turns) is the paper's, so a paper configuration that cannot run fails here. Run with ``pytest -k rehearsal -s``
to see the wall time of each configuration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from advdistill.config import PromptConfig
from advdistill.datasets import get_adapter
from advdistill.datasets.base import normalise_split
from advdistill.standin import build_standin, standin_tokenizer
from tests.helpers import REPO, SHARED_DATA, copy_workflow, file_stamps, snakemake

pytestmark = pytest.mark.slow

PAPER_CONFIGS = sorted((REPO / "config" / "paper").glob("*.yaml"))
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
SAMPLED_PROMPTS = 4
SIZES = {
    "sampling": {"backend": "hf", "max_prompts": SAMPLED_PROMPTS, "max_new_tokens": 192},
    "score": {"cosine": {"max_length": 192}},
    "training": {"optim": {"max_steps": 2, "eval_steps": 1, "save_steps": 1}},
    "evaluation": {"backend": "hf", "max_prompts": 2, "max_new_tokens": 24},
    "resources": {"gpu_rules": False},
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


def build_standins(paper: dict, datasets: dict, folder: Path) -> dict[str, str]:
    """Model hub id -> stand-in folder: one tokenizer on the training rows, a teacher pretrained on the rows it
    will sample, untrained students."""
    (train_set,) = paper["experiments"]
    spec = paper["datasets"][train_set]
    source = datasets[spec["source"]]
    adapter = get_adapter(spec["adapter"], source["train"] if isinstance(source, dict) else source,
                          spec.get("options"))
    rows = normalise_split(adapter, "train", train_set)[0].to_dicts()
    tokenizer = standin_tokenizer(rows)
    for model in [paper["teacher"], *paper["students"]]:
        pretrain_rows = rows[:SAMPLED_PROMPTS] if model is paper["teacher"] else []
        build_standin(model["source"], tokenizer, pretrain_rows, PromptConfig(**paper["prompt"]), paper["seed"],
                      folder / model["name"])
    return {model["source"]: str(folder / model["name"]) for model in [paper["teacher"], *paper["students"]]}


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    """:func:`build_standins`, once per training set (the 3-response ablations share them)."""
    built: dict[str, dict[str, str]] = {}

    def build(paper: dict, datasets: dict) -> dict[str, str]:
        (train_set,) = paper["experiments"]
        if train_set not in built:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny models: one thread beats two that wait for a busy core
            try:
                built[train_set] = build_standins(paper, datasets, tmp_path_factory.mktemp(f"standins-{train_set}"))
            finally:
                torch.set_num_threads(threads)
        return built[train_set]

    return build


def planned_outputs(paper: dict) -> tuple[list[Path], list[Path]]:
    """The trained student folders and evaluation metrics files that the configuration plans."""
    students = [(s["name"], objective) for s in paper["students"] for objective in s["objectives"]]
    models = [paper["teacher"]["name"], *(f"{s['name']}-base" for s in paper["students"]),
              *(f"{name}-{objective}" for name, objective in students)]
    run = Path("results", paper["run_name"])
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


@pytest.mark.parametrize("paper_config", PAPER_CONFIGS, ids=lambda path: path.stem)
def test_rehearsal_of_paper_config(paper_config, standins, workdirs, tmp_path, record_property):
    paper = yaml.safe_load(paper_config.read_text())
    datasets = {spec["source"]: dataset_file(spec["source"]) for spec in paper["datasets"].values()}
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump({"local_sources": {**datasets, **standins(paper, datasets)}, **SIZES}))
    (train_set,) = paper["experiments"]
    workdir = workdirs(train_set)
    trained, metrics_files = planned_outputs(paper)
    earlier = {folder: file_stamps(folder) for folder in (workdir / "results").glob("*")}

    started = time.monotonic()
    result = snakemake(workdir, "--configfile", str(paper_config.relative_to(REPO)), str(overrides))
    wall = time.monotonic() - started
    record_property("wall_s", round(wall, 1))
    fixtures = sorted(hub_id for hub_id, source in datasets.items() if str(FIXTURES) in str(source))
    print(f"\nrehearsal {paper_config.stem}: {wall:.1f} s (snakemake; stand-ins built beforehand), "
          f"fixtures for {', '.join(fixtures) or 'no dataset'}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for folder, stamps in earlier.items():  # the full configuration's run, when it ran first: not one file written
        assert file_stamps(folder) == stamps, folder

    run = workdir / "results" / paper["run_name"]
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
