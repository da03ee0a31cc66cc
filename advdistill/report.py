"""The report stage: the paper's result tables and figures, rebuilt from the pipeline's outputs.

Tables follow the layouts of the paper (arXiv 2507.00054): accuracy per model and test set (§5.1),
mean response length of correct and wrong answers (Appendix C.2, Table 7) with the verbosity ratio
(Figure 6), degeneracy of correct and wrong answers (Appendix C.1, Table 6), template adherence
(Figure 4) and the compute cost of each stage (Table 3, here measured by Snakemake benchmarks).
Figures show the advantages of the kept training groups (Figure 2a), the number of correct teacher
responses per group (Figure 2b), accuracy as grouped bars and response lengths of correct and wrong
answers. Each accuracy comes with its Wilson 95 % interval; paired comparisons of the trained students with
each other, their base model and the teacher give the accuracy difference with its 95 % interval and an exact
McNemar p-value on the prompts both models answered (:mod:`advdistill.stats`), and the first comparison per test
set heads the page; a training compute table lists optimizer steps, items and wall time per trained student.
Each table is written as Markdown and CSV, each figure as PNG, and ``index.html`` shows them
all on one page with the run manifests as provenance. Every file is written to a temporary sibling
and moved into place, so an interrupted run leaves no half-written artefact.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from advdistill.errors import InputError
from advdistill.io import atomic_write, manifest_path, read_json, read_parquet, write_json
from advdistill.stats import mcnemar_exact, mean_t_interval, paired_difference, wilson_interval

MODEL_COLUMN = "model"
CORRECT_MARK = "✓"
WRONG_MARK = "✗"
MISSING_CELL = "–"
NOT_RECORDED = "n/a"

# Training objectives, the method first: two trained students are compared as "advdistill vs sft".
OBJECTIVES = ("advdistill", "sft")
BASE_SUFFIX = "base"
TEACHER_ROLE = "teacher"
# Per-prompt columns of responses.parquet the report reads: outcomes for the paired tests, lengths for the plots.
RESPONSE_COLUMNS = {"prompt_id": pl.String, "n_tokens": pl.Int64, "correct": pl.Boolean}

# Snakemake benchmark column -> report column; max_rss is already in MB.
BENCHMARK_COLUMNS = {"s": "wall_s", "cpu_time": "cpu_s", "max_rss": "max_rss_mb"}

TABLE_CAPTIONS = {
    "accuracy": ("Accuracy (%) of each model on each test set (layout of the paper's §5.1 results table), with its "
                 "Wilson 95 % interval in brackets; the CSV has the bounds as '<test set> lower' and "
                 "'<test set> upper'."),
    "paired_comparisons": ("Each trained student against the other trained students of its base, its base model "
                           "and the teacher, per test set, on the prompts both answered (n): accuracy difference "
                           "model − versus in points with its 95 % Wald interval of a paired difference, b (model "
                           "right, versus wrong), c (the reverse) and the exact two-sided McNemar p-value."),
    "replicates": ("Per trained student, objective and variant over its seeds: accuracy (%) as the mean with its "
                   "Student-t 95 % interval, mean template adherence (%), and against the plain SFT run of the same "
                   "seed the mean accuracy difference in points with its t-interval, the discordant counts b and c "
                   "summed over seeds and the exact McNemar p of those pooled counts (the same prompts recur "
                   "across seeds, so this p-value is on the optimistic side). Bounds need two seeds or more."),
    "loss_terms": ("AdvDistill loss telemetry per trained model (train_metrics.json, log_history), averaged over the "
                   "second half of the logged steps: the weighted cross-entropy term, the λ·Σ contrastive term, the "
                   "contrastive share of the loss, the mean p of wrong responses, the share of wrong responses at "
                   "the clamp p_max (no gradient there) and the gradient norm before clipping."),
    "paper_accuracy": ("The paper's accuracy (%, its Table 2) beside the reproduced one with its Wilson 95 % "
                       "interval, the difference reproduced − paper in points and whether the paper's value lies "
                       "inside our interval."),
    "paper_lengths": (f"The paper's mean response tokens of correct ({CORRECT_MARK}) and wrong ({WRONG_MARK}) "
                      "answers (its Table 7) beside the reproduced ones."),
    "paper_training_hours": ("The paper's training hours (its Table 3, hardware not named) beside the measured "
                             "wall-clock hours of each training run here."),
    "training_compute": ("Per trained student (train_metrics.json): optimizer steps, tokens seen (n/a where the "
                         "trainer did not record them), training items (SFT pairs or AdvDistill groups) and "
                         "wall-clock seconds of the whole training run."),
    "verbosity": (f"Mean response tokens of correct ({CORRECT_MARK}) and wrong ({WRONG_MARK}) answers and "
                  f"their ratio {WRONG_MARK}/{CORRECT_MARK} (paper Table 7 and Figure 6)."),
    "degeneracy": (f"Mean repeated word n-gram rate of correct ({CORRECT_MARK}) and wrong ({WRONG_MARK}) "
                   "answers (layout of paper Table 6; our rate is a 0-1 share defined in "
                   "advdistill.metrics and is not on the scale of the paper's values)."),
    "template_adherence": "Share (%) of answers that follow the requested format (paper Figure 4).",
    "stage_costs": ("Compute per pipeline stage from Snakemake benchmarks: jobs, summed wall-clock and "
                    "CPU seconds, peak resident memory (compare paper Table 3)."),
    "memory_plan": ("Planned peak memory per GPU of each GPU stage (advdistill/memory_plan.py, at planning time), "
                    "against resources.gpu_mem_gb (vLLM: its gpu_memory_utilization share); also memory_plan.json."),
}

# (column name, test set, metrics key, scale, decimals) of one column of a model x test set table.
ColumnSpec = tuple[str, str, str, float, int]


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


def _accuracy_with_interval(metrics: dict) -> list[float | None]:
    """Accuracy and its Wilson 95 % bounds in % (2 decimals); bounds null without ``n`` in the metrics."""
    accuracy, n = metrics.get("accuracy"), metrics.get("n")
    if accuracy is None or n is None:
        return [None if accuracy is None else round(100 * accuracy, 2), None, None]
    return [round(100 * value, 2) for value in (accuracy, *wilson_interval(round(accuracy * n), n))]


def accuracy_table(metrics: Mapping[tuple[str, str], dict], models: list[str],
                   testsets: list[str]) -> pl.DataFrame:
    """Accuracy in % (2 decimals) with its Wilson 95 % interval: one row per model and, per test set, the
    columns ``<testset>``, ``<testset> lower`` and ``<testset> upper``; null where not evaluated."""
    schema = {MODEL_COLUMN: pl.String,
              **{f"{t}{suffix}": pl.Float64 for t in testsets for suffix in ("", " lower", " upper")}}
    rows = [[model, *(cell for t in testsets for cell in _accuracy_with_interval(metrics.get((model, t), {})))]
            for model in models]
    return pl.DataFrame(rows, schema=schema, orient="row")


def _accuracy_cell(accuracy: float | None, lower: float | None, upper: float | None) -> str | None:
    if accuracy is None:
        return None
    return f"{accuracy:.2f}" if lower is None else f"{accuracy:.2f} [{lower:.2f}, {upper:.2f}]"


def accuracy_cells(accuracy: pl.DataFrame, testsets: list[str]) -> pl.DataFrame:
    """An :func:`accuracy_table` as shown: one text cell per test set, e.g. ``75.00 [30.06, 95.44]``."""
    rows = [[row[MODEL_COLUMN], *(_accuracy_cell(row[t], row[f"{t} lower"], row[f"{t} upper"]) for t in testsets)]
            for row in accuracy.iter_rows(named=True)]
    return pl.DataFrame(rows, schema={MODEL_COLUMN: pl.String, **{t: pl.String for t in testsets}}, orient="row")


class ModelRole(NamedTuple):
    """What an evaluated model is: its student (the model's own name for the teacher), its role (``teacher``,
    ``base`` or the training objective), and for a trained run its variant (None: the plain training section)
    and seed (None where unknown)."""

    student: str
    role: str
    variant: str | None = None
    seed: int | None = None


def _role_from_name(model: str) -> ModelRole:
    """The role of a plain model name: ``<student>-<objective>``, ``<student>-base`` or the teacher."""
    student, _, suffix = model.rpartition("-")
    if student and suffix in (*OBJECTIVES, BASE_SUFFIX):
        return ModelRole(student, suffix)
    return ModelRole(model, TEACHER_ROLE)


def model_roles(models: list[str], runs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, ModelRole]:
    """Each model's :class:`ModelRole`: from ``runs`` (name -> ``student``, ``objective``, ``variant``, ``seed``,
    as the report rule's plan gives the trained runs), else from the plain name."""
    runs = runs or {}
    return {model: (ModelRole(runs[model]["student"], runs[model]["objective"], runs[model].get("variant"),
                              runs[model].get("seed"))
                    if model in runs else _role_from_name(model)) for model in models}


