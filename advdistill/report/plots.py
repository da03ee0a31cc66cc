"""The report's figures as PNG: advantages and correct responses per group of the scored tables, the training loss
and its terms, training and validation loss with the learning rate, accuracy as grouped bars and response lengths
of correct and wrong answers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from advdistill.errors import InputError
from advdistill.io import atomic_write
from advdistill.report.tables import MODEL_COLUMN


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


LOSS_TERMS = (("loss", "loss"), ("weighted_ce", "weighted cross-entropy"), ("contrastive", "λ·Σ contrastive"))


def loss_terms_figure(log_history: list[dict[str, Any]], title: str) -> Figure:
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
    return figure


def plot_loss_terms(log_history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """The :func:`loss_terms_figure` of ``log_history`` as a PNG at ``path``."""
    return _save_figure(loss_terms_figure(log_history, title), path)


def _logged(log_history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(entry["step"], entry[key]) for entry in log_history
            if entry.get(key) is not None and entry.get("step") is not None]


def training_curves_figure(log_history: list[dict[str, Any]], title: str) -> Figure:
    """Training loss and validation loss (``eval_loss``) per optimizer step above, the learning rate below, on a
    shared step axis."""
    figure = Figure(figsize=(6, 5))
    loss_axes, rate_axes = figure.subplots(nrows=2, ncols=1, sharex=True, height_ratios=(2, 1))
    for key, label, style in (("loss", "training loss", "."), ("eval_loss", "validation loss", "o")):
        if points := _logged(log_history, key):
            loss_axes.plot(*zip(*points), marker=style, label=label)
    if loss_axes.lines:
        loss_axes.legend(fontsize="small")
    else:
        loss_axes.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=loss_axes.transAxes)
    loss_axes.set_ylabel("loss")
    if rates := _logged(log_history, "learning_rate"):
        rate_axes.plot(*zip(*rates), color="tab:purple")
    else:
        rate_axes.text(0.5, 0.5, "no learning rate logged", ha="center", va="center", transform=rate_axes.transAxes)
    rate_axes.set_ylabel("learning rate")
    rate_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    rate_axes.set_xlabel("optimizer step")
    rate_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axes.set_title(title)
    return figure


def plot_training_curves(log_history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """The :func:`training_curves_figure` of ``log_history`` as a PNG at ``path``."""
    return _save_figure(training_curves_figure(log_history, title), path)


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
