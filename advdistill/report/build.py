"""The report stage itself: read the run's outputs, write every table, figure and the page."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from advdistill import paths
from advdistill.errors import InputError
from advdistill.io import (
    atomic_directory,
    atomic_write,
    check_rows,
    manifest_path,
    read_json,
    read_parquet,
    write_json,
)
from advdistill.metrics import prompt_outcomes
from advdistill.report.comparisons import has_replicates, headlines, paired_comparisons, replicate_summary
from advdistill.report.page import few_shot_notes, html_page, sampling_notes, write_markdown_table
from advdistill.report.plots import (
    plot_accuracy_bars,
    plot_advantage_histogram,
    plot_correct_per_group,
    plot_length_distributions,
    plot_loss_terms,
    plot_training_curves,
)
from advdistill.report.tables import (
    METRICS_FIELDS,
    NOT_RECORDED,
    TRAIN_METRICS_FIELDS,
    accuracy_cells,
    accuracy_table,
    behaviour_tables,
    loss_terms_table,
    memory_plan_table,
    paper_accuracy,
    paper_lengths,
    paper_training_hours,
    stage_costs,
    training_compute,
)
from advdistill.schema import load_schema

# Per-response columns of responses.parquet the report reads: outcomes for the paired tests, lengths for the plots.
RESPONSE_COLUMNS = {"prompt_id": pl.String, "sample_idx": pl.Int64, "n_tokens": pl.Int64, "correct": pl.Boolean}
# Columns of a scored.parquet the figures of the training groups read.
SCORED_COLUMNS = {"prompt_id": pl.String, "correct": pl.Boolean, "advantage": pl.Float64, "kept": pl.Boolean}


REQUIRED_METRICS = ("n", "accuracy")
"""Keys every evaluation's metrics.json has: without them the file says nothing, and the report would show the
pair as never evaluated."""


def read_metrics(path: Path) -> dict[str, Any]:
    metrics = read_json(path, METRICS_FIELDS)
    missing = [key for key in REQUIRED_METRICS if key not in metrics]
    if missing:
        raise InputError(f"{path}: no key(s) {', '.join(map(repr, missing))} (numbers), which every evaluation's "
                         "metrics.json has; was it cut down or edited?")
    return metrics


def read_scored(path: Path) -> pl.DataFrame:
    """The :data:`SCORED_COLUMNS` of a scored.parquet, whose advantages must be finite numbers (they are binned)."""
    scored = read_parquet(path, SCORED_COLUMNS).select(*SCORED_COLUMNS)
    check_rows(scored, path, {"a null, NaN or infinite advantage": ~pl.col("advantage").is_finite().fill_null(False)},
               ["prompt_id", "advantage"])
    return scored


def read_responses(path: Path) -> pl.DataFrame:
    """The :data:`RESPONSE_COLUMNS` of an evaluation's ``responses.parquet``. A repeated (``prompt_id``,
    ``sample_idx``) is an error: it would count that response twice in the prompt's outcome."""
    responses = read_parquet(path, RESPONSE_COLUMNS).select(*RESPONSE_COLUMNS)
    repeated = responses.filter(pl.struct("prompt_id", "sample_idx").is_duplicated())
    if repeated.height:
        raise InputError(f"{path}: prompt_id {repeated['prompt_id'][0]!r} sample_idx {repeated['sample_idx'][0]} "
                         f"occurs more than once")
    return responses


