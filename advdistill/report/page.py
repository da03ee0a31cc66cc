"""Tables as Markdown and HTML, and ``index.html``: the run's name, a stand-in banner where it used stand-ins, a table
of contents, every table with its caption and files, every figure and the provenance on one page."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from advdistill.io import atomic_write
from advdistill.report.tables import (
    CORRECT_MARK,
    WRONG_MARK,
    environment_table,
    models_table,
    provenance_table,
    stage_jobs,
    stand_ins,
)

MISSING_CELL = "–"

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
                   "across seeds, so this p-value is on the optimistic side); likewise against the run of the same "
                   "seed of the variant's control (variants.<name>.control), where it names one. Bounds need two "
                   "seeds or more."),
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
.standin { border: 3px solid #b00020; background: #fde7e9; padding: 0.8em 1em; font-size: 1.15em; }
"""


def few_shot_notes(metrics: Mapping[tuple[str, str], dict], models: list[str], testsets: list[str]) -> list[str]:
    """One line per (model, test set) evaluated zero-shot although few-shot turns were requested."""
    return [f"{model} on {testset}: {metrics[(model, testset)]['few_shot_note']}"
            for model in models for testset in testsets
            if metrics.get((model, testset), {}).get("few_shot_note")]


SAMPLED_ACCURACY_NOTE = (
    "Sampled evaluations: with several samples per prompt the accuracy is pass@1, the mean over prompts of each "
    "prompt's share of correct samples, with a Student-t 95 % interval over prompts; 'majority' counts a prompt "
    "right when more than half of its samples are (a tie counts as wrong), the per-prompt outcome that the paired "
    "comparisons, their McNemar tests and the replicate summary pair; 'pass@k' is the unbiased estimator of Chen et "
    "al. (2021), 1 − C(n − c, k)/C(n, k) averaged over prompts. A one-sample evaluation's majority is its accuracy.")


def sampling_notes(metrics: Mapping[tuple[str, str], dict], models: list[str], testsets: list[str]) -> list[str]:
    """Where some evaluation sampled (a ``temperature`` in its metrics): :data:`SAMPLED_ACCURACY_NOTE`, then one
    line per setting (samples per prompt, temperature, top_p) naming the evaluations that used it."""
    settings: dict[tuple[int, float, float], list[str]] = {}
    for model in models:
        for testset in testsets:
            evaluation = metrics.get((model, testset), {})
            if evaluation.get("temperature"):
                setting = (evaluation.get("n_samples", 1), evaluation["temperature"], evaluation.get("top_p"))
                settings.setdefault(setting, []).append(f"{model} on {testset}")
    if not settings:
        return []
    return [SAMPLED_ACCURACY_NOTE, *(f"{n} sample(s) per prompt at temperature {temperature}, top_p {top_p}: "
                                     f"{', '.join(names)}" for (n, temperature, top_p), names in settings.items())]


PROVENANCE_CAPTIONS = {
    "outputs": "One row per stage output the report read: its manifest's settings hash, code version, image, seed "
               "and wall time.",
    "environment": ("Versions and machines of the stage jobs behind these outputs, the sampling jobs of a merged "
                    "sample included (their manifests): host, Python and package versions, CUDA runtime and driver "
                    "(recorded by the stages that use torch), CPU and GPU models. Jobs with identical rows are "
                    "merged."),
    "models": ("The models the stage jobs loaded: as given (folder or hub id), the folder (a hub id's cached "
               "snapshot), the sha256 of its config.json (first 12 digits; the manifests have all 64) and, for a "
               "stand-in, the hub id it stands in for. Jobs with identical rows are merged."),
}


def stand_in_banner(found: Mapping[str, list[str]]) -> list[str]:
    """The page's first element where some job loaded a stand-in: which ones, and that the results say nothing
    about the real models."""
    if not found:
        return []
    models = "; ".join(f"{hub_id} replaced by {', '.join(folders)}" for hub_id, folders in found.items())
    return ['<div class="standin" role="alert"><strong>This run used stand-in models, not the real ones.</strong> '
            f"{html.escape(models)}. A stand-in (advdistill standin) is a tiny model for rehearsing a "
            "configuration: its tables and figures say nothing about the real models.</div>"]


