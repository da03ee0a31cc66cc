import json
import os
import re
import shutil
import sys
from pathlib import Path

from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod

from advdistill.code_deps import CachedStageVersions
from advdistill.devices import machine_gpus
from advdistill.model_folders import HUB_ID
from advdistill.paths import looks_local, snapshot_folder
from advdistill.digests import DigestCache
from advdistill.errors import ConfigError
from advdistill.memory_plan import check_gpu_requests, check_plan, format_plan, plan_memory, plan_rows, stage_gpus
from advdistill.planning import (
    accelerate_launch_args,
    building_run,
    check_config,
    check_configfile_options,
    check_model_folder,
    check_offline_dataset,
    check_offline_model,
    check_profile_options,
    check_split_sources,
    check_submitted_resources,
    hub_offline,
    labelled_models,
    image_location,
    missing_images,
    params_json,
    stop_on_config_error,
    trained_runs,
    variant_training,
    without_dataset,
)
from advdistill.rerun_reasons import install as install_rerun_reasons
from advdistill.runs import (
    check_job_records,
    check_run_folder,
    check_upstream_run,
    config_file_names,
    run_folder,
    write_record,
)
from advdistill.schema import load_schema


# Config files read strictly, the schema (advdistill/config.schema.yaml; fills in defaults), every stage's
# section as its CLI parses it, unique model names. A config error anywhere in planning stops the run before any
# job with one message naming the key (stop_on_config_error), not a traceback.
if workflow.is_main_process:
    check_configfile_options(sys.argv)
    # the workstation profile, which Snakemake loads beside a --profile unless --workflow-profile names another
    WORKSTATION_PROFILES = [folder for folder in (Path("profiles/default"), Path(workflow.basedir, "profiles/default"))
                            if folder.is_dir()]
    stop_on_config_error(check_profile_options)(sys.argv, os.environ, next(iter(WORKSTATION_PROFILES), None))
check_config(config, workflow.configfiles, workflow.config_settings.config)

REPO = Path(workflow.basedir)

# One folder per experiment (advdistill/runs.py): every output of this config, logs and benchmarks included, lies
# under results/<run_name>; the results up to scoring come from results/<upstream_run> when the config names one.
RUN_FOLDER = run_folder(config["run_name"]).as_posix()
UPSTREAM_FOLDER = run_folder(config["upstream_run"] or config["run_name"]).as_posix()
if workflow.is_main_process:
    stop_on_config_error(check_run_folder)(config, workflow.configfiles)
    stop_on_config_error(check_job_records)(config["run_name"])
    stop_on_config_error(check_upstream_run)(config)


def out(path):
    """A path this run writes: results/<run_name>/<path> (wildcards in braces stay wildcards)."""
    return f"{RUN_FOLDER}/{path}"


def upstream(path):
    """A result up to scoring, or a base model's evaluation: this run's own, or read from its upstream_run."""
    return f"{UPSTREAM_FOLDER}/{path}"


onstart:
    write_record(config, workflow.configfiles)


NAME = load_schema()["$defs"]["name"]["pattern"].strip("^$")  # one path component, as the schema allows names

# Trained students by name (advdistill.planning.trained_runs): student, objective, variant and seed of each.
TRAINED_RUNS = {run.name: run for run in trained_runs(config)}


def one_of(names):
    """A wildcard constraint matching exactly these names (none: matching nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    dataset=NAME,
    testset=NAME,
    split=NAME,
    model=f"{NAME}(@{NAME})*",
    student=NAME,
    trained=one_of(TRAINED_RUNS),
    part=r"\d+",


@stop_on_config_error
def check_config_references():
    """Names that refer to other sections must exist; fail before any job with the key's path."""
    for train_set, experiment in config["experiments"].items():
        if train_set not in config["datasets"] or "train" not in config["datasets"][train_set]["splits"]:
            raise ConfigError(f"config experiments.{train_set}: not a dataset with a 'train' split")
        for testset in experiment["testsets"]:
            if testset not in config["datasets"] or "test" not in config["datasets"][testset]["splits"]:
                raise ConfigError(f"config experiments.{train_set}.testsets: '{testset}' is not a dataset with a 'test' split")
    for key, model in labelled_models(config):
        if model["source"] == "snapshot":
            check_snapshot_reference(key, model)
        if model["source"] == "bootstrap":
            if "bootstrap" not in model:
                raise ConfigError(f"config {key}.bootstrap is required when {key}.source is 'bootstrap'")
            if model["bootstrap"]["dataset"] not in config["datasets"]:
                raise ConfigError(f"config {key}.bootstrap.dataset: unknown dataset '{model['bootstrap']['dataset']}'")
            tokenizer_set = config.get("tokenizer", {}).get("dataset")
            if tokenizer_set not in config["datasets"] or "train" not in config["datasets"][tokenizer_set]["splits"]:
                raise ConfigError(f"config tokenizer.dataset: {tokenizer_set!r} is not a dataset with a 'train' split "
                                  f"({key}.source is 'bootstrap', so the pipeline trains a tokenizer)")