def build_report(metrics_files: Mapping[tuple[str, str], Path], scored_files: Mapping[str, Path],
                 responses_files: Mapping[tuple[str, str], Path], benchmark_files: Mapping[str, list[Path]],
                 manifests: list[Path] | None, out_dir: Path, models: list[str],
                 testsets: list[str], memory_plan: list[dict[str, Any]] | None = None,
                 train_metrics_files: Mapping[tuple[str, str], Path] | None = None,
                 runs: Mapping[str, Mapping[str, Any]] | None = None,
                 paper: Mapping[str, Any] | None = None, run: Mapping[str, Any] | None = None) -> Path:
    """Write the report's tables (``<name>.md`` and ``<name>.csv``), figures (``plots/*.png``) and
    ``index.html`` under ``out_dir``; return the path of ``index.html``.

    ``metrics_files`` and ``responses_files`` are keyed by (model, test set), ``scored_files`` by
    training dataset and ``benchmark_files`` by stage. Models and test sets appear in the given order;
    (model, test set) pairs without files are left as empty cells. ``memory_plan`` (rows of
    ``advdistill.memory_plan.plan_rows``, a GPU run's) is written as ``memory_plan.json`` and a table.
    ``train_metrics_files`` (``train_metrics.json`` keyed by (training dataset, model)) give the training
    compute table. ``runs`` describes trained runs by name (``student``, ``objective``, ``variant``, ``seed``;
    plain names are understood without it); with several seeds or variants the report adds the replicate
    summary. ``paper`` is a config's ``paper_reference`` (the paper's own numbers, shown beside ours). ``run`` (its
    ``name`` and ``config_files``) heads the page with the time it was built.
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    metrics = {key: read_metrics(path) for key, path in metrics_files.items()}
    responses = {key: read_responses(path) for key, path in responses_files.items()}
    outcomes = {key: prompt_outcomes(frame) for key, frame in responses.items()}
    paper = paper or {}

    accuracy = accuracy_table(metrics, models, testsets)
    comparisons = paired_comparisons(outcomes, models, testsets, runs)
    replicates = replicate_summary(metrics, outcomes, models, testsets, runs)
    tables = {"accuracy": accuracy_cells(accuracy, testsets)}
    csv_tables = {"accuracy": accuracy}
    if has_replicates(replicates):
        tables["replicates"] = replicates
    if comparisons.height:
        tables["paired_comparisons"] = comparisons
    if paper.get("accuracy"):
        tables["paper_accuracy"] = paper_accuracy(accuracy, paper["accuracy"])
    tables.update(behaviour_tables(metrics, models, testsets))
    if paper.get("mean_tokens"):
        tables["paper_lengths"] = paper_lengths(metrics, paper["mean_tokens"])
    train_metrics = {key: read_json(path, TRAIN_METRICS_FIELDS) for key, path in (train_metrics_files or {}).items()}
    compute = training_compute(train_metrics) if train_metrics else None
    if compute is not None:
        tables["training_compute"] = compute.with_columns(pl.col("tokens_seen").cast(pl.String)
                                                          .fill_null(NOT_RECORDED))
        csv_tables["training_compute"] = compute
        terms = loss_terms_table(train_metrics)
        if terms["weighted_ce"].drop_nulls().len():
            tables["loss_terms"] = terms
    if paper.get("training_hours"):
        tables["paper_training_hours"] = paper_training_hours(compute, paper["training_hours"])
    if benchmark_files:
        tables["stage_costs"] = stage_costs(benchmark_files)
    if memory_plan:
        write_json(memory_plan, out_dir / "memory_plan.json")
        tables["memory_plan"] = memory_plan_table(memory_plan)
    table_files = {name: write_markdown_table(df, out_dir / f"{name}.md", csv_tables.get(name))
                   for name, df in tables.items()}

    notes = {"accuracy": [*few_shot_notes(metrics, models, testsets), *sampling_notes(metrics, models, testsets)]}
    intervals = ("95 % intervals (Wilson; Student-t over prompts for several samples per prompt)"
                 if any("accuracy_lower" in m for m in metrics.values()) else "Wilson 95 % intervals")
    figures = [(f"Accuracy (%) per test set and model, {intervals}",
                plot_accuracy_bars(accuracy, testsets, plots_dir / "accuracy.png"))]
    for dataset, path in scored_files.items():
        scored = read_scored(path)
        caption = f"{dataset}: advantages of the responses in kept groups"
        figures.append((caption, plot_advantage_histogram(scored, plots_dir / paths.advantages_plot(dataset),
                                                          title=caption)))
        caption = f"{dataset}: correct teacher responses per group"
        figures.append((caption, plot_correct_per_group(scored, plots_dir / paths.correct_per_group_plot(dataset),
                                                        title=caption)))
    for (train_set, model), trained in train_metrics.items():
        caption = f"{model} on {train_set}: training loss and its terms per logged step"
        figures.append((caption, plot_loss_terms(trained.get("log_history", []),
                                                 plots_dir / paths.loss_terms_plot(train_set, model), caption)))
        caption = f"{model} on {train_set}: training and validation loss and learning rate per step"
        figures.append((caption, plot_training_curves(trained.get("log_history", []),
                                                      plots_dir / paths.training_curves_plot(train_set, model),
                                                      caption)))
    for testset in testsets:
        by_model = {model: responses[(model, testset)] for model in models if (model, testset) in responses}
        if by_model:
            caption = f"{testset}: response tokens of correct and wrong answers"
            figures.append((caption, plot_length_distributions(by_model, plots_dir / paths.lengths_plot(testset),
                                                               title=caption)))

    if paper.get("notes"):
        notes["paper_accuracy"] = list(paper["notes"])
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = html_page(tables, table_files, figures, [Path(m) for m in manifests or []], out_dir, notes,
                     headlines(comparisons, replicates), run, built)
    return atomic_write(out_dir / "index.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))


# A name as the config schema allows it, one path component; a trained run's name joins such names with '@' (its
# variant and seed), as the workflow's model wildcard takes it.
NAME = load_schema()["$defs"]["name"]["pattern"].removeprefix("^").removesuffix("$")
RUN_NAME = f"{NAME}(@{NAME})*"

PLAN_SECTIONS = {"models": list, "testsets": list, "evaluations": list, "scored": dict}
OPTIONAL_PLAN_SECTIONS = {"trained": list, "provenance": list, "benchmarks": dict, "run": dict}
PLAN_ENTRY_KEYS = {"evaluations": ("model", "testset", "metrics", "responses"),
                   "trained": ("train_set", "model", "student", "objective", "path")}


def check_plan(plan: dict[str, Any]) -> None:
    """The report rule writes the plan; a hand-written one that lacks a part, or holds a name that is no safe file
    name, is named here, before any file is read or written (``trained``, ``provenance``, ``benchmarks`` and ``run``
    may be absent)."""
    present = {section: kind for section, kind in OPTIONAL_PLAN_SECTIONS.items() if section in plan}
    for section, kind in {**PLAN_SECTIONS, **present}.items():
        if not isinstance(plan.get(section), kind):
            raise InputError(f"--plan: '{section}' must be a JSON {'array' if kind is list else 'object'} "
                             f"(see advdistill report --help)")
    for section, keys in PLAN_ENTRY_KEYS.items():
        for i, entry in enumerate(plan.get(section, [])):
            missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise InputError(f"--plan: {section}[{i}] lacks {', '.join(missing)}")
    run = plan.get("run", {})
    files = run.get("config_files", [])
    if not isinstance(run.get("name", ""), str) or not (isinstance(files, list) and all(isinstance(f, str)
                                                                                         for f in files)):
        raise InputError("--plan: 'run' must have a string 'name' and an array of strings 'config_files'")
    for where, name, pattern in plan_file_names(plan):
        if not (isinstance(name, str) and re.fullmatch(pattern, name)):
            joined = ", or such names joined by '@' (its variant and seed)" if pattern == RUN_NAME else ""
            raise InputError(f"--plan {where}: {name!r} is not a safe name: the report's file names hold it, so it "
                             f"must be {load_schema()['$defs']['name']['description']}{joined}")


def plan_file_names(plan: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Every value of a well-formed ``plan`` that becomes part of a file name under --out-dir (the plots'), as
    (where in the plan, value, the pattern it must match). Writing creates missing folders, so a name such as
    ``../../x`` would put a plot outside --out-dir."""
    return [*(("scored", dataset, NAME) for dataset in plan["scored"]),
            *((f"testsets[{i}]", testset, NAME) for i, testset in enumerate(plan["testsets"])),
            *((f"trained[{i}].{key}", run[key], pattern) for i, run in enumerate(plan.get("trained", []))
              for key, pattern in (("train_set", NAME), ("model", RUN_NAME)))]