def is_trained(role: ModelRole) -> bool:
    return role.role in OBJECTIVES


def run_group_name(role: ModelRole) -> str:
    """A trained run's name without its seed suffix: ``<student>-<objective>[@<variant>]``."""
    return f"{role.student}-{role.role}" + (f"@{role.variant}" if role.variant else "")


def reference_sft(roles: Mapping[str, ModelRole]) -> dict[tuple[str, int | None], str]:
    """The SFT run that every trained run of a (student, seed) is compared with: the plain SFT run, else (a
    configuration with ``plain_runs: false``) the first SFT variant run in config order."""
    plain, first_variant = {}, {}
    for model, role in roles.items():
        if role.role == "sft":
            (plain if role.variant is None else first_variant).setdefault((role.student, role.seed), model)
    return {**first_variant, **plain}


def comparison_pairs(models: list[str], runs: Mapping[str, Mapping[str, Any]] | None = None) -> list[tuple[str, str]]:
    """(model, versus) pairs to compare. Per student and seed (in order of appearance): the plain trained runs
    with each other (AdvDistill first), then each of them with ``<student>-base`` and with the teacher (every
    model that is neither trained nor a base); then each variant's run with the :func:`reference_sft` run of its
    seed (the plain run of its own objective where the student has no SFT run)."""
    roles = model_roles(models, runs)
    teachers = [model for model, role in roles.items() if role.role == TEACHER_ROLE]
    references = reference_sft(roles)
    trained: dict[tuple[str, int | None], list[str]] = {}
    for model, role in roles.items():
        if is_trained(role):
            trained.setdefault((role.student, role.seed), []).append(model)
    pairs: list[tuple[str, str]] = []
    for (student, seed), names in trained.items():
        plain = sorted((m for m in names if roles[m].variant is None), key=lambda m: OBJECTIVES.index(roles[m].role))
        pairs += combinations(plain, 2)
        base_and_teachers = [m for m in (f"{student}-{BASE_SUFFIX}", *teachers) if m in roles]
        pairs += [(model, reference) for model in plain for reference in base_and_teachers]
        plain_by_objective = {roles[m].role: m for m in plain}
        for model in names:
            versus = references.get((student, seed), plain_by_objective.get(roles[model].role))
            if roles[model].variant is not None and versus not in (None, model):
                pairs.append((model, versus))
    return pairs


