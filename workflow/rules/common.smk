import hashlib
import json
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

PACKAGE = Path(workflow.basedir) / "advdistill"


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    split=r"[A-Za-z0-9_.-]+",
    model=r"[A-Za-z0-9_.-]+",


def check_config_references():
    """Names that refer to other sections must exist; fail before any job with the key's path."""
    for train_set, experiment in config["experiments"].items():
        if train_set not in config["datasets"] or "train" not in config["datasets"][train_set]["splits"]:
            raise ValueError(f"config experiments.{train_set}: not a dataset with a 'train' split")
        for testset in experiment["testsets"]:
            if testset not in config["datasets"] or "test" not in config["datasets"][testset]["splits"]:
                raise ValueError(f"config experiments.{train_set}.testsets: '{testset}' is not a dataset with a 'test' split")
    for key, model in [("teacher", config["teacher"])]:
        if model["source"] == "bootstrap":
            if "bootstrap" not in model:
                raise ValueError(f"config {key}.bootstrap is required when {key}.source is 'bootstrap'")
            if model["bootstrap"]["dataset"] not in config["datasets"]:
                raise ValueError(f"config {key}.bootstrap.dataset: unknown dataset '{model['bootstrap']['dataset']}'")


check_config_references()


def as_json(section):
    """A config section as compact JSON, the form the CLI takes and the params trigger compares."""
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def code_version(*modules):
    """Hash of package source files, so a code change reruns the rules that use it.

    Snakemake's own code trigger only sees the rule's shell command, not the package it calls.
    """
    digest = hashlib.sha256()
    for module in modules:
        for path in sorted((PACKAGE / module).rglob("*.py")) if (PACKAGE / module).is_dir() else [PACKAGE / module]:
            digest.update(path.relative_to(PACKAGE).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def models():
    return {config["teacher"]["name"]: config["teacher"]}


def is_bootstrapped(name):
    return models()[name]["source"] == "bootstrap"


def model_path(name):
    """Where a model is loaded from: the pipeline's own folder, a local folder or a hub id."""
    return f"results/models/{name}" if is_bootstrapped(name) else models()[name]["source"]


def model_input(name):
    """The model as a file dependency when the pipeline builds it, else nothing to wait for."""
    return [model_path(name)] if is_bootstrapped(name) else []


def container_for(kind="cpu"):
    return config["containers"][kind]


def gpu_resources():
    return {"gpu": 1} if config.get("resources", {}).get("gpu_rules", False) else {}



def final_outputs():
    outputs = []
    for train_set in config["experiments"]:
        outputs.append(f"results/score/{train_set}/scored.parquet")
        outputs.append(f"results/score/{train_set}/summary.json")
    return outputs