def plan_inputs(plan: dict[str, Any]) -> list[tuple[str, Path]]:
    """Every file or folder ``plan`` names for the report to read, as (where in the plan, path), from whatever parts
    of it are well-formed (:func:`check_plan` names the others): the report's output must be none of them, nor
    inside or around one."""
    def entries(section: str, kind: type) -> Any:
        value = plan.get(section)
        return value if isinstance(value, kind) else kind()

    found = []
    for i, entry in enumerate(entries("evaluations", list)):
        for key in ("metrics", "responses"):
            if isinstance(entry, dict) and isinstance(entry.get(key), str):
                found.append((f"evaluations[{i}].{key}", Path(entry[key])))
    found += [(f"scored.{name}", Path(path)) for name, path in entries("scored", dict).items() if isinstance(path, str)]
    found += [(f"trained[{i}].path", Path(entry["path"])) for i, entry in enumerate(entries("trained", list))
              if isinstance(entry, dict) and isinstance(entry.get("path"), str)]
    for i, output in enumerate(entries("provenance", list)):
        if isinstance(output, str):
            found.append((f"provenance[{i}] (its manifest)", manifest_path(Path(output))))
    for stage, files in entries("benchmarks", dict).items():
        found += [(f"benchmarks.{stage}[{i}]", Path(f)) for i, f in enumerate(files if isinstance(files, list) else [])
                  if isinstance(f, str)]
    return [(f"--plan {where}", path) for where, path in found]