def paired_comparison(first: pl.DataFrame, second: pl.DataFrame) -> dict[str, Any]:
    """Compare two models' per-prompt outcomes (``prompt_id``, ``correct``) on the prompts both answered.

    Returns ``n`` (those prompts), ``difference_points`` (accuracy of ``first`` minus ``second`` in points)
    with ``ci_lower``/``ci_upper`` (:func:`advdistill.stats.paired_difference`), ``b`` (first right, second
    wrong), ``c`` (the reverse), ``mcnemar_p`` (:func:`advdistill.stats.mcnemar_exact`; null, like the
    difference, when no prompt is shared) and a ``note`` when the two prompt sets differ.
    """
    joined = first.join(second, on="prompt_id", suffix="_versus")
    n = joined.height
    b = joined.filter(pl.col("correct") & ~pl.col("correct_versus")).height
    c = joined.filter(~pl.col("correct") & pl.col("correct_versus")).height
    note = (None if n == first.height == second.height
            else f"compared on the {n} prompts both answered ({first.height} and {second.height} evaluated)")
    row = {"n": n, "difference_points": None, "ci_lower": None, "ci_upper": None, "b": b, "c": c,
           "mcnemar_p": None, "note": note}
    if n:
        difference, lower, upper = paired_difference(b, c, n)
        row.update(difference_points=round(100 * difference, 2), ci_lower=round(100 * lower, 2),
                   ci_upper=round(100 * upper, 2), mcnemar_p=float(f"{mcnemar_exact(b, c):.4g}"))
    return row