def run_summary(run: Mapping[str, Any], built: str) -> str:
    """The run's name and config files (the plan's ``run`` section) and when the report was built."""
    name = html.escape(run["name"]) if run.get("name") else MISSING_CELL
    files = ", ".join(f"<code>{html.escape(f)}</code>" for f in run.get("config_files") or []) or MISSING_CELL
    return (f'<p class="run">Run: <strong>{name}</strong><br>Config files: {files}<br>'
            f"Report built: {html.escape(built)}</p>")


def contents(sections: list[tuple[str, str, list[tuple[str, str]]]]) -> list[str]:
    """The table of contents: a link per section (id, title) and per entry of it."""
    items = []
    for anchor, title, entries in sections:
        links = "".join(f'<li><a href="#{html.escape(a)}">{html.escape(t)}</a></li>' for a, t in entries)
        items.append(f'<li><a href="#{anchor}">{html.escape(title)}</a>' + (f"<ul>{links}</ul>" if links else "")
                     + "</li>")
    return ["<h2>Contents</h2>", f'<ul class="contents">{"".join(items)}</ul>']


def html_page(tables: Mapping[str, pl.DataFrame], table_files: Mapping[str, Path],
              figures: list[tuple[str, Path]], manifests: list[Path], out_dir: Path,
              notes: Mapping[str, list[str]], headline: list[str], run: Mapping[str, Any] | None = None,
              built: str = MISSING_CELL) -> str:
    """The text of ``index.html``: a banner if the run used stand-in models, the run's name, config files and build
    date, the headline sentences, a table of contents, each table with its caption, notes and links to its Markdown
    and CSV files, each figure, and the provenance of ``manifests`` (outputs, versions and machines, models)."""
    run = run or {}
    jobs = stage_jobs(manifests)
    body, sections = ['<section id="tables">', "<h2>Tables</h2>"], []
    table_entries, figure_entries = [], []
    for name, df in tables.items():
        markdown = table_files[name].relative_to(out_dir).as_posix()
        csv = table_files[name].with_suffix(".csv").relative_to(out_dir).as_posix()
        anchor, title = f"table-{name}", name.replace("_", " ").capitalize()
        body += [f'<section id="{html.escape(anchor)}">', f"<h3>{html.escape(title)}</h3>",
                 (f"<p>{html.escape(TABLE_CAPTIONS[name])} "
                  f'(<a href="{html.escape(markdown)}">Markdown</a>, <a href="{html.escape(csv)}">CSV</a>)</p>'),
                 html_table(df)]
        if notes.get(name):
            body.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes[name]) + "</ul>")
        body.append("</section>")
        table_entries.append((anchor, title))
    body += ["</section>", '<section id="figures">', "<h2>Figures</h2>"]
    for caption, path in figures:
        source, anchor = html.escape(path.relative_to(out_dir).as_posix()), f"figure-{path.stem}"
        body.append(f'<figure id="{html.escape(anchor)}"><img src="{source}" alt="{html.escape(caption)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        figure_entries.append((anchor, caption))
    body.append("</section>")
    sections += [("tables", "Tables", table_entries), ("figures", "Figures", figure_entries)]
    if manifests:
        models = models_table(jobs)
        provenance = [("outputs", "Stage outputs", provenance_table(manifests)),
                      ("environment", "Versions and machines", environment_table(jobs)),
                      *([("models", "Models loaded", models)] if models.height else [])]
        body += ['<section id="provenance">', "<h2>Provenance</h2>"]
        for key, title, df in provenance:
            body += [f'<section id="provenance-{key}">', f"<h3>{title}</h3>",
                     f"<p>{html.escape(PROVENANCE_CAPTIONS[key])}</p>", html_table(df), "</section>"]
        body.append("</section>")
        sections.append(("provenance", "Provenance", [(f"provenance-{key}", title) for key, title, _ in provenance]))
    title = f"AdvDistill report: {run['name']}" if run.get("name") else "AdvDistill report"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{PAGE_STYLE}</style></head><body>",
             *stand_in_banner(stand_ins(jobs)), f"<h1>{html.escape(title)}</h1>", run_summary(run, built),
             *(f'<p class="headline">{html.escape(line)}</p>' for line in headline), *contents(sections), *body,
             "</body></html>"]
    return "\n".join(parts) + "\n"
