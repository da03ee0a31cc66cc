"""Config checks that Snakemake runs while planning, before any job (called from the Snakefile and common.smk).

:func:`check_config` reads every config file again strictly (a repeated key, a syntax error with its line and
column), validates the merged config against the schema and fills in its defaults, parses every stage's
section as its CLI will (so the rules that tie keys together are checked too), and checks that the model names
the pipeline derives are unique. A :class:`ConfigError` raised by a check decorated with
:func:`stop_on_config_error` stops Snakemake with its message alone, without a Python traceback.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from advdistill import paths
from advdistill.config import section_from_dict
from advdistill.errors import ConfigError, InputError
from advdistill.model_folders import model_folder_problem
from advdistill.schema import read_config_file, type_command_line_values, validate
from advdistill.trackers import check_report_to

F = TypeVar("F", bound=Callable[..., Any])


def stop_on_config_error(check: F) -> F:
    """Decorate a planning check: a :class:`ConfigError` is logged as it is (each line names its key) and Snakemake
    exits with status 1 before any job, instead of printing the error with a traceback."""

    @functools.wraps(check)
    def checked(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except ConfigError as err:
            from snakemake.logging import logger

            logger.error(str(err))
            sys.exit(1)

    return checked


@stop_on_config_error
def checked_config_file(path: str) -> str:
    """``path``, once it reads strictly (see :func:`advdistill.schema.read_config_file`); a missing file is left to
    Snakemake."""
    if Path(path).exists():
        read_config_file(path)
    return path


def without_dataset(section: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer or bootstrap section as its CLI stage takes it: the dataset is the rule's input instead."""
    return {key: value for key, value in section.items() if key != "dataset"}