def paired_comparisons(outcomes: Mapping[tuple[str, str], pl.DataFrame], models: list[str],
                       testsets: list[str], runs: Mapping[str, Mapping[str, Any]] | None = None) -> pl.DataFrame:
    """One :func:`paired_comparison` row per test set and :func:`comparison_pairs` pair that has outcomes
    (``outcomes`` keyed by (model, test set)), test sets in the given order."""
    schema = {"testset": pl.String, "model": pl.String, "versus": pl.String, "n": pl.Int64,
              "difference_points": pl.Float64, "ci_lower": pl.Float64, "ci_upper": pl.Float64, "b": pl.Int64,
              "c": pl.Int64, "mcnemar_p": pl.Float64, "note": pl.String}
    rows = [{"testset": testset, "model": model, "versus": versus,
             **paired_comparison(outcomes[(model, testset)], outcomes[(versus, testset)])}
            for testset in testsets for model, versus in comparison_pairs(models, runs)
            if (model, testset) in outcomes and (versus, testset) in outcomes]
    return pl.DataFrame(rows, schema=schema)


REPLICATE_SCHEMA = {"testset": pl.String, "student": pl.String, "objective": pl.String, "variant": pl.String,
                    "seeds": pl.Int64, "accuracy": pl.Float64, "lower": pl.Float64, "upper": pl.Float64,
                    "template_adherence": pl.Float64, "versus": pl.String, "vs_sft_points": pl.Float64,
                    "vs_sft_lower": pl.Float64, "vs_sft_upper": pl.Float64, "b": pl.Int64, "c": pl.Int64,
                    "mcnemar_p_pooled": pl.Float64}


def _mean_interval(values: list[float]) -> list[float | None]:
    """Mean and Student-t 95 % bounds, 2 decimals (bounds null for one value)."""
    return [None if value is None else round(value, 2) for value in mean_t_interval(values)]


def _replicate_row(metrics: Mapping[tuple[str, str], dict], outcomes: Mapping[tuple[str, str], pl.DataFrame],
                   testset: str, runs: list[tuple[str, str | None]], versus: str | None) -> list[Any] | None:
    """Seeds, accuracy mean and interval, mean template adherence, and against the reference SFT run of each seed
    (named ``versus`` without its seed) the mean difference with its interval, the pooled discordant counts and
    their McNemar p. ``runs``: (model, its seed's reference SFT run or None)."""
    evaluated = [(m, sft) for m, sft in runs if metrics.get((m, testset), {}).get("accuracy") is not None]
    if not evaluated:
        return None
    adherence = [100 * metrics[(m, testset)]["template_adherence"] for m, _ in evaluated
                 if metrics[(m, testset)].get("template_adherence") is not None]
    row = [len(evaluated), *_mean_interval([100 * metrics[(m, testset)]["accuracy"] for m, _ in evaluated]),
           round(math.fsum(adherence) / len(adherence), 2) if adherence else None]
    compared = [paired_comparison(outcomes[(m, testset)], outcomes[(sft, testset)]) for m, sft in evaluated
                if sft not in (None, m) and (m, testset) in outcomes and (sft, testset) in outcomes]
    compared = [comparison for comparison in compared if comparison["n"]]
    if not compared:
        return row + [None] * 7
    b, c = sum(comparison["b"] for comparison in compared), sum(comparison["c"] for comparison in compared)
    return row + [versus, *_mean_interval([comparison["difference_points"] for comparison in compared]), b, c,
                  float(f"{mcnemar_exact(b, c):.4g}")]


def replicate_summary(metrics: Mapping[tuple[str, str], dict], outcomes: Mapping[tuple[str, str], pl.DataFrame],
                      models: list[str], testsets: list[str],
                      runs: Mapping[str, Mapping[str, Any]] | None = None) -> pl.DataFrame:
    """Per test set and trained (student, objective, variant), over its seeds: accuracy in % as the mean with
    its Student-t 95 % interval, mean template adherence in %, and against the :func:`reference_sft` run of the
    same student and seed (``versus``) the mean accuracy difference in points with its t-interval, the discordant
    counts b and c summed over seeds and the exact McNemar p of those pooled counts. Pooling treats each (prompt,
    seed) as one paired outcome; the same prompts recur across seeds, so that p-value is on the optimistic side."""
    roles = model_roles(models, runs)
    references = reference_sft(roles)
    groups: dict[tuple[str, str, str | None], list[tuple[str, str | None]]] = {}
    for model, role in roles.items():
        if is_trained(role):
            groups.setdefault((role.student, role.role, role.variant), []).append(
                (model, references.get((role.student, role.seed))))
    rows = []
    for testset in testsets:
        for key, group in groups.items():
            versus = next((run_group_name(roles[sft]) for _, sft in group if sft is not None), None)
            if (row := _replicate_row(metrics, outcomes, testset, group, versus)) is not None:
                rows.append([testset, *key, *row])
    return pl.DataFrame(rows, schema=REPLICATE_SCHEMA, orient="row")