def check_snapshot_reference(key, model):
    """A snapshot names a bootstrapped model other than itself and a step its run reaches (when the run is given in
    steps; a run given in epochs is checked by its bootstrap job)."""
    if "snapshot" not in model:
        raise ConfigError(f"config {key}.snapshot is required when {key}.source is 'snapshot'")
    origin, step = model["snapshot"]["of"], model["snapshot"]["step"]
    run = building_run(config, model)
    if run is None:
        raise ConfigError(f"config {key}.snapshot.of: '{origin}' is not another model with source 'bootstrap'")
    max_steps = (run[1].get("optim") or {}).get("max_steps", -1)
    if max_steps > 0 and step > max_steps:
        raise ConfigError(f"config {key}.snapshot.step: {step} is beyond the {max_steps} steps of the run of "
                          f"'{origin}' (its bootstrap.optim.max_steps)")


check_config_references()


def local_sources():
    """``local_sources``: hub id -> local copy (a model folder, a dataset file or a mapping split -> file)."""
    return config.get("local_sources") or {}


def dataset_source(dataset, split):
    """The source of one split: the dataset's source, or its entry for ``split`` in a mapping; a hub id that
    ``local_sources`` maps is replaced by its local file (the ``split`` entry of a mapping)."""
    source = config["datasets"][dataset]["source"]
    if isinstance(source, dict):
        if split not in source:
            raise ConfigError(f"config datasets.{dataset}.source: no entry for split '{split}'")
        source = source[split]
    if source not in local_sources():
        return source
    local, key = local_sources()[source], f"local_sources.{source}"
    if isinstance(local, dict):
        if split not in local:
            raise ConfigError(f"config {key}: no entry for split '{split}' (datasets.{dataset} prepares it)")
        local, key = local[split], f"{key}.{split}"
    if not Path(local).expanduser().is_file():
        raise ConfigError(f"config {key}: file {local} not found (datasets.{dataset}, split '{split}')")
    return str(Path(local).expanduser())


def dataset_source_input(dataset, split):
    """A split's local source file as a dependency (an edit after prepare reruns it); nothing for a hub id."""
    source = dataset_source(dataset, split)
    return [source] if Path(source).expanduser().is_file() else []


# Digests of local dataset files, cached by path, size and mtime (advdistill/digests.py).
SOURCE_DIGESTS = DigestCache(Path(".snakemake/advdistill/source-digests.json"))


def dataset_source_digest(dataset, split):
    """The content digest of a split's local source file, a parameter of prepare: a file replaced by another
    with an older modification time (cp -p, tar -x) still reruns it. Empty for a hub id or a generator."""
    source = dataset_source(dataset, split)
    return SOURCE_DIGESTS.digest(source) if Path(source).expanduser().is_file() else ""


def as_json(section):
    """A config section as the CLI takes it (advdistill.planning.params_json): JSON with its markup characters
    escaped, since Snakemake's report embeds params in a <script> block; a long one as @<file> in
    .snakemake/advdistill/params, named by its digest, since a command line has room for 128 KiB."""
    return params_json(section, Path(".snakemake/advdistill/params"))


# Stage code digests, cached in .snakemake/advdistill while no source file changes (advdistill/code_deps.py).
STAGE_CODE = CachedStageVersions(Path(".snakemake/advdistill/code-versions.json"), REPO)


