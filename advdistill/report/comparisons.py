"""What each evaluated model is (teacher, base or trained run) and the paired comparisons between them: per-prompt
accuracy differences with exact McNemar p-values, the summary over seeds, and the headline sentences."""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from typing import Any, NamedTuple

import polars as pl

from advdistill.paths import BASE_SUFFIX, OBJECTIVES
from advdistill.stats import mcnemar_exact, mean_t_interval, paired_difference

TEACHER_ROLE = "teacher"


class ModelRole(NamedTuple):
    """What an evaluated model is: its student (the model's own name for the teacher), its role (``teacher``,
    ``base`` or the training objective), and for a trained run its variant (None: the plain training section),
    seed (None where unknown) and the variant it is compared with as its control (``variants.<name>.control``;
    None: none)."""

    student: str
    role: str
    variant: str | None = None
    seed: int | None = None
    control: str | None = None


def _role_from_name(model: str) -> ModelRole:
    """The role of a plain model name: ``<student>-<objective>``, ``<student>-base`` or the teacher."""
    student, _, suffix = model.rpartition("-")
    if student and suffix in (*OBJECTIVES, BASE_SUFFIX):
        return ModelRole(student, suffix)
    return ModelRole(model, TEACHER_ROLE)


def model_roles(models: list[str], runs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, ModelRole]:
    """Each model's :class:`ModelRole`: from ``runs`` (name -> ``student``, ``objective``, ``variant``, ``seed``
    and optionally ``control``, as the report rule's plan gives the trained runs), else from the plain name."""
    runs = runs or {}
    return {model: (ModelRole(runs[model]["student"], runs[model]["objective"], runs[model].get("variant"),
                              runs[model].get("seed"), runs[model].get("control"))
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


def control_runs(roles: Mapping[str, ModelRole]) -> dict[str, str]:
    """Each trained run whose variant names a control -> the control variant's run of the same student,
    objective and seed (left out where that run is not among ``roles``)."""
    runs = {(role.student, role.role, role.variant, role.seed): model for model, role in roles.items()
            if is_trained(role)}
    return {model: runs[key] for model, role in roles.items()
            if role.control is not None and (key := (role.student, role.role, role.control, role.seed)) in runs}


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
                    "mcnemar_p_pooled": pl.Float64, "control": pl.String, "vs_control_points": pl.Float64,
                    "vs_control_lower": pl.Float64, "vs_control_upper": pl.Float64, "control_b": pl.Int64,
                    "control_c": pl.Int64, "mcnemar_p_control": pl.Float64}


def _mean_interval(values: list[float]) -> list[float | None]:
    """Mean and Student-t 95 % bounds, 2 decimals (bounds null for one value)."""
    return [None if value is None else round(value, 2) for value in mean_t_interval(values)]


def _pooled_comparison(outcomes: Mapping[tuple[str, str], pl.DataFrame], testset: str,
                       pairs: list[tuple[str, str | None]], versus: str | None) -> list[Any]:
    """Over the seeds' (model, reference run or None) ``pairs``: ``versus`` (the reference without its seed), the
    mean paired difference in points with its t-interval, the pooled discordant counts b and c and their exact
    McNemar p; all null where no pair shares a prompt."""
    compared = [paired_comparison(outcomes[(m, testset)], outcomes[(other, testset)]) for m, other in pairs
                if other not in (None, m) and (m, testset) in outcomes and (other, testset) in outcomes]
    compared = [comparison for comparison in compared if comparison["n"]]
    if not compared:
        return [None] * 7
    b, c = sum(comparison["b"] for comparison in compared), sum(comparison["c"] for comparison in compared)
    return [versus, *_mean_interval([comparison["difference_points"] for comparison in compared]), b, c,
            float(f"{mcnemar_exact(b, c):.4g}")]


def _replicate_row(metrics: Mapping[tuple[str, str], dict], outcomes: Mapping[tuple[str, str], pl.DataFrame],
                   testset: str, runs: list[tuple[str, str | None, str | None]], versus: str | None,
                   control: str | None) -> list[Any] | None:
    """Seeds, accuracy mean and interval, mean template adherence, and against the reference SFT run of each seed
    (named ``versus`` without its seed), then against the control run of each seed (``control``), the
    :func:`_pooled_comparison`. ``runs``: (model, its seed's reference SFT run or None, its control run or None)."""
    evaluated = [run for run in runs if metrics.get((run[0], testset), {}).get("accuracy") is not None]
    if not evaluated:
        return None
    adherence = [100 * metrics[(m, testset)]["template_adherence"] for m, _, _ in evaluated
                 if metrics[(m, testset)].get("template_adherence") is not None]
    row = [len(evaluated), *_mean_interval([100 * metrics[(m, testset)]["accuracy"] for m, _, _ in evaluated]),
           round(math.fsum(adherence) / len(adherence), 2) if adherence else None]
    return (row + _pooled_comparison(outcomes, testset, [(m, sft) for m, sft, _ in evaluated], versus)
            + _pooled_comparison(outcomes, testset, [(m, ctl) for m, _, ctl in evaluated], control))


def replicate_summary(metrics: Mapping[tuple[str, str], dict], outcomes: Mapping[tuple[str, str], pl.DataFrame],
                      models: list[str], testsets: list[str],
                      runs: Mapping[str, Mapping[str, Any]] | None = None) -> pl.DataFrame:
    """Per test set and trained (student, objective, variant), over its seeds: accuracy in % as the mean with
    its Student-t 95 % interval, mean template adherence in %, and against the :func:`reference_sft` run of the
    same student and seed (``versus``) the mean accuracy difference in points with its t-interval, the discordant
    counts b and c summed over seeds and the exact McNemar p of those pooled counts; the same against the run of
    the same seed of the variant's ``control`` (``vs_control_*``, ``control_b``, ``control_c``,
    ``mcnemar_p_control``; null without a control). Pooling treats each (prompt, seed) as one paired outcome; the
    same prompts recur across seeds, so those p-values are on the optimistic side."""
    roles = model_roles(models, runs)
    references = reference_sft(roles)
    controls = control_runs(roles)
    groups: dict[tuple[str, str, str | None], list[tuple[str, str | None, str | None]]] = {}
    for model, role in roles.items():
        if is_trained(role):
            groups.setdefault((role.student, role.role, role.variant), []).append(
                (model, references.get((role.student, role.seed)), controls.get(model)))
    rows = []
    for testset in testsets:
        for key, group in groups.items():
            versus = next((run_group_name(roles[sft]) for _, sft, _ in group if sft is not None), None)
            control = next((run_group_name(roles[ctl]) for _, _, ctl in group if ctl is not None), None)
            if (row := _replicate_row(metrics, outcomes, testset, group, versus, control)) is not None:
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