def has_replicates(summary: pl.DataFrame) -> bool:
    """Whether a :func:`replicate_summary` says more than the per-model tables: several seeds or variants."""
    return bool(summary.height) and (summary["seeds"].max() > 1 or summary["variant"].drop_nulls().len() > 0)


def signed_points(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def headlines(comparisons: pl.DataFrame, replicates: pl.DataFrame | None = None) -> list[str]:
    """One sentence per test set: with several seeds, AdvDistill against the reference SFT over the seeds
    (:func:`replicate_summary`; the plain run, else the first AdvDistill variant); else the first
    :func:`paired_comparisons` row with shared prompts."""
    lines = {}
    if replicates is not None:
        over_seeds = replicates.filter((pl.col("objective") == "advdistill") & (pl.col("seeds") > 1)
                                       & pl.col("vs_sft_lower").is_not_null())
        over_seeds = over_seeds.sort(pl.col("variant").is_not_null(), maintain_order=True)
        for r in over_seeds.unique("testset", keep="first", maintain_order=True).iter_rows(named=True):
            model = run_group_name(ModelRole(r["student"], r["objective"], r["variant"]))
            lines[r["testset"]] = (
                f"{model} vs {r['versus']} on {r['testset']}, mean over {r['seeds']} seeds: "
                f"{signed_points(r['vs_sft_points'])} points [95 % t-interval {signed_points(r['vs_sft_lower'])}, "
                f"{signed_points(r['vs_sft_upper'])}], McNemar p = {r['mcnemar_p_pooled']:.2g} (pooled over seeds)")
    first = comparisons.filter(pl.col("n") > 0).unique("testset", keep="first", maintain_order=True)
    for r in first.iter_rows(named=True):
        lines.setdefault(r["testset"], (
            f"{r['model']} vs {r['versus']} on {r['testset']}: {signed_points(r['difference_points'])} points "
            f"[95 % CI {signed_points(r['ci_lower'])}, {signed_points(r['ci_upper'])}], "
            f"McNemar p = {r['mcnemar_p']:.2g}, n = {r['n']}"))
    return list(lines.values())


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
    raw = pl.read_csv(path, separator="\t", infer_schema=False)
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


def _save_figure(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    return atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=120,
                                                                    bbox_inches="tight"))


def plot_advantage_histogram(scored: pl.DataFrame, path: Path, title: str | None = None,
                             bins: int = 40) -> Path:
    """Histogram of the advantages of the responses in kept groups (paper Figure 2a)."""
    kept = scored.filter(pl.col("kept"))
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    if kept.is_empty():
        axes.text(0.5, 0.5, "no kept groups", ha="center", va="center", transform=axes.transAxes)
    else:
        axes.hist(kept["advantage"].to_numpy(), bins=bins, color="tab:blue")
    axes.set_xlabel("advantage")
    axes.set_ylabel("responses")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title or f"Advantages of kept groups ({kept['prompt_id'].n_unique()} groups)")
    return _save_figure(figure, path)


def plot_correct_per_group(scored: pl.DataFrame, path: Path, title: str | None = None) -> Path:
    """Bar chart of how many groups have 0, 1, ..., n correct responses (paper Figure 2b), all groups."""
    per_group = scored.group_by("prompt_id").agg(pl.col("correct").sum().alias("n_correct"),
                                                 pl.len().alias("group_size"))
    largest_group = per_group["group_size"].max() or 0
    groups_with = dict(per_group["n_correct"].value_counts().iter_rows())
    n_correct = list(range(largest_group + 1))
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    axes.bar(n_correct, [groups_with.get(k, 0) for k in n_correct], color="tab:green")
    axes.set_xticks(n_correct)
    axes.set_xlabel("correct responses in the group")
    axes.set_ylabel("groups")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title or f"Correct responses per group ({per_group.height} groups)")
    return _save_figure(figure, path)


LOSS_TERMS = (("loss", "loss"), ("weighted_ce", "weighted cross-entropy"), ("contrastive", "lam x contrastive"))