def stage_code(stage):
    """Digest of the sources ``advdistill <stage>`` runs (advdistill/code_deps.py), so that a code change reruns
    the rules it can affect and no other. The built-in code trigger sees only a rule's shell command."""
    return STAGE_CODE.version(stage)


def models():
    """Base models by name: the teacher and every student."""
    return {m["name"]: m for m in [config["teacher"], *config.get("students", [])]}


def evaluated_models():
    """Names evaluated per experiment: teacher, then per student its base and its trained runs."""
    names = [config["teacher"]["name"]]
    for student in config.get("students", []):
        names.append(f"{student['name']}-base")
        names.extend(run.name for run in TRAINED_RUNS.values() if run.student == student["name"])
    return names


def is_bootstrapped(name):
    return models()[name]["source"] == "bootstrap"


def snapshot_steps(name):
    """The steps of a bootstrapped model's run that other models take as snapshots, as ``--snapshot-steps``."""
    steps = {m["snapshot"]["step"] for m in models().values() if m["source"] == "snapshot" and m["snapshot"]["of"] == name}
    return ",".join(map(str, sorted(steps)))


def model_path(name):
    """Where a model is loaded from: the pipeline's own folder (a snapshot's inside its run's), the local folder
    that ``local_sources`` maps its hub id to, or its ``source`` (a local folder or a hub id)."""
    if is_bootstrapped(name):
        return upstream(f"models/{name}")
    if models()[name]["source"] == "snapshot":
        snapshot = models()[name]["snapshot"]
        return str(snapshot_folder(model_path(snapshot["of"]), snapshot["step"]))
    source = models()[name]["source"]
    return str(Path(local_sources()[source]).expanduser()) if source in local_sources() else source


def model_input(name):
    """The model as a file dependency when the pipeline builds it or ``local_sources`` maps it to a folder (its
    modification time then counts like any input's), else nothing to wait for."""
    if models()[name]["source"] == "snapshot":
        return model_input(models()[name]["snapshot"]["of"])
    return [model_path(name)] if is_bootstrapped(name) or models()[name]["source"] in local_sources() else []


@stop_on_config_error
def check_local_sources():
    """Every model and dataset split a stage loads, checked before any job as its stage would check it: a local
    model folder passes the stage's own check (config.json, weight headers, tokenizer, chat template, end-of-sequence
    token: advdistill/model_folders.py), a local dataset file exists, and under HF_HUB_OFFLINE=1 a hub id has a copy
    in the cache its stage reads offline."""
    offline = hub_offline()
    for key, model in labelled_models(config):
        source = model["source"]
        if source in ("bootstrap", "snapshot"):
            continue  # built by the pipeline
        if source in local_sources():
            check_model_folder(f"local_sources.{source}", local_sources()[source])
        elif looks_local(source):
            check_model_folder(f"{key}.source", source)
        elif offline and HUB_ID.match(source):
            check_offline_model(f"{key}.source", source)
    for dataset, spec in config["datasets"].items():
        sources = {}  # each source once, with the first split that reads it
        for split in spec["splits"]:
            sources.setdefault(dataset_source(dataset, split), split)
        for source, split in sources.items():
            if looks_local(source):
                if not Path(source).expanduser().is_file():
                    problem = "is not a file" if Path(source).expanduser().exists() else "not found"
                    raise ConfigError(f"config datasets.{dataset}.source: file {source} {problem} (split '{split}')")
            elif offline and HUB_ID.match(source):
                check_offline_dataset(f"datasets.{dataset}.source", source, spec["adapter"], spec.get("options"))


check_local_sources()
stop_on_config_error(check_split_sources)(config, dataset_source)


def base_models():
    """Evaluated names of the untrained models (the teacher's own, ``<student>-base``) -> their configured model."""
    teacher = config["teacher"]["name"]
    return {teacher: teacher, **{f"{s['name']}-base": s["name"] for s in config.get("students", [])}}


def evaluated_model_path(train_set, name):
    """Where an evaluated model lives: the base model's path, or the trained student's folder."""
    base = base_models().get(name)
    return model_path(base) if base else out(f"train/{train_set}/{name}")