def run_report(plan: dict[str, Any], out_dir: Path) -> Path:
    """The run's report from the files the report rule declares as its inputs, as ``plan`` lists them.

    ``plan`` has ``models`` (row order), ``testsets`` (column order), ``evaluations`` (``model``, ``testset``,
    ``metrics`` and ``responses`` paths), ``scored`` (training dataset -> scored.parquet), ``trained`` (one per
    trained run: ``train_set``, ``model``, ``student``, ``objective``, ``variant``, ``seed`` and its ``path``,
    a folder holding ``train_metrics.json``), ``provenance`` (files whose ``.manifest.json`` the provenance
    table lists), optionally ``memory`` (a GPU run's memory plan rows) and ``paper`` (the config's
    ``paper_reference``) and ``benchmarks`` (stage -> the benchmark files of this run's jobs: the stage costs
    count those that exist, and no other file) and ``run`` (``name``: the run's name, ``config_files``: the config
    files it ran with), which heads the page.
    """
    check_plan(plan)
    metrics_files = {(e["model"], e["testset"]): Path(e["metrics"]) for e in plan["evaluations"]}
    responses_files = {(e["model"], e["testset"]): Path(e["responses"]) for e in plan["evaluations"]}
    scored_files = {name: Path(path) for name, path in plan["scored"].items()}
    benchmark_files = {stage: existing for stage, files in plan.get("benchmarks", {}).items()
                       if (existing := [Path(f) for f in files if Path(f).is_file()])}
    manifests = [path for output in plan.get("provenance", []) if (path := manifest_path(Path(output))).is_file()]
    train_metrics_files = {(run["train_set"], run["model"]): Path(run["path"]) / "train_metrics.json"
                           for run in plan.get("trained", [])}
    runs = {run["model"]: run for run in plan.get("trained", [])}
    # built in a temporary folder that then replaces out_dir, which only a folder of this package may be
    with atomic_directory(out_dir, "report", "--out-dir") as folder:
        index = build_report(metrics_files, scored_files, responses_files, benchmark_files, manifests, folder,
                             plan["models"], plan["testsets"], plan.get("memory"), train_metrics_files, runs,
                             plan.get("paper"), plan.get("run"))
    return Path(out_dir) / index.relative_to(folder)