def labelled_models(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The teacher and every student with its config key."""
    return [("teacher", config["teacher"])] + [(f"students[{i}]", s) for i, s in enumerate(config.get("students", []))]


@dataclass(frozen=True)
class TrainedRun:
    """One trained student: a student, an objective, a training variant (None: the training section as it is) and
    a seed. Its ``name`` is ``<student>-<objective>``, with ``@<variant>`` for a variant and ``@seed<seed>`` for a
    seed other than the global one, so that adding variants or seeds leaves the plain runs' folders alone."""

    student: str
    objective: str
    variant: str | None
    seed: int
    name: str
    config_key: str

    @property
    def name_without_seed(self) -> str:
        """``<student>-<objective>[@<variant>]``: the name its runs of every seed share."""
        return self.name.removesuffix(f"@seed{self.seed}")


def run_seeds(config: dict[str, Any]) -> list[int]:
    """The replicate seeds of every training (``seeds``; the global seed when absent)."""
    return list(config.get("seeds") or [config["seed"]])


def trained_runs(config: dict[str, Any]) -> list[TrainedRun]:
    """Every training the config asks for, per student: the plain runs (unless ``plain_runs`` is false), then each
    variant, each over the seeds."""
    runs = []
    variants = [(None, None)] if config.get("plain_runs", True) else []
    variants += list((config.get("variants") or {}).items())
    for i, student in enumerate(config.get("students", [])):
        for variant, spec in variants:
            for objective in student["objectives"]:
                if spec is not None and objective not in spec.get("objectives", student["objectives"]):
                    continue
                for seed in run_seeds(config):
                    name = f"{student['name']}-{objective}"
                    key = f"students[{i}].objectives ('{objective}'"
                    if variant is not None:
                        name, key = f"{name}@{variant}", f"{key}, variants.{variant}"
                    if seed != config["seed"]:
                        name, key = f"{name}@seed{seed}", f"{key}, seeds {seed}"
                    runs.append(TrainedRun(student["name"], objective, variant, seed, name,
                                           f"{key}, trained as '{name}')"))
    return runs


def variant_training(config: dict[str, Any], variant: str | None) -> dict[str, Any]:
    """The training section a variant trains with: its overrides deep-merged into ``training`` (the section itself
    for ``None``)."""
    if variant is None:
        return config["training"]
    from snakemake.utils import update_config  # the merge Snakemake applies to --configfile files

    merged = copy.deepcopy(config["training"])
    update_config(merged, copy.deepcopy(config["variants"][variant]["training"]))
    return merged


def check_paper_reference(config: dict[str, Any]) -> None:
    """The paper's numbers must name test sets, training sets and models of this configuration, so that every one
    of them is shown against a reproduced value."""
    reference = config.get("paper_reference") or {}
    models = {name for name, _ in derived_model_names(config)} - {s["name"] for s in config.get("students", [])}
    testsets = {t for experiment in config["experiments"].values() for t in experiment["testsets"]}
    tables = (("accuracy", testsets), ("mean_tokens", testsets), ("training_hours", set(config["experiments"])))
    for table, sets in tables:
        for name, values in reference.get(table, {}).items():
            if name not in sets:
                raise ConfigError(f"config paper_reference.{table}.{name}: not one of this configuration's "
                                  f"{'training sets' if table == 'training_hours' else 'test sets'} {sorted(sets)}")
            for model in values:
                if model not in models:
                    raise ConfigError(f"config paper_reference.{table}.{name}.{model}: not a model this "
                                      f"configuration evaluates ({', '.join(sorted(models))})")


def check_variants(config: dict[str, Any]) -> None:
    """Each variant's training section must be valid as a whole and train at least one objective of a student."""
    objectives = {objective for student in config.get("students", []) for objective in student["objectives"]}
    for name, spec in (config.get("variants") or {}).items():
        key = f"variants.{name}.training"
        validate(variant_training(config, name), "/properties/training", key)
        section_from_dict("training", variant_training(config, name), key)
        if not objectives & set(spec.get("objectives", objectives)):
            raise ConfigError(f"config variants.{name}.objectives: no student trains {spec['objectives']} "
                              f"(students' objectives: {sorted(objectives)})")
    check_variant_controls(config)
    if not config.get("plain_runs", True) and not config.get("variants"):
        raise ConfigError("config plain_runs: false trains the variants only, but there are no variants: nothing "
                          "would be trained (add variants or set plain_runs: true)")


def _variant_objectives(config: dict[str, Any], spec: dict[str, Any]) -> set[str]:
    """The objectives a variant trains for some student."""
    objectives = {objective for student in config.get("students", []) for objective in student["objectives"]}
    return objectives & set(spec.get("objectives", objectives))


def check_variant_controls(config: dict[str, Any]) -> None:
    """A variant's ``control`` names another variant that trains the same objectives, so that each of its runs
    has the control's run of the same student, objective and seed to be compared with."""
    variants = config.get("variants") or {}
    for name, spec in variants.items():
        control = spec.get("control")
        if control is None:
            continue
        key = f"config variants.{name}.control"
        if control == name or control not in variants:
            raise ConfigError(f"{key}: '{control}' is not another variant (variants: {', '.join(variants)})")
        missing = _variant_objectives(config, spec) - _variant_objectives(config, variants[control])
        if missing:
            raise ConfigError(f"{key}: '{control}' does not train {sorted(missing)}, which '{name}' trains; a "
                              f"control must train the same objective")


def check_trackers(config: dict[str, Any]) -> None:
    """The experiment trackers of the training section and of each variant that sets its own are known to
    transformers and installed where Snakemake runs (:func:`~advdistill.trackers.check_report_to`; the train job
    checks its own environment again, a container's under --sdm apptainer)."""
    report_to = config["training"]["report_to"]
    check_report_to(report_to, "training.report_to")
    for name in config.get("variants") or {}:
        if variant_training(config, name)["report_to"] != report_to:
            check_report_to(variant_training(config, name)["report_to"], f"variants.{name}.training.report_to")


def derived_model_names(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Every model name the pipeline derives, with the config key it comes from: the teacher's and each student's
    name, ``<student>-base`` (the untrained student, evaluated) and each :func:`trained_runs` name."""
    names = [(config["teacher"]["name"], "teacher.name")]
    runs = trained_runs(config)
    for i, student in enumerate(config.get("students", [])):
        key, name = f"students[{i}]", student["name"]
        names += [(name, f"{key}.name"), (f"{name}-base", f"{key}.name (its base model '{name}-base')")]
        names += [(run.name, run.config_key) for run in runs if run.config_key.startswith(f"{key}.")]
    return names


def check_model_names(config: dict[str, Any]) -> None:
    """Two config keys that give the same derived name would share results/train and results/evaluate folders:
    one model would be evaluated in place of the other, and one never built or never evaluated. Names that differ
    only in case share them too on a case-insensitive file system (macOS's default), and so do datasets' prepare
    folders. A teacher's name must not read as a student's base or trained model (``<student>-base``,
    ``<student>-sft``): the workflow and the report tell the models' roles by those suffixes."""
    teacher = config["teacher"]["name"]
    stem, _, suffix = teacher.rpartition("-")
    if stem and suffix in (*paths.OBJECTIVES, paths.BASE_SUFFIX):
        raise ConfigError(f"config teacher.name: '{teacher}' ends in '-{suffix}', the name of student '{stem}'s "
                          f"{'base model' if suffix == paths.BASE_SUFFIX else 'run trained with ' + suffix}: the "
                          "pipeline would take the teacher for it; rename the teacher")
    check_distinct_names(derived_model_names(config), "model name", "their results would be mixed up (one model "
                         "evaluated in place of the other)")
    check_distinct_names([(name, f"datasets.{name}") for name in config.get("datasets", {})], "dataset name",
                         "their prepared rows would share one folder")


def check_distinct_names(names: Iterable[tuple[str, str]], what: str, consequence: str) -> None:
    """No two ``(name, config key)`` pairs may give one name, nor names that differ only in case."""
    first: dict[str, tuple[str, str]] = {}
    for name, key in names:
        if name.casefold() not in first:
            first[name.casefold()] = (name, key)
            continue
        other, other_key = first[name.casefold()]
        if other == name:
            raise ConfigError(f"config {other_key} and {key} both give the {what} '{name}', so {consequence}; "
                              "rename one")
        raise ConfigError(f"config {other_key} and {key} give the {what}s '{other}' and '{name}', which differ only "
                          f"in case: on a case-insensitive file system (macOS's default) {consequence}; rename one")


def derived_file_names(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Every path component the pipeline derives from configured names, with the config key it comes from."""
    names = [*derived_model_names(config), *((name, f"datasets.{name}") for name in config.get("datasets", {}))]
    names.append((config["run_name"], "run_name"))
    runs = trained_runs(config)
    for dataset, experiment in config.get("experiments", {}).items():
        key = f"experiments.{dataset}"
        names += [(paths.advantages_plot(dataset), key), (paths.correct_per_group_plot(dataset), key)]
        names += [(paths.lengths_plot(testset), f"{key}.testsets") for testset in experiment.get("testsets", [])]
        names += [(plot(dataset, run.name), f"{key} and {run.config_key}") for run in runs
                  for plot in (paths.loss_terms_plot, paths.training_curves_plot)]
    return names


def check_file_names(config: dict[str, Any]) -> None:
    """A derived file name over the file system's 255-byte limit would fail its stage (the report's plots come
    last): planning names the key instead."""
    for name, key in derived_file_names(config):
        needed = paths.needed_bytes(name)
        if needed > paths.MAX_COMPONENT_BYTES:
            shown = name if len(name) <= 60 else f"{name[:57]}..."
            raise ConfigError(f"config {key}: the file name '{shown}' derived from it needs {needed} bytes with the "
                              f"pipeline's temporary and manifest suffixes, over the file system's limit of "
                              f"{paths.MAX_COMPONENT_BYTES}: shorten the name")


def building_run(config: dict[str, Any], model: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The config key and bootstrap section of the run that builds ``model``: its own, or for a snapshot its
    origin's; None for a hub or local model (and a snapshot of an unknown model, which planning names later)."""
    by_name = {m["name"]: (key, m) for key, m in labelled_models(config)}
    key, builder = by_name[model["name"]]
    if model.get("source") == "snapshot":
        key, builder = by_name.get((model.get("snapshot") or {}).get("of"), (key, {}))
    if builder.get("source") != "bootstrap" or "bootstrap" not in builder:
        return None
    return key, builder["bootstrap"]


def check_context_lengths(config: dict[str, Any]) -> None:
    """A bootstrapped model's context is known at planning: ``max_new_tokens`` must leave room for a prompt in it
    (sampling for the teacher, evaluation for every model). Hub models are checked by the stage that loads them."""
    for key, model in labelled_models(config):
        run = building_run(config, model)
        context = (run[1].get("shape") or {}).get("max_position_embeddings") if run else None
        if context is None:
            continue
        for section in ("sampling", "evaluation") if key == "teacher" else ("evaluation",):
            wanted = config[section]["max_new_tokens"]
            if wanted >= context:
                raise ConfigError(f"config {section}.max_new_tokens: {wanted} leaves no room for a prompt in "
                                  f"{run[0]}.bootstrap.shape.max_position_embeddings {context}: lower the one or "
                                  "raise the other")


def check_stage_sections(config: dict[str, Any]) -> None:
    """Parse every section as its stage's CLI will, so that no job meets a config error that planning let
    through (the checks in the dataclasses' ``__post_init__``, e.g. temperature 0 with several samples)."""
    section_from_dict("prompt", config.get("prompt"))
    for section in ("sampling", "score", "training", "evaluation"):
        section_from_dict(section, config[section])
    if "tokenizer" in config:
        section_from_dict("tokenizer", without_dataset(config["tokenizer"]))
    for key, model in labelled_models(config):
        if "bootstrap" in model:
            section_from_dict("bootstrap", without_dataset(model["bootstrap"]), f"{key}.bootstrap")


def check_min_correct(config: dict[str, Any]) -> None:
    """Two sections that no stage sees together: scoring keeps a group with ``min_correct`` right responses, of
    the ``n_samples`` sampling writes."""
    wanted, samples = config["score"]["min_correct"], config["sampling"]["n_samples"]
    if wanted > samples:
        raise ConfigError(f"config score.min_correct: {wanted} is above sampling.n_samples {samples}: no group could "
                          "have that many correct responses, so scoring would drop every group after sampling")


CONFIGFILE_OPTIONS = ("--configfile", "--configfiles")


@stop_on_config_error
def check_configfile_options(argv: list[str]) -> None:
    """Snakemake keeps the files of the last ``--configfile`` alone, so a second one would silently drop the first
    one's files: a configuration built on several files would run without some of them."""
    given = [word for word in argv if word.split("=", 1)[0] in CONFIGFILE_OPTIONS]
    if len(given) > 1:
        raise ConfigError(f"--configfile is given {len(given)} times, and Snakemake keeps the files of the last one "
                          "alone; give every file after a single --configfile (e.g. --configfile config.yaml "
                          "config/ablation.yaml)")


def check_removed_keys(config: dict[str, Any]) -> None:
    """Keys of earlier versions are named with what became of them, not as unknown keys."""
    if "report_name" in config:
        raise ConfigError("config report_name: replaced by run_name, the folder results/<run_name> that holds every "
                          "output of a run, its report in results/<run_name>/report")
    trainings = {"training": config.get("training")}
    variants = config.get("variants")
    if isinstance(variants, dict):  # a malformed one is named by the schema
        trainings.update({f"variants.{name}.training": variant.get("training")
                          for name, variant in variants.items() if isinstance(variant, dict)})
    for key, training in trainings.items():
        if isinstance(training, dict) and "match_steps" in training:
            raise ConfigError(f"config {key}.match_steps: removed: SFT and AdvDistill take the same optimizer steps "
                              "anyway, since training.optim.per_device_batch_size counts prompts for both; delete it")


@stop_on_config_error
def check_config(config: dict[str, Any], config_files: Iterable[str | Path], command_line: Any = None) -> None:
    """Every planning check of the config itself, in order; fills in the schema's defaults. ``command_line`` is the
    ``--config`` mapping, whose nested text values get their schema type first (:func:`type_command_line_values`)."""
    for path in config_files:
        read_config_file(path)
    check_removed_keys(config)
    type_command_line_values(config, command_line or {})
    validate(config, set_defaults=True)
    check_stage_sections(config)
    check_min_correct(config)
    check_variants(config)
    check_trackers(config)
    check_model_names(config)
    check_file_names(config)
    check_context_lengths(config)
    check_paper_reference(config)


# JSON escapes for the characters that end a <script> block or start markup: a rule's params are embedded unescaped
# in the <script> of Snakemake's report (snakemake --report), so a config string must not be able to close it.
MARKUP_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


# A rule's shell command is one argument of `bash -c`, and Linux caps one argument at 128 KiB (MAX_ARG_STRLEN): a
# long system prompt, or the report plan of a large sweep, would fail the job with "Argument list too long".
INLINE_JSON_LIMIT = 8192


def params_json(section: Any, store: Path) -> str:
    """A config section as the CLI takes it and the params trigger compares: compact JSON with ``<``, ``>`` and ``&``
    written as JSON escapes (the same value once parsed); over :data:`INLINE_JSON_LIMIT` characters, ``@<file>``
    instead, a file in ``store`` named by the JSON's sha256 (so the parameter still changes with the value)."""
    text = json.dumps(section, sort_keys=True, separators=(",", ":")).translate(MARKUP_ESCAPES)
    if len(text) <= INLINE_JSON_LIMIT:
        return text
    path = store / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
    if not path.is_file():
        paths.write_text_atomically(path, text)
    return f"@{path.as_posix()}"


# Resources the SLURM executor writes into the sbatch command line, which it runs through a shell.
SHELL_METACHARACTERS = set(";|&$`<>()\n\\")
def check_submitted_resources(default: dict[str, Any], per_rule: dict[str, dict[str, Any]]) -> None:
    """Text resources of a profile hold no shell metacharacter: the SLURM executor writes them into the sbatch
    command it hands to a shell on the submitting host (``slurm_*``, constraint, qos, and also tasks, mem_mb_per_cpu,
    ...), so a ``;`` in one would run a command there. Every text value is checked, since which ones reach that
    shell is the executor plugin's choice, from version to version."""
    sources = [("default-resources", default)] + [(f"set-resources {rule}", values) for rule, values in
                                                   per_rule.items()]
    for where, values in sources:
        for name, raw in values.items():
            if not isinstance(raw, str):
                continue
            found = sorted(SHELL_METACHARACTERS & set(raw))
            if found:
                shown = ", ".join(repr(c) for c in found)
                raise ConfigError(f"profile {where}: {name} = {raw!r} holds the shell metacharacter(s) {shown}; the "
                                  "SLURM executor hands it to a shell on the submitting host, so it is refused: give "
                                  "the sbatch options without ; | & $ ` < > ( ) \\ or line breaks")


def check_split_sources(config: dict[str, Any], source_of: Callable[[str, str], str]) -> None:
    """A training split and a test split of one experiment read from one local file only where one adapter carves
    the two apart (a held-out share by hash, with the same options): otherwise the students would be trained on the
    test set. ``source_of(dataset, split)`` is the split's source as the prepare job gets it."""
    for train_set, experiment in config["experiments"].items():
        train_file = source_of(train_set, "train")
        for testset in experiment["testsets"]:
            test_file = source_of(testset, "test")
            if not paths.looks_local(train_file) or Path(test_file).resolve() != Path(train_file).resolve():
                continue
            train_spec, test_spec = config["datasets"][train_set], config["datasets"][testset]
            from advdistill.datasets import ADAPTERS
            from advdistill.datasets.release import HeldOutSplit

            carved = (train_spec["adapter"] == test_spec["adapter"] and issubclass(ADAPTERS.get(train_spec["adapter"],
                      object), HeldOutSplit) and train_spec.get("options") == test_spec.get("options"))
            if not carved:
                raise ConfigError(
                    f"config datasets.{testset}.source: its test split reads {test_file}, the file the training split "
                    f"of datasets.{train_set} reads, and adapter '{test_spec['adapter']}' does not hold a test share "
                    f"out of one file: the students would be trained on the test set (experiments.{train_set}); give "
                    "each split its own file ({train: ..., test: ...})")


def accelerate_launch_args(processes: int) -> list[str]:
    """Arguments of ``accelerate launch`` for a train job of ``processes`` processes on one node, up to the
    module to run (port 0: a free port, so several multi-process jobs can share a node)."""
    return ["--multi_gpu", "--num_machines", "1", "--num_processes", str(int(processes)), "--main_process_port", "0"]


IMAGE_DEFINITIONS = {"cpu": "containers/advdistill-cpu.def", "gpu": "containers/advdistill-gpu.def"}


def image_build_commands(kind: str, image: str) -> list[str]:
    """The commands of containers/README.md that build the ``kind`` image at ``image``, from the repository root:
    unprivileged (``--fakeroot``); the GPU image without its ``%test``, which needs a GPU, run on a GPU node after."""
    target = shlex.quote(image)
    if kind == "cpu":
        return [f"apptainer build --fakeroot {target} {IMAGE_DEFINITIONS[kind]}"]
    return [f"apptainer build --fakeroot --notest {target} {IMAGE_DEFINITIONS[kind]}",
            f"apptainer test --nv {target}  # on a GPU node, before the first run"]


def image_location(image: str, repo: Path) -> Path:
    """Where a local image (``containers.<kind>``) lies: a relative path is the repository's, ``~`` the user's."""
    return repo / Path(image).expanduser()


def missing_images(containers: dict[str, str], kinds: Iterable[str], repo: Path) -> str | None:
    """Which local images of ``kinds`` (``containers.<kind>``, :func:`image_location`; a URL is pulled) are missing,
    with the commands that build them; None when none is."""
    missing = [kind for kind in kinds
               if "://" not in containers[kind] and not image_location(containers[kind], repo).exists()]
    if not missing:
        return None
    named = " and ".join(f"containers.{kind} ({containers[kind]})" for kind in missing)
    commands = [command for kind in missing for command in image_build_commands(kind, containers[kind])]
    return (f"config {named}: image not found; with --sdm apptainer every job runs in its image. Build "
            f"{'them' if len(missing) > 1 else 'it'} from the repository root on a machine with Apptainer >= 1.2 "
            "(containers/README.md, docs/paper-runs.md):\n  " + "\n  ".join(commands))


def check_profile_options(argv: list[str], environ: Mapping[str, str], workflow_profile: Path | None) -> None:
    """A profile given with ``--profile`` (or ``SNAKEMAKE_PROFILE``) is merged by Snakemake with this workflow's own
    profile (``workflow_profile``: profiles/default, loaded unless ``--workflow-profile`` names another), and the
    workflow profile wins key by key: ``--profile profiles/slurm`` would run with the workstation's keep-going and
    without ``--cleanenv``. Refused where the workstation profile would replace a value the given profile sets."""
    if workflow_profile is None or any(word.split("=", 1)[0] == "--workflow-profile" for word in argv):
        return
    given = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--profile"]
    given += [word.split("=", 1)[1] for word in argv if word.startswith("--profile=")]
    if not given and environ.get("SNAKEMAKE_PROFILE"):
        given = [environ["SNAKEMAKE_PROFILE"]]
    from snakemake.cli import get_profile_dir  # the lookup Snakemake itself makes (a name, a folder or a file)

    ours = yaml.safe_load(get_profile_dir(str(workflow_profile))[1].read_text()) or {}
    for name in (name for name in given if name != "none"):  # "none": no profile
        theirs = yaml.safe_load(get_profile_dir(name)[1].read_text()) or {}
        replaced = [f"{key}: {json.dumps(ours[key])} over {json.dumps(theirs[key])}" for key in theirs
                    if key in ours and ours[key] != theirs[key]]
        if replaced:
            raise ConfigError(
                f"--profile {name}: Snakemake also loads this workflow's profile {workflow_profile} (the "
                f"workstation's) and lets it win key by key, so this run would take {'; '.join(replaced)}. Give the "
                f"profile as --workflow-profile {name}, which replaces {workflow_profile}, or add --workflow-profile "
                "none to use --profile alone")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (imported only where the variable is set at all)."""
    if "HF_HUB_OFFLINE" not in os.environ:
        return False
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_model_folder(key: str, folder: Any) -> None:
    """A local model folder passes the check its stage makes before loading it
    (:func:`advdistill.model_folders.model_folder_problem`); ``key`` is where the config gives it."""
    if not isinstance(folder, str):
        raise ConfigError(f"config {key}: {folder!r} is not a model folder (a path)")
    problem = model_folder_problem(Path(folder).expanduser())
    if problem:
        raise ConfigError(f"config {key}: model folder {folder} {problem}")


def check_offline_model(key: str, hub_id: str) -> None:
    """Under HF_HUB_OFFLINE=1 a stage loads a hub id from the Hugging Face cache alone: the same lookup and folder
    check (:func:`advdistill.hub.local_model`), made at planning."""
    from advdistill.hub import local_model

    try:
        local_model(hub_id, "snakemake", f"config {key}")
    except InputError as err:
        raise ConfigError(str(err)) from None


def check_offline_dataset(key: str, hub_id: str, adapter: str, options: dict[str, Any] | None) -> None:
    """Under HF_HUB_OFFLINE=1 prepare's ``datasets.load_dataset`` finds a hub id in the ``datasets`` cache alone:
    planning asks that cache for the same dataset and configuration, loading nothing."""
    import datasets

    from advdistill.datasets import get_adapter
    from advdistill.hub import first_line

    hub_config = getattr(get_adapter(adapter, hub_id, options), "hub_config", None)
    try:
        datasets.load_dataset_builder(hub_id, hub_config)
    except Exception as err:  # datasets raises many types for a dataset or configuration it has not cached
        raise ConfigError(f"config {key}: '{hub_id}' is not in the datasets cache and HF_HUB_OFFLINE=1 forbids "
                          f"downloading it ({type(err).__name__}: {first_line(err)}); map it to a local copy of its "
                          "release file in local_sources (config/paper/offline.example.yaml)") from None