def evaluated_model_input(train_set, name):
    base = base_models().get(name)
    return model_input(base) if base else [evaluated_model_path(train_set, name)]


USES_APPTAINER = DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
# A dry run previews the plan anywhere: where Apptainer is not installed (a login node, a laptop) the rules name no
# image, since Snakemake would otherwise stop the dry run at its own check for the apptainer command.
WITHOUT_IMAGES = USES_APPTAINER and workflow.output_settings.dryrun and not (
    shutil.which("apptainer") or shutil.which("singularity"))


def container_for(kind="cpu"):
    """The Apptainer image of a rule (check_images checks that a run's images exist); none in a dry run on a
    machine without Apptainer. An image of the repository is named relative to the working folder: Snakemake keys
    a job's software environment on this text, so an absolute path would rerun every job of a moved checkout."""
    image = config["containers"][kind]
    if WITHOUT_IMAGES:
        return None
    if "://" in image:
        return image
    location = image_location(image, REPO)
    return os.path.relpath(location) if location.is_relative_to(REPO) else str(location)


@stop_on_config_error
def check_images():
    """With --sdm apptainer every job runs in its image: a run stops before any job when an image its rules name
    (the CPU image; the GPU image too under resources.gpu_rules) is missing, naming each with the commands that
    build it; a dry run only says so, and plans on."""
    kinds = ["cpu", "gpu"] if config.get("resources", {}).get("gpu_rules", False) else ["cpu"]
    missing = missing_images(config["containers"], kinds, REPO)
    if WITHOUT_IMAGES:
        logger.info("Apptainer is not installed here: this dry run plans the jobs without their images (a run with "
                    "--sdm apptainer needs apptainer where Snakemake runs, and the images)")
    if missing and workflow.output_settings.dryrun:
        logger.warning(f"{missing}\nThis dry run goes on; a run would stop here.")
    elif missing:
        raise ConfigError(missing)


if USES_APPTAINER and workflow.is_main_process:
    check_images()


def gpu_resources(stage):
    """On a GPU run, the GPUs of one job of ``stage`` (sample, evaluate, train): vLLM's tensor_parallel_size, or
    the training.processes of the job's run (its variant's); none on a CPU run."""
    if not config.get("resources", {}).get("gpu_rules", False):
        return {}
    if stage == "train":
        return {"gpu": lambda wc: run_training(wc.trained).get("processes", 1)}
    return {"gpu": stage_gpus(config, stage)}


def memory_plan():
    """Per-GPU memory estimates of a GPU run's stages (advdistill/memory_plan.py); none on a CPU run."""
    if not config.get("resources", {}).get("gpu_rules", False):
        return []
    return plan_memory(config, {name: model_path(name) for name in models()})


MEMORY_PLAN = memory_plan()
if MEMORY_PLAN and workflow.is_main_process:
    logger.info(f"Memory plan (advdistill/memory_plan.py):\n{format_plan(MEMORY_PLAN)}\n")
    if config["resources"].get("gpu_mem_gb") is not None:
        stop_on_config_error(check_plan)(MEMORY_PLAN, config["resources"]["gpu_mem_gb"])


def limit_gpu_jobs():
    """On a workstation, the GPU jobs at once take no more GPUs than the machine has (advdistill.devices.machine_gpus),
    so that two vLLM evaluations or trainings never share one; a --resources gpu=N of the user's wins. A job asking
    for more than the limit stops planning, naming its key. A cluster run (--jobs to an executor: Snakemake's nodes)
    and a CPU run (no rule asks for a GPU) are left as they are."""
    if not config.get("resources", {}).get("gpu_rules", False) or workflow.resource_settings.nodes is not None:
        return
    if "gpu" in workflow.resource_settings.resources:
        limit = workflow.resource_settings.resources["gpu"]
        limit = int(getattr(limit, "value", limit))  # Snakemake 9 wraps it in a Resource
        source = f"--resources gpu={limit}"
    else:
        limit = machine_gpus()
        if not limit:
            return
        workflow.register_resource("gpu", limit)
        logger.info(f"GPU jobs: at most {limit} GPU(s) in use at once, the GPUs of this machine (CUDA_VISIBLE_DEVICES "
                    "or nvidia-smi); --resources gpu=N sets another limit")
        source = "this machine's GPUs (CUDA_VISIBLE_DEVICES or nvidia-smi)"
    stop_on_config_error(check_gpu_requests)(config, limit, source)


