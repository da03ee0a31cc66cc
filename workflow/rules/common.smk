import hashlib
import json
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

REPO = Path(workflow.basedir)


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    split=r"[A-Za-z0-9_.-]+",
    model=r"[A-Za-z0-9_.-]+",
    part=r"\d+",


def check_config_references():
    """Names that refer to other sections must exist; fail before any job with the key's path."""
    for train_set, experiment in config["experiments"].items():
        if train_set not in config["datasets"] or "train" not in config["datasets"][train_set]["splits"]:
            raise ValueError(f"config experiments.{train_set}: not a dataset with a 'train' split")
        for testset in experiment["testsets"]:
            if testset not in config["datasets"] or "test" not in config["datasets"][testset]["splits"]:
                raise ValueError(f"config experiments.{train_set}.testsets: '{testset}' is not a dataset with a 'test' split")
    names = [m["name"] for m in [config["teacher"], *config.get("students", [])]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"config teacher/students: model names must be unique, repeated: {duplicates}")
    labelled = [("teacher", config["teacher"])] + [(f"students[{i}]", s) for i, s in enumerate(config.get("students", []))]
    for key, model in labelled:
        if model["source"] == "bootstrap":
            if "bootstrap" not in model:
                raise ValueError(f"config {key}.bootstrap is required when {key}.source is 'bootstrap'")
            if model["bootstrap"]["dataset"] not in config["datasets"]:
                raise ValueError(f"config {key}.bootstrap.dataset: unknown dataset '{model['bootstrap']['dataset']}'")


check_config_references()


def dataset_source(dataset, split):
    """The source of one split: the dataset's source, or its entry for ``split`` in a mapping."""
    source = config["datasets"][dataset]["source"]
    if isinstance(source, dict):
        if split not in source:
            raise ValueError(f"config datasets.{dataset}.source: no entry for split '{split}'")
        return source[split]
    return source


def as_json(section):
    """A config section as compact JSON, the form the CLI takes and the params trigger compares."""
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def code_version(*sources):
    """Hash of source files and folders (relative to the repository), so that a code change reruns
    the rules that use them. The built-in code trigger only sees the shell command of a rule, not the
    package that command calls.
    """
    digest = hashlib.sha256()
    for source in sources:
        root = REPO / source
        for path in sorted(root.rglob("*.py")) + sorted(root.rglob("*.cpp")) if root.is_dir() else [root]:
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def models():
    """Base models by name: the teacher and every student."""
    return {m["name"]: m for m in [config["teacher"], *config.get("students", [])]}


def evaluated_models():
    """Names evaluated per experiment: teacher, each student's base, each trained student."""
    names = [config["teacher"]["name"]]
    for student in config.get("students", []):
        names.append(f"{student['name']}-base")
        names.extend(f"{student['name']}-{objective}" for objective in student["objectives"])
    return names


def is_bootstrapped(name):
    return models()[name]["source"] == "bootstrap"


def model_path(name):
    """Where a model is loaded from: the pipeline's own folder, a local folder or a hub id."""
    return f"results/models/{name}" if is_bootstrapped(name) else models()[name]["source"]


def model_input(name):
    """The model as a file dependency when the pipeline builds it, else nothing to wait for."""
    return [model_path(name)] if is_bootstrapped(name) else []


def evaluated_model_path(train_set, name):
    """Where an evaluated model lives: the base model's path, or the trained student's folder."""
    base = name.removesuffix("-base")
    return model_path(base) if base in models() else f"results/train/{train_set}/{name}"


def evaluated_model_input(train_set, name):
    base = name.removesuffix("-base")
    return model_input(base) if base in models() else [evaluated_model_path(train_set, name)]


def container_for(kind="cpu"):
    """The Apptainer image of a rule; with --sdm apptainer a missing local image stops the run early."""
    image = config["containers"][kind]
    if "://" in image:
        return image
    uses_apptainer = DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
    if uses_apptainer and not (REPO / image).exists():
        definition = Path(image).name.rsplit("_", 1)[0] + ".def"
        raise ValueError(f"config containers.{kind}: image {image} not found; build it with "
                         f"'apptainer build {image} containers/{definition}' (see containers/README.md)")
    return str(REPO / image)


def gpu_resources():
    return {"gpu": 1} if config.get("resources", {}).get("gpu_rules", False) else {}


def evaluation_prompt(model):
    """Base models answer with few-shot turns from the training split (the paper's ICL baselines)."""
    prompt = dict(config.get("prompt", {}))
    if model.endswith("-base"):
        prompt["few_shot"] = config["evaluation"]["base_few_shot"]
    return as_json(prompt)


def evaluation_outputs(kind):
    return [
        f"results/evaluate/{train_set}/{model}/{testset}/{kind}"
        for train_set, experiment in config["experiments"].items()
        for model in evaluated_models()
        for testset in experiment["testsets"]
    ]


def final_outputs():
    return ["results/report/index.html"]


def check_profile_resources():
    """Per-rule resources or threads (profile set-resources/set-threads) must name existing rules."""
    known = {rule.name for rule in workflow.rules}
    settings = workflow.resource_settings
    named = set(settings.overwrite_resources) | set(settings.overwrite_threads)
    unknown = sorted(named - known)
    if unknown:
        raise ValueError(f"profile set-resources/set-threads name unknown rule(s) {', '.join(unknown)}; "
                         f"rules are: {', '.join(sorted(known))}")
