"""The report's tables as data frames: accuracy with its intervals (and majority and pass@k for sampled
evaluations), behaviour per model and test set, training compute and loss terms, the paper's numbers beside ours,
stage costs from Snakemake benchmarks, the memory plan and the provenance of the run's outputs: its stage jobs, their
versions and machines and the models they loaded."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from advdistill.errors import InputError
from advdistill.io import list_of_objects, object_of_numbers, optional_number, read_json
from advdistill.stats import wilson_interval

MODEL_COLUMN = "model"
CORRECT_MARK = "✓"
WRONG_MARK = "✗"
NOT_RECORDED = "n/a"

# Snakemake benchmark column -> report column; max_rss is already in MB.
BENCHMARK_COLUMNS = {"s": "wall_s", "cpu_time": "cpu_s", "max_rss": "max_rss_mb"}

# (column name, test set, metrics key, scale, decimals) of one column of a model x test set table.
ColumnSpec = tuple[str, str, str, float, int]

# The shapes of the JSON inputs, key -> (check, what it must be), as far as the report reads them
# (io.read_json names a damaged file or a key of another shape instead of a traceback where the value is used).
NUMBER = (optional_number, "a number or null")
METRICS_FIELDS = {
    **{key: NUMBER for key in ("accuracy", "n", "accuracy_lower", "accuracy_upper", "majority_accuracy", "n_samples",
                               "temperature", "top_p", "mean_tokens_correct", "mean_tokens_wrong", "verbosity_ratio",
                               "degeneracy_correct", "degeneracy_wrong", "template_adherence")},
    "pass_at_k": (object_of_numbers, "an object of numbers (k -> pass@k)"),
    "few_shot_note": (lambda v: v is None or isinstance(v, str), "a string"),
}
LOG_KEYS = ("step", "loss", "eval_loss", "learning_rate", "weighted_ce", "contrastive", "wrong_p_mean",
            "wrong_at_clamp", "grad_norm")


def _log_history(value: Any) -> bool:
    return list_of_objects(value) and all(optional_number(entry.get(key)) for entry in value for key in LOG_KEYS)


TRAIN_METRICS_FIELDS = {
    **{key: NUMBER for key in ("global_step", "tokens_seen", "train_items", "train_runtime")},
    "log_history": (_log_history, f"an array of objects whose {', '.join(LOG_KEYS)} are numbers or null"),
}


def _optional_string(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _environment(value: Any) -> bool:
    return value is None or (isinstance(value, dict)
                             and all(_optional_string(v) for k, v in value.items() if k not in ("packages", "gpus"))
                             and (value.get("packages") is None or (isinstance(value["packages"], dict) and all(
                                 _optional_string(v) for v in value["packages"].values())))
                             and (value.get("gpus") is None or (isinstance(value["gpus"], list) and all(
                                 isinstance(g, str) for g in value["gpus"]))))


def _model(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and isinstance(value.get("source"), str)
                             and all(_optional_string(value.get(k)) for k in ("folder", "config_sha256",
                                                                               "stands_in_for")))


JOB_FIELDS = {
    **{key: (_optional_string, "a string or null") for key in ("stage", "settings_sha256", "package_version",
                                                                  "git_commit", "container", "container_sha256",
                                                                  "host")},
    "seed": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "a whole number or null"),
    "wall_seconds": NUMBER,
    "environment": (_environment, "an object of strings with 'packages' (an object of versions) and 'gpus' (an "
                                  "array of names)"),
    "model": (_model, "an object with a string 'source'"),
}


def _parts(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(
        isinstance(job, dict) and all(check(job[key]) for key, (check, _) in JOB_FIELDS.items() if key in job)
        for job in value.values()))


MANIFEST_FIELDS = {**JOB_FIELDS, "parts": (_parts, "an object of the manifests of the parts a merge joined")}


def read_manifest(path: Path) -> dict[str, Any]:
    return read_json(path, MANIFEST_FIELDS)


def _cell(metrics: Mapping[tuple[str, str], dict], model: str, spec: ColumnSpec) -> float | None:
    _, testset, key, scale, decimals = spec
    value = metrics.get((model, testset), {}).get(key)
    return None if value is None else round(value * scale, decimals)


def _model_table(metrics: Mapping[tuple[str, str], dict], models: list[str],
                 columns: list[ColumnSpec]) -> pl.DataFrame:
    """One row per model (in the given order) and one float column per spec; missing cells null."""
    schema = {MODEL_COLUMN: pl.String, **{spec[0]: pl.Float64 for spec in columns}}
    rows = [[model, *(_cell(metrics, model, spec) for spec in columns)] for model in models]
    return pl.DataFrame(rows, schema=schema, orient="row")


MAJORITY_SUFFIX = " majority"
PASS_AT_K_SUFFIX = " pass@"


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _accuracy_with_interval(metrics: dict) -> list[float | None]:
    """Accuracy and its 95 % bounds in % (2 decimals): those of ``metrics.json`` for several samples per prompt
    (a t-interval over prompts), else the Wilson interval; bounds null without ``n`` in the metrics."""
    accuracy, n = metrics.get("accuracy"), metrics.get("n")
    if "accuracy_lower" in metrics:
        return [_percent(metrics[key]) for key in ("accuracy", "accuracy_lower", "accuracy_upper")]
    if accuracy is None or n is None:
        return [_percent(accuracy), None, None]
    return [_percent(value) for value in (accuracy, *wilson_interval(round(accuracy * n), n))]


def _sampled_sizes(metrics: Mapping[tuple[str, str], dict], models: list[str], testset: str) -> list[int]:
    """The k >= 2 that some model's pass@k is reported for on ``testset`` (none: every evaluation has one
    sample per prompt)."""
    return sorted({int(k) for model in models for k in metrics.get((model, testset), {}).get("pass_at_k", {})}
                  - {1})


def _sampled_suffixes(sizes: list[int]) -> list[str]:
    return [MAJORITY_SUFFIX, *(f"{PASS_AT_K_SUFFIX}{k}" for k in sizes)] if sizes else []


def _sampled_cells(metrics: dict, sizes: list[int]) -> list[float | None]:
    """Majority accuracy (a one-sample evaluation's accuracy) and pass@k per k of ``sizes`` in %, null where
    the evaluation has fewer samples than k."""
    if not sizes:
        return []
    one_sample = metrics.get("n_samples", 1) == 1
    majority = metrics.get("majority_accuracy", metrics.get("accuracy") if one_sample else None)
    return [_percent(majority), *(_percent(metrics.get("pass_at_k", {}).get(str(k))) for k in sizes)]


def accuracy_table(metrics: Mapping[tuple[str, str], dict], models: list[str],
                   testsets: list[str]) -> pl.DataFrame:
    """Accuracy in % (2 decimals) with its 95 % interval (:func:`_accuracy_with_interval`): one row per model
    and, per test set, the columns ``<testset>``, ``<testset> lower`` and ``<testset> upper``; null where not
    evaluated. Where some model answered a test set with several samples per prompt, the accuracy is pass@1,
    followed by ``<testset> majority`` (:func:`advdistill.metrics.prompt_outcomes`) and ``<testset> pass@k``
    for each k >= 2 reported there."""
    sizes = {t: _sampled_sizes(metrics, models, t) for t in testsets}
    schema = {MODEL_COLUMN: pl.String,
              **{f"{t}{suffix}": pl.Float64 for t in testsets
                 for suffix in ("", " lower", " upper", *_sampled_suffixes(sizes[t]))}}
    rows = [[model, *(cell for t in testsets for cell in (*_accuracy_with_interval(metrics.get((model, t), {})),
                                                          *_sampled_cells(metrics.get((model, t), {}), sizes[t])))]
            for model in models]
    return pl.DataFrame(rows, schema=schema, orient="row")


def _accuracy_cell(accuracy: float | None, lower: float | None, upper: float | None) -> str | None:
    if accuracy is None:
        return None
    return f"{accuracy:.2f}" if lower is None else f"{accuracy:.2f} [{lower:.2f}, {upper:.2f}]"


def accuracy_cells(accuracy: pl.DataFrame, testsets: list[str]) -> pl.DataFrame:
    """An :func:`accuracy_table` as shown: one text cell per test set, e.g. ``75.00 [30.06, 95.44]``, followed by
    its majority and pass@k cells where the table has them."""
    sampled = {t: [column for column in accuracy.columns
                   if column == f"{t}{MAJORITY_SUFFIX}" or column.startswith(f"{t}{PASS_AT_K_SUFFIX}")]
               for t in testsets}
    rows = [[row[MODEL_COLUMN], *(cell for t in testsets for cell in (
                _accuracy_cell(row[t], row[f"{t} lower"], row[f"{t} upper"]),
                *(None if row[column] is None else f"{row[column]:.2f}" for column in sampled[t])))]
            for row in accuracy.iter_rows(named=True)]
    schema = {MODEL_COLUMN: pl.String, **{column: pl.String for t in testsets for column in (t, *sampled[t])}}
    return pl.DataFrame(rows, schema=schema, orient="row")


def training_compute(train_metrics: Mapping[tuple[str, str], dict]) -> pl.DataFrame:
    """One row per trained model, keyed by (training dataset, model), from its ``train_metrics.json``:
    ``optimizer_steps`` (``global_step``), ``tokens_seen`` (null where not recorded), ``train_items`` and
    ``wall_s`` (``train_runtime``: the whole run, resumed segments included; 1 decimal)."""
    schema = {"train_set": pl.String, "model": pl.String, "optimizer_steps": pl.Int64, "tokens_seen": pl.Int64,
              "train_items": pl.Int64, "wall_s": pl.Float64}
    rows = [[train_set, model, m.get("global_step"), m.get("tokens_seen"), m.get("train_items"),
             None if m.get("train_runtime") is None else round(m["train_runtime"], 1)]
            for (train_set, model), m in train_metrics.items()]
    return pl.DataFrame(rows, schema=schema, orient="row")


LOSS_TERM_KEYS = ("weighted_ce", "contrastive", "wrong_p_mean", "wrong_at_clamp", "grad_norm")


def loss_terms_table(train_metrics: Mapping[tuple[str, str], dict]) -> pl.DataFrame:
    """Per trained model, the loss telemetry of its ``log_history`` over the second half of its logged steps (after
    the early transient): the mean weighted-CE term, the mean λ·Σ contrastive term, the contrastive share of the
    loss, the mean p of wrong responses, the share of them at the clamp and the gradient norm before clipping.
    SFT logs no terms; its cells are null."""
    rows = []
    for (train_set, model), metrics in train_metrics.items():
        logged = [entry for entry in metrics.get("log_history", []) if entry.get("weighted_ce") is not None]
        late = logged[len(logged) // 2:]
        means = {key: (None if not (values := [e[key] for e in late if e.get(key) is not None])
                       else math.fsum(values) / len(values)) for key in LOSS_TERM_KEYS}
        total = (means["weighted_ce"] or 0.0) + (means["contrastive"] or 0.0)
        share = None if means["contrastive"] is None or not total else means["contrastive"] / total
        rows.append([train_set, model, len(late), *(None if means[key] is None else round(means[key], 4)
                                                    for key in LOSS_TERM_KEYS[:2]),
                     None if share is None else round(share, 3),
                     *(None if means[key] is None else round(means[key], 4) for key in LOSS_TERM_KEYS[2:])])
    return pl.DataFrame(rows, schema={"train_set": pl.String, "model": pl.String, "steps": pl.Int64,
                                      "weighted_ce": pl.Float64, "contrastive": pl.Float64,
                                      "contrastive_share": pl.Float64, "wrong_p_mean": pl.Float64,
                                      "wrong_at_clamp": pl.Float64, "grad_norm": pl.Float64}, orient="row")


def paper_accuracy(accuracy: pl.DataFrame, reference: Mapping[str, Mapping[str, float]]) -> pl.DataFrame:
    """The paper's accuracy (``reference``: test set -> model -> %, its Table 2) beside the reproduced one of an
    :func:`accuracy_table`: the Wilson 95 % bounds, the difference reproduced − paper in points and whether the
    paper's value lies inside the interval; a model or test set not evaluated here has null cells."""
    ours = {row[MODEL_COLUMN]: row for row in accuracy.iter_rows(named=True)}
    rows = []
    for testset, models in reference.items():
        for model, paper in models.items():
            row = ours.get(model, {})
            value, lower, upper = (row.get(f"{testset}{suffix}") for suffix in ("", " lower", " upper"))
            rows.append([testset, model, paper, value, lower, upper,
                         None if value is None else round(value - paper, 2),
                         None if lower is None else lower <= paper <= upper])
    return pl.DataFrame(rows, schema={"testset": pl.String, "model": pl.String, "paper": pl.Float64,
                                      "reproduced": pl.Float64, "lower": pl.Float64, "upper": pl.Float64,
                                      "difference_points": pl.Float64, "paper_in_interval": pl.Boolean},
                        orient="row")


def paper_lengths(metrics: Mapping[tuple[str, str], dict],
                  reference: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pl.DataFrame:
    """The paper's mean response tokens of correct and wrong answers (``reference``: test set -> model ->
    ``correct``/``wrong``, its Table 7) beside the reproduced ones."""
    rows = [[testset, model, paper.get("correct"), metrics.get((model, testset), {}).get("mean_tokens_correct"),
             paper.get("wrong"), metrics.get((model, testset), {}).get("mean_tokens_wrong")]
            for testset, models in reference.items() for model, paper in models.items()]
    return pl.DataFrame(rows, schema={"testset": pl.String, "model": pl.String,
                                      f"paper {CORRECT_MARK}": pl.Float64, f"reproduced {CORRECT_MARK}": pl.Float64,
                                      f"paper {WRONG_MARK}": pl.Float64, f"reproduced {WRONG_MARK}": pl.Float64},
                        orient="row").with_columns(pl.col(f"reproduced {CORRECT_MARK}", f"reproduced {WRONG_MARK}")
                                                   .round(1))


def paper_training_hours(compute: pl.DataFrame | None,
                         reference: Mapping[str, Mapping[str, float]]) -> pl.DataFrame:
    """The paper's training hours (``reference``: training set -> model -> hours, its Table 3, on hardware it
    does not name) beside the measured wall hours of a :func:`training_compute` table."""
    measured = {} if compute is None else {(r["train_set"], r["model"]): r["wall_s"]
                                           for r in compute.iter_rows(named=True)}
    rows = [[train_set, model, hours, None if measured.get((train_set, model)) is None
             else round(measured[(train_set, model)] / 3600, 3)]
            for train_set, models in reference.items() for model, hours in models.items()]
    return pl.DataFrame(rows, schema={"train_set": pl.String, "model": pl.String, "paper_hours": pl.Float64,
                                      "measured_hours": pl.Float64}, orient="row")


def behaviour_tables(metrics: Mapping[tuple[str, str], dict], models: list[str],
                     testsets: list[str]) -> dict[str, pl.DataFrame]:
    """The verbosity, degeneracy and template adherence tables, keyed by those names.

    ``verbosity`` has the columns ``<testset> ✓``, ``<testset> ✗`` (mean tokens of correct and wrong
    answers, 1 decimal) and ``<testset> ratio`` (wrong/correct, 2 decimals); ``degeneracy`` has
    ``<testset> ✓`` and ``<testset> ✗`` (3 decimals); ``template_adherence`` has one column per
    test set in % (2 decimals).
    """
    verbosity = [spec for t in testsets for spec in (
        (f"{t} {CORRECT_MARK}", t, "mean_tokens_correct", 1.0, 1),
        (f"{t} {WRONG_MARK}", t, "mean_tokens_wrong", 1.0, 1),
        (f"{t} ratio", t, "verbosity_ratio", 1.0, 2))]
    degeneracy = [spec for t in testsets for spec in (
        (f"{t} {CORRECT_MARK}", t, "degeneracy_correct", 1.0, 3),
        (f"{t} {WRONG_MARK}", t, "degeneracy_wrong", 1.0, 3))]
    adherence = [(t, t, "template_adherence", 100.0, 2) for t in testsets]
    return {
        "verbosity": _model_table(metrics, models, verbosity),
        "degeneracy": _model_table(metrics, models, degeneracy),
        "template_adherence": _model_table(metrics, models, adherence),
    }


def read_benchmark(path: Path) -> pl.DataFrame:
    """Wall seconds, CPU seconds and max RSS (MB) of each run in a Snakemake benchmark TSV.

    'NA', '-' and other non-numeric values, and columns an older Snakemake does not write, become null.
    """
    try:
        raw = pl.read_csv(path, separator="\t", infer_schema=False)
    except (OSError, UnicodeDecodeError, pl.exceptions.PolarsError) as err:  # an empty file: NoDataError
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable Snakemake benchmark TSV ({first_line})") from err
    return raw.select(
        (pl.col(source).cast(pl.Float64, strict=False) if source in raw.columns
         else pl.lit(None, dtype=pl.Float64)).alias(target)
        for source, target in BENCHMARK_COLUMNS.items())


def memory_plan_table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """One row per planned stage and model (``advdistill.memory_plan.plan_rows``): GPUs, GiB per GPU, budget,
    whether it fits (null: unknown shape or no ``gpu_mem_gb``), where the shape came from and the settings."""
    schema = {"stage": pl.String, "model": pl.String, "gpus": pl.Int64, "gib_per_gpu": pl.Float64,
              "budget_gib": pl.Float64, "fits": pl.Boolean, "shape": pl.String, "note": pl.String}
    return pl.DataFrame([[r["stage"], r["model"], r["gpus"], r["gib"], r["budget_gib"], r["fits"], r["origin"],
                          r["note"]] for r in rows], schema=schema, orient="row")


def _total_or_none(values: pl.Series) -> float | None:
    return None if values.null_count() == values.len() else round(float(values.sum()), 2)


def stage_costs(benchmark_files: Mapping[str, list[Path]]) -> pl.DataFrame:
    """Per stage: ``jobs`` (benchmark files), ``total_wall_s`` and ``total_cpu_s`` (summed over every
    run recorded in them) and ``max_rss_mb``; a total is null when no run recorded a value."""
    schema = {"stage": pl.String, "jobs": pl.Int64, "total_wall_s": pl.Float64,
              "total_cpu_s": pl.Float64, "max_rss_mb": pl.Float64}
    empty_runs = pl.DataFrame(schema={target: pl.Float64 for target in BENCHMARK_COLUMNS.values()})
    rows = []
    for stage, paths in benchmark_files.items():
        runs = pl.concat([empty_runs, *(read_benchmark(Path(p)) for p in paths)])
        rows.append([stage, len(paths), _total_or_none(runs["wall_s"]), _total_or_none(runs["cpu_s"]),
                     runs["max_rss_mb"].max()])
    return pl.DataFrame(rows, schema=schema, orient="row")


def provenance_table(manifests: list[Path]) -> pl.DataFrame:
    """One row per stage manifest: output, settings hash, code version, image and its sha256, seed, wall time."""
    rows = []
    for path in manifests:
        manifest = read_manifest(path)
        output = str(path).removesuffix(".manifest.json")
        rows.append({
            "stage": manifest.get("stage"),
            "output": output,
            "settings_sha256": (manifest.get("settings_sha256") or "")[:12],
            "version": manifest.get("package_version"),
            "git_commit": (manifest.get("git_commit") or "")[:10] or None,
            "container": manifest.get("container"),
            "container_sha256": (manifest.get("container_sha256") or "")[:12] or None,
            "seed": manifest.get("seed"),
            "wall_s": manifest.get("wall_seconds"),
        })
    return pl.DataFrame(rows, schema={"stage": pl.String, "output": pl.String, "settings_sha256": pl.String,
                                      "version": pl.String, "git_commit": pl.String, "container": pl.String,
                                      "container_sha256": pl.String, "seed": pl.Int64, "wall_s": pl.Float64})


def stage_jobs(manifests: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """(output, manifest) of every job behind ``manifests``: each stage's and, for a merge, those of the parts it
    joined (the sampling jobs, which loaded the teacher and ran on the GPUs)."""
    jobs = []
    for path in manifests:
        manifest = read_manifest(path)
        jobs += [*(manifest.get("parts") or {}).items(), (str(path).removesuffix(".manifest.json"), manifest)]
    return jobs


def _gpus(names: list[str]) -> str | None:
    """``2 × NVIDIA H100 80GB HBM3`` for two alike GPUs."""
    counts = {name: names.count(name) for name in names}
    return ", ".join(f"{n} × {name}" for name, n in counts.items()) or None


def _merged(rows: list[tuple[str, tuple]], columns: list[str]) -> pl.DataFrame:
    """One row per distinct value tuple (in order of first appearance), with the stages that gave it and how many
    jobs: ``rows`` are (stage, values) pairs."""
    merged: dict[tuple, list[str]] = {}
    for stage, values in rows:
        merged.setdefault(values, []).append(stage)
    return pl.DataFrame([[", ".join(filter(None, dict.fromkeys(stages))) or None, len(stages), *values]
                         for values, stages in merged.items()],
                        schema={"stages": pl.String, "jobs": pl.Int64, **{c: pl.String for c in columns}},
                        orient="row")


def environment_table(jobs: list[tuple[str, dict[str, Any]]]) -> pl.DataFrame:
    """Versions and machines per job (manifest ``environment``), identical rows merged; a job whose manifest
    predates the environment record gives a row of nulls. The package columns are those the manifests name, in
    their order (the report does not import the module that writes them: its code would become the report's)."""
    environments = [manifest.get("environment") or {} for _, manifest in jobs]
    names = list(dict.fromkeys(name for env in environments for name in env.get("packages") or {}))
    columns = ["host", "python", *names, "cuda_runtime", "cuda_driver", "cpu", "gpus"]
    rows = []
    for (_, manifest), env in zip(jobs, environments):
        packages = env.get("packages") or {}
        rows.append((manifest.get("stage"), (manifest.get("host"), env.get("python"),
                                             *(packages.get(name) for name in names),
                                             env.get("cuda_runtime"), env.get("cuda_driver"), env.get("cpu"),
                                             _gpus(env.get("gpus") or []))))
    return _merged(rows, columns)


def models_table(jobs: list[tuple[str, dict[str, Any]]]) -> pl.DataFrame:
    """The models the jobs loaded (manifest ``model``): as given, the folder, the sha256 of its config.json (first
    12 digits; the manifest has all) and the hub id a stand-in stands in for; identical rows merged."""
    rows = [(manifest.get("stage"), (model["source"], model.get("folder"), (model.get("config_sha256") or "")[:12]
                                     or None, model.get("stands_in_for")))
            for _, manifest in jobs if (model := manifest.get("model"))]
    return _merged(rows, ["model", "folder", "config_sha256", "stands_in_for"])


def stand_ins(jobs: list[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """Hub id -> the stand-in folders (or trained descendants of one) that jobs loaded in its place."""
    found: dict[str, list[str]] = {}
    for _, manifest in jobs:
        model = manifest.get("model") or {}
        if model.get("stands_in_for"):
            folders = found.setdefault(model["stands_in_for"], [])
            if (folder := model.get("folder") or model["source"]) not in folders:
                folders.append(folder)
    return found