def plot_loss_terms(log_history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Training loss and, for AdvDistill, its two terms per logged step on one axis; the mean p of wrong
    responses on a second axis (what drives the contrastive term)."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for key, label in LOSS_TERMS:
        points = [(entry["step"], entry[key]) for entry in log_history if entry.get(key) is not None]
        if points:
            axes.plot(*zip(*points), marker=".", label=label)
    wrong_p = [(entry["step"], entry["wrong_p_mean"]) for entry in log_history
               if entry.get("wrong_p_mean") is not None]
    if wrong_p:
        right = axes.twinx()
        right.plot(*zip(*wrong_p), color="tab:gray", linestyle="--", label="mean p of wrong responses")
        right.set_ylabel("mean p of wrong responses")
        right.set_ylim(0, 1)
        right.legend(loc="upper right", fontsize="small")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    if axes.lines:
        axes.legend(loc="upper left", fontsize="small")
    else:
        axes.text(0.5, 0.5, "no training loss logged", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title)
    return _save_figure(figure, path)


def plot_accuracy_bars(accuracy: pl.DataFrame, testsets: list[str], path: Path) -> Path:
    """Grouped bars of an :func:`accuracy_table`: one group per test set, one bar per model, Wilson 95 %
    intervals as error bars."""
    positions = np.arange(len(testsets))
    width = 0.8 / max(accuracy.height, 1)
    figure = Figure(figsize=(max(6, 1.5 * len(testsets)), 4))
    axes = figure.add_subplot()
    for index, row in enumerate(accuracy.iter_rows(named=True)):
        heights, lower, upper = (np.array([np.nan if row[t + suffix] is None else row[t + suffix] for t in testsets])
                                 for suffix in ("", " lower", " upper"))
        axes.bar(positions - 0.4 + (index + 0.5) * width, heights, width, label=row[MODEL_COLUMN],
                 yerr=np.vstack([heights - lower, upper - heights]), capsize=3)
    axes.set_xticks(positions, testsets)
    axes.set_ylim(0, 100)
    axes.set_ylabel("accuracy (%)")
    if accuracy.height:
        axes.legend(fontsize="small")
    return _save_figure(figure, path)


def plot_length_distributions(responses_by_model: Mapping[str, pl.DataFrame], path: Path,
                              title: str | None = None, bins: int = 30) -> Path:
    """Histograms of response tokens of correct and wrong answers, one panel per model, shared bins."""
    if not responses_by_model:
        raise InputError("no models to plot response lengths of")
    all_tokens = np.concatenate([df["n_tokens"].to_numpy() for df in responses_by_model.values()])
    edges = np.histogram_bin_edges(all_tokens, bins=bins) if all_tokens.size else np.array([0.0, 1.0])
    figure = Figure(figsize=(6, 2.2 * len(responses_by_model)))
    panels = figure.subplots(nrows=len(responses_by_model), ncols=1, sharex=True, squeeze=False)[:, 0]
    for axes, (model, responses) in zip(panels, responses_by_model.items()):
        for is_correct, label, colour in ((True, "correct", "tab:green"), (False, "wrong", "tab:red")):
            tokens = responses.filter(pl.col("correct") == is_correct)["n_tokens"].to_numpy()
            if tokens.size:
                axes.hist(tokens, bins=edges, alpha=0.6, color=colour, label=f"{label} ({tokens.size})")
        axes.set_title(model, fontsize="medium")
        axes.set_ylabel("responses")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    panels[-1].set_xlabel("response tokens")
    if title:
        figure.suptitle(title)
    return _save_figure(figure, path)


def _markdown_cell(value: Any) -> str:
    return MISSING_CELL if value is None else str(value).replace("|", "\\|")


def markdown_table(df: pl.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df``; nulls are shown as an en dash."""
    lines = ["| " + " | ".join(_markdown_cell(c) for c in df.columns) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines) + "\n"


def write_markdown_table(df: pl.DataFrame, path: Path, csv: pl.DataFrame | None = None) -> Path:
    """Write ``df`` as Markdown to ``path`` and ``csv`` (default ``df``; e.g. the numbers behind text cells)
    as CSV beside it (same name, ``.csv``); return ``path``."""
    path = Path(path)
    atomic_write(path.with_suffix(".csv"), (df if csv is None else csv).write_csv)
    return atomic_write(path, lambda tmp: tmp.write_text(markdown_table(df), encoding="utf-8"))


def html_table(df: pl.DataFrame) -> str:
    """An HTML table of ``df`` with escaped cells; nulls are shown as an en dash."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(MISSING_CELL if v is None else str(v))}</td>" for v in row)
        + "</tr>" for row in df.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 75em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; }