if workflow.is_main_process:
    limit_gpu_jobs()


def param_key(rule_name, name, wildcards):
    """The config key that a rule's JSON parameter holds, named in rerun reasons (advdistill/rerun_reasons.py);
    None: the parameter's own name."""
    if name == "prompt":
        return "prompt"
    if rule_name == "prepare" and name == "options":
        return f"datasets.{wildcards['dataset']}.options"
    if rule_name == "bootstrap_model" and name == "settings":
        return next(f"{key}.bootstrap" for key, model in labelled_models(config) if model["name"] == wildcards["model"])
    sections = {"bootstrap_tokenizer": "tokenizer", "sample": "sampling", "score": "score", "train": "training",
                "evaluate": "evaluation"}
    return sections.get(rule_name) if name == "settings" else None


if workflow.is_main_process:
    install_rerun_reasons(param_key)


def run_training(trained):
    """The training section of one trained run (its variant's overrides merged in)."""
    return variant_training(config, TRAINED_RUNS[trained].variant)


def training_launcher(trained):
    """The train command of one trained run as a list of words (quoted one by one): the CLI, or one process per
    GPU through accelerate when its training.processes > 1."""
    processes = run_training(trained).get("processes", 1)
    if processes == 1:
        return ["advdistill"]
    return ["accelerate", "launch", *accelerate_launch_args(processes), "-m", "advdistill.cli"]


def evaluation_prompt(model):
    """Base models, the teacher included, answer with few-shot turns from the training split (the paper's ICL
    baselines: every BASE row of its results table)."""
    prompt = dict(config.get("prompt", {}))
    if model in base_models():
        prompt["few_shot"] = config["evaluation"]["base_few_shot"]
    return as_json(prompt)


def evaluated_here(model):
    """Whether this run evaluates ``model``: a trained student always, a base model (teacher, base students) unless
    the upstream run lends its evaluations."""
    return model in TRAINED_RUNS or not config["upstream_run"]


def evaluation_file(train_set, model, testset, kind):
    """An evaluation's file: this run's own (:func:`evaluated_here`), else the upstream run's."""
    path = f"evaluate/{train_set}/{model}/{testset}/{kind}"
    return out(path) if evaluated_here(model) else upstream(path)


def evaluation_outputs(kind):
    """Every evaluation of every experiment (the report shows those of reported_evaluations)."""
    return [
        evaluation_file(train_set, model, testset, kind)
        for train_set, experiment in config["experiments"].items()
        for model in evaluated_models()
        for testset in experiment["testsets"]
    ]


def reported_evaluations():
    """The evaluations the report shows: every model on every test set, with the students trained on the first
    experiment that lists the test set."""
    first_experiment = {}
    for train_set, experiment in config["experiments"].items():
        for testset in experiment["testsets"]:
            first_experiment.setdefault(testset, train_set)
    return [
        {"model": model, "testset": testset,
         "metrics": evaluation_file(train_set, model, testset, "metrics.json"),
         "responses": evaluation_file(train_set, model, testset, "responses.parquet")}
        for testset, train_set in first_experiment.items()
        for model in evaluated_models()
    ]


def reported_training():
    """Every trained run of every experiment with its folder (which holds its train_metrics.json)."""
    return [
        {"train_set": train_set, "model": run.name, "student": run.student, "objective": run.objective,
         "variant": run.variant, "control": run.variant and config["variants"][run.variant].get("control"),
         "seed": run.seed, "path": out(f"train/{train_set}/{run.name}")}
        for train_set in config["experiments"]
        for run in TRAINED_RUNS.values()
    ]


def reported_scores():
    return {train_set: upstream(f"score/{train_set}/scored.parquet") for train_set in config["experiments"]}


def upstream_outputs():
    """Outputs of the stages before training whose manifests the report's provenance table lists."""
    prepared = [upstream(f"prepare/{name}/{split}.parquet")
                for name, dataset in config["datasets"].items() for split in dataset["splits"]]
    built = [model_path(name) for name in models() if is_bootstrapped(name)]
    sampled = [upstream(f"sample/{train_set}/samples.parquet") for train_set in config["experiments"]]
    return prepared + built + sampled