img { max-width: 100%; }
pre { background: #f4f4f4; padding: 0.8em; overflow-x: auto; }
"""


def few_shot_notes(metrics: Mapping[tuple[str, str], dict], models: list[str], testsets: list[str]) -> list[str]:
    """One line per (model, test set) evaluated zero-shot although few-shot turns were requested."""
    return [f"{model} on {testset}: {metrics[(model, testset)]['few_shot_note']}"
            for model in models for testset in testsets
            if metrics.get((model, testset), {}).get("few_shot_note")]


def _html_page(tables: Mapping[str, pl.DataFrame], table_files: Mapping[str, Path],
               figures: list[tuple[str, Path]], manifests: list[Path], out_dir: Path,
               notes: Mapping[str, list[str]], headline: list[str]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>AdvDistill report</title>", f"<style>{PAGE_STYLE}</style></head><body>",
             "<h1>AdvDistill report</h1>", *(f'<p class="headline">{html.escape(line)}</p>' for line in headline),
             "<h2>Tables</h2>"]
    for name, df in tables.items():
        markdown = table_files[name].relative_to(out_dir).as_posix()
        csv = table_files[name].with_suffix(".csv").relative_to(out_dir).as_posix()
        parts += [f"<h3>{html.escape(name.replace('_', ' ').capitalize())}</h3>",
                  (f"<p>{html.escape(TABLE_CAPTIONS[name])} "
                   f'(<a href="{html.escape(markdown)}">Markdown</a>, <a href="{html.escape(csv)}">CSV</a>)</p>'),
                  html_table(df)]
        if notes.get(name):
            parts.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes[name]) + "</ul>")
    parts.append("<h2>Figures</h2>")
    for caption, path in figures:
        source = html.escape(path.relative_to(out_dir).as_posix())
        parts.append(f'<figure><img src="{source}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if manifests:
        parts += ["<h2>Provenance</h2>", html_table(provenance_table(manifests))]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def provenance_table(manifests: list[Path]) -> pl.DataFrame:
    """One row per stage manifest: output, settings hash, code version, image and its sha256, seed, wall time."""
    rows = []
    for path in manifests:
        manifest = read_json(path)
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


def read_responses(path: Path) -> pl.DataFrame:
    """The :data:`RESPONSE_COLUMNS` of an evaluation's ``responses.parquet``. A repeated ``prompt_id`` is an
    error: joining on it would count that prompt several times in the paired comparisons."""
    responses = read_parquet(path, RESPONSE_COLUMNS).select(*RESPONSE_COLUMNS)
    repeated = responses.filter(pl.col("prompt_id").is_duplicated())["prompt_id"]
    if repeated.len():
        raise InputError(f"{path}: prompt_id {repeated[0]!r} occurs more than once")
    return responses


def build_report(metrics_files: Mapping[tuple[str, str], Path], scored_files: Mapping[str, Path],
                 responses_files: Mapping[tuple[str, str], Path], benchmark_files: Mapping[str, list[Path]],
                 manifests: list[Path] | None, out_dir: Path, models: list[str],
                 testsets: list[str], memory_plan: list[dict[str, Any]] | None = None,
                 train_metrics_files: Mapping[tuple[str, str], Path] | None = None,
                 runs: Mapping[str, Mapping[str, Any]] | None = None,
                 paper: Mapping[str, Any] | None = None) -> Path:
    """Write the report's tables (``<name>.md`` and ``<name>.csv``), figures (``plots/*.png``) and
    ``index.html`` under ``out_dir``; return the path of ``index.html``.

    ``metrics_files`` and ``responses_files`` are keyed by (model, test set), ``scored_files`` by
    training dataset and ``benchmark_files`` by stage. Models and test sets appear in the given order;
    (model, test set) pairs without files are left as empty cells. ``memory_plan`` (rows of
    ``advdistill.memory_plan.plan_rows``, a GPU run's) is written as ``memory_plan.json`` and a table.
    ``train_metrics_files`` (``train_metrics.json`` keyed by (training dataset, model)) give the training
    compute table. ``runs`` describes trained runs by name (``student``, ``objective``, ``variant``, ``seed``;
    plain names are understood without it); with several seeds or variants the report adds the replicate
    summary. ``paper`` is a config's ``paper_reference`` (the paper's own numbers, shown beside ours).
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    metrics = {key: read_json(path) for key, path in metrics_files.items()}
    responses = {key: read_responses(path) for key, path in responses_files.items()}
    paper = paper or {}

    accuracy = accuracy_table(metrics, models, testsets)
    comparisons = paired_comparisons(responses, models, testsets, runs)
    replicates = replicate_summary(metrics, responses, models, testsets, runs)
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
    train_metrics = {key: read_json(path) for key, path in (train_metrics_files or {}).items()}
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

    figures = [("Accuracy (%) per test set and model, Wilson 95 % intervals",
                plot_accuracy_bars(accuracy, testsets, plots_dir / "accuracy.png"))]
    for dataset, path in scored_files.items():
        scored = read_parquet(path).select("prompt_id", "correct", "advantage", "kept")
        caption = f"{dataset}: advantages of the responses in kept groups"
        figures.append((caption, plot_advantage_histogram(scored, plots_dir / f"advantages_{dataset}.png",
                                                          title=caption)))
        caption = f"{dataset}: correct teacher responses per group"
        figures.append((caption, plot_correct_per_group(scored, plots_dir / f"correct_per_group_{dataset}.png",
                                                        title=caption)))
    for (train_set, model), trained in train_metrics.items():
        caption = f"{model} on {train_set}: training loss and its terms per logged step"
        figures.append((caption, plot_loss_terms(trained.get("log_history", []),
                                                 plots_dir / f"loss_terms_{train_set}_{model}.png", caption)))
    for testset in testsets:
        by_model = {model: responses[(model, testset)] for model in models if (model, testset) in responses}
        if by_model:
            caption = f"{testset}: response tokens of correct and wrong answers"
            figures.append((caption, plot_length_distributions(by_model, plots_dir / f"lengths_{testset}.png",
                                                               title=caption)))

    notes = {"accuracy": few_shot_notes(metrics, models, testsets)}
    if paper.get("notes"):
        notes["paper_accuracy"] = list(paper["notes"])
    page = _html_page(tables, table_files, figures, [Path(m) for m in manifests or []], out_dir, notes,
                      headlines(comparisons, replicates))
    return atomic_write(out_dir / "index.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))


def run_report(plan: dict[str, Any], benchmarks: Path, out_dir: Path) -> Path:
    """The run's report from the files the report rule declares as its inputs, as ``plan`` lists them.

    ``plan`` has ``models`` (row order), ``testsets`` (column order), ``evaluations`` (``model``, ``testset``,
    ``metrics`` and ``responses`` paths), ``scored`` (training dataset -> scored.parquet), ``trained`` (one per
    trained run: ``train_set``, ``model``, ``student``, ``objective``, ``variant``, ``seed`` and its ``path``,
    a folder holding ``train_metrics.json``), ``provenance`` (files whose ``.manifest.json`` the provenance
    table lists), optionally ``memory`` (a GPU run's memory plan rows) and ``paper`` (the config's
    ``paper_reference``). Benchmarks are read from every ``*.tsv`` under ``benchmarks``, per stage folder.
    """
    metrics_files = {(e["model"], e["testset"]): Path(e["metrics"]) for e in plan["evaluations"]}
    responses_files = {(e["model"], e["testset"]): Path(e["responses"]) for e in plan["evaluations"]}
    scored_files = {name: Path(path) for name, path in plan["scored"].items()}
    stage_dirs = sorted(d for d in benchmarks.iterdir() if d.is_dir()) if benchmarks.is_dir() else []
    benchmark_files = {d.name: sorted(d.rglob("*.tsv")) for d in stage_dirs if any(d.rglob("*.tsv"))}
    manifests = [path for output in plan.get("provenance", []) if (path := manifest_path(Path(output))).is_file()]
    train_metrics_files = {(run["train_set"], run["model"]): Path(run["path"]) / "train_metrics.json"
                           for run in plan.get("trained", [])}
    runs = {run["model"]: run for run in plan.get("trained", [])}
    return build_report(metrics_files, scored_files, responses_files, benchmark_files, manifests, out_dir,
                        plan["models"], plan["testsets"], plan.get("memory"), train_metrics_files, runs,
                        plan.get("paper"))