def run_benchmarks():
    """This run's benchmark files by stage, one per job of its DAG (the report's own is written after it): the
    stage costs count these alone, not other runs' files or stale ones of jobs this config no longer has."""
    files = {"train": [out(f"benchmarks/train/{train_set}/{run}.tsv")
                       for train_set in config["experiments"] for run in TRAINED_RUNS],
             "evaluate": [out(f"benchmarks/evaluate/{train_set}/{model}/{testset}.tsv")
                          for train_set, experiment in config["experiments"].items()
                          for model in evaluated_models() if evaluated_here(model)
                          for testset in experiment["testsets"]]}
    if config["upstream_run"]:
        return files
    bootstrapped = [name for name in models() if is_bootstrapped(name)]
    tokenizer = ["tokenizer"] if bootstrapped else []  # trained once for all bootstrapped models
    return {
        "prepare": [out(f"benchmarks/prepare/{name}/{split}.tsv")
                    for name, dataset in config["datasets"].items() for split in dataset["splits"]],
        "bootstrap": [out(f"benchmarks/bootstrap/{name}.tsv") for name in tokenizer + bootstrapped],
        "sample": [out(f"benchmarks/sample/{train_set}/{part}.tsv") for train_set in config["experiments"]
                   for part in [*(f"part-{i}" for i in range(config["sampling"]["jobs"])), "merge"]],
        "score": [out(f"benchmarks/score/{train_set}.tsv") for train_set in config["experiments"]],
        **files,
    }


@stop_on_config_error
def check_upstream_results():
    """Every result an upstream_run lends is there, so that a run it has not finished stops here, named."""
    if not config["upstream_run"]:
        return
    lent = [*upstream_outputs(), *reported_scores().values(),
            *(path for kind in ("metrics.json", "responses.parquet") for path in evaluation_outputs(kind)
              if Path(UPSTREAM_FOLDER) in Path(path).parents)]
    missing = [path for path in lent if not Path(path).exists()]
    if missing:
        raise ConfigError(f"config upstream_run: run '{config['upstream_run']}' lacks {missing[0]}"
                          f"{f' and {len(missing) - 1} more of the results it lends' if len(missing) > 1 else ''}; "
                          f"finish that run first (its config files: {UPSTREAM_FOLDER}/run.json)")


if workflow.is_main_process:
    check_upstream_results()


def report_plan():
    """The plan that ``advdistill report`` gets: row and column order, and the files the report declares as
    inputs (advdistill.report.run_report), so that the report reads exactly those."""
    evaluations, trained, scored = reported_evaluations(), reported_training(), reported_scores()
    return {
        "models": evaluated_models(),
        "testsets": list(dict.fromkeys(e["testset"] for e in evaluations)),
        "evaluations": evaluations,
        "scored": scored,
        "trained": trained,
        "provenance": [*upstream_outputs(), *scored.values(), *(run["path"] for run in trained),
                       *(e["responses"] for e in evaluations)],
        "memory": plan_rows(MEMORY_PLAN),
        "paper": config.get("paper_reference", {}),
        "benchmarks": run_benchmarks(),
        "run": {"name": config["run_name"], "upstream_run": config["upstream_run"],
                "config_files": config_file_names(workflow.configfiles)},
    }


def final_outputs():
    return [out("report/index.html")]


@stop_on_config_error
def check_profile_resources():
    """Per-rule resources or threads (profile set-resources/set-threads) must name existing rules."""
    known = {rule.name for rule in workflow.rules}
    settings = workflow.resource_settings
    named = set(settings.overwrite_resources) | set(settings.overwrite_threads)
    unknown = sorted(named - known)
    if unknown:
        raise ConfigError(f"profile set-resources/set-threads name unknown rule(s) {', '.join(unknown)}; "
                         f"rules are: {', '.join(sorted(known))}")
    default = settings.default_resources.items() if settings.default_resources is not None else []
    check_submitted_resources({name: resource.raw for name, resource in default},
                              {rule: {name: resource.raw for name, resource in values.items()}
                               for rule, values in settings.overwrite_resources.items()})
