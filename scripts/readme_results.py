"""The README's result sections, generated from a finished run's report so that they cannot drift from it.

    python scripts/readme_results.py record default results/default --log .snakemake/log/<run>.snakemake.log
    python scripts/readme_results.py record ablation results/ablation --log .snakemake/log/<run>.snakemake.log
    python scripts/readme_results.py check                             # README == what the records give

``record`` takes a finished run's folder (``results/<run_name>``) and copies the report tables a section needs
into ``docs/results/<name>/`` with ``machine.json`` (the machine that ran it: CPU and the vector instructions torch
uses there, cores, torch, commit, date; with ``--log``, the run's elapsed time from its Snakemake log, which for
concurrent jobs is less than their wall times' sum), and the whole report page with its figures into
``docs/results/<name>/report/`` so that it can be read without running the pipeline. It then rewrites the README
between ``<!-- results:<name> -->`` and ``<!-- /results:<name> -->``. ``check`` (run by
tests/test_readme_results.py) renders every recorded section again and fails if the README differs, so a README
edit by hand or a record without its README update is caught.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import torch

from advdistill.provenance import cpu_model
from advdistill.report.comparisons import signed_points

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RECORDS = REPO / "docs" / "results"
TABLES = {"default": ("accuracy.csv", "template_adherence.csv", "paired_comparisons.csv", "training_compute.csv",
                      "loss_terms.csv", "stage_costs.csv"),
          "ablation": ("replicates.csv", "loss_terms.csv", "stage_costs.csv")}
# What of a report folder the recorded page keeps: the page, its figures and its tables (not the manifests).
PAGE_FILES = ("index.html", "*.md", "*.csv", "plots/*.png")
TELEMETRY = ("weighted_ce", "contrastive", "contrastive_share", "wrong_p_mean", "wrong_at_clamp", "grad_norm")


def elapsed_seconds(snakemake_log: Path) -> float:
    """The ``Elapsed time: H:MM:SS`` Snakemake writes at the end of a finished run's log."""
    match = re.search(r"^Elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)$", snakemake_log.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{snakemake_log}: no 'Elapsed time' line; is it the log of a finished run?")
    hours, minutes, seconds = match.groups()
    return round(3600 * int(hours) + 60 * int(minutes) + float(seconds), 1)


def machine(snakemake_log: Path | None = None) -> dict[str, object]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    info = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "gpu": torch.cuda.is_available(),
            "torch": torch.__version__, "commit": commit.stdout.strip() or None,
            "date": datetime.date.today().isoformat()}
    if snakemake_log is not None:
        info["elapsed_s"] = elapsed_seconds(snakemake_log)
    return info


def _interval(value: float | None, lower: float | None, upper: float | None, decimals: int = 1) -> str:
    if value is None:
        return "–"
    if lower is None:
        return f"{value:.{decimals}f}"
    return f"{value:.{decimals}f} [{lower:.{decimals}f}, {upper:.{decimals}f}]"


def _run_line(record: Path, what: str) -> str:
    info = json.loads((record / "machine.json").read_text())
    costs = pl.read_csv(record / "stage_costs.csv")
    minutes = costs["total_wall_s"].sum() / 60
    elapsed = f"the run took {info['elapsed_s'] / 60:.1f} min; " if "elapsed_s" in info else ""
    cpu = f"{info['cpu']} ({info['cpu_capability']})" if info.get("cpu_capability") else info["cpu"]
    return (f"{what}, at commit `{info['commit']}` on {info['date']}: {cpu}, {info['cores']} cores, "
            f"{'a GPU' if info['gpu'] else 'no GPU'}, torch {info['torch']}; {elapsed}the jobs' wall times add up "
            f"to {minutes:.1f} min (`{record.relative_to(REPO).as_posix()}/stage_costs.csv`).")


def render_default(record: Path) -> str:
    accuracy = pl.read_csv(record / "accuracy.csv")
    adherence = pl.read_csv(record / "template_adherence.csv")
    # a test set's column has its interval beside it (sampled runs add majority and pass@k columns too)
    testsets = [c for c in accuracy.columns[1:] if f"{c} lower" in accuracy.columns]
    first = testsets[0]
    lines = [_run_line(record, "A fresh run of `config.yaml` (`snakemake --cores all`)"), "",
             f"Greedy accuracy in % with its Wilson 95 % interval ({first}: in-distribution test set; template "
             f"adherence on {first}):", "",
             "| model | " + " | ".join(testsets) + f" | template adherence ({first}) |",
             "|---|" + "---|" * (len(testsets) + 1)]
    adherent = dict(zip(adherence["model"], adherence[first]))
    for row in accuracy.iter_rows(named=True):
        cells = [_interval(row[t], row[f"{t} lower"], row[f"{t} upper"]) for t in testsets]
        adherence_cell = _interval(adherent.get(row["model"]), None, None)
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {adherence_cell} |")
    comparisons = pl.read_csv(record / "paired_comparisons.csv").unique("testset", keep="first", maintain_order=True)
    lines += ["", "Paired on the same prompts (difference in points with its 95 % interval, exact McNemar test):", ""]
    lines += [f"- {r['model']} vs {r['versus']} on {r['testset']}: {signed_points(r['difference_points'])} points "
              f"[{signed_points(r['ci_lower'])}, {signed_points(r['ci_upper'])}], p = {r['mcnemar_p']:.2g} "
              f"(n = {r['n']})"
              for r in comparisons.iter_rows(named=True)]
    lines += ["", render_training_compute(pl.read_csv(record / "training_compute.csv")), "",
              render_telemetry(pl.read_csv(record / "loss_terms.csv"))]
    return "\n".join(lines)


def render_training_compute(compute: pl.DataFrame) -> str:
    lines = ["Training compute (`training_compute.csv`): optimizer steps, training items (SFT: best responses; "
             "AdvDistill: groups) and the trainer's wall time:", "",
             "| model | optimizer steps | training items | wall time (s) |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['optimizer_steps']:,} | {r['train_items']:,} | {r['wall_s']:.0f} |"
              for r in compute.iter_rows(named=True)]
    return "\n".join(lines)


def _p_value(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def render_ablation(record: Path) -> str:
    """Per test set, each run's accuracy over seeds and its paired comparison with the SFT run of each seed; where
    some variant names a control (``variants.<name>.control``, its λ = 0 run; a record made before controls has
    none), with that control too."""
    replicates = pl.read_csv(record / "replicates.csv")
    lines = [_run_line(record, "A fresh run of `config.yaml` with `config/ablation.yaml`"), ""]
    for testset in replicates["testset"].unique(maintain_order=True):
        rows = replicates.filter(pl.col("testset") == testset)
        versus = ", ".join(f"`{name}`" for name in rows["versus"].drop_nulls().unique(maintain_order=True))
        controlled = "control" in rows.columns and rows["control"].drop_nulls().len() > 0
        against = ("the exact McNemar p of the discordant prompts pooled over seeds; likewise against its λ = 0 "
                   "control (`variants.<name>.control`, named in the table), seed by seed:" if controlled else
                   "the exact McNemar p of the discordant prompts pooled over seeds:")
        header = "| objective | variant | seeds | accuracy | template adherence | vs SFT (points) | McNemar p |"
        if controlled:
            header += " its λ = 0 | vs its λ = 0 (points) | McNemar p |"
        lines += [f"{testset}: accuracy in % as the mean over seeds with its Student-t 95 % interval; against the SFT "
                  f"run of the same seed ({versus or 'none'}), the mean difference in points with its t-interval and "
                  f"{against}", "", header, "|---" * header.count(" |") + "|"]
        for r in rows.iter_rows(named=True):
            line = (f"| {r['objective']} | {r['variant'] or 'plain (mean, λ = 0.5)'} | {r['seeds']} | "
                    f"{_interval(r['accuracy'], r['lower'], r['upper'])} | "
                    f"{_interval(r['template_adherence'], None, None)} | "
                    f"{_interval(r['vs_sft_points'], r['vs_sft_lower'], r['vs_sft_upper'])} | "
                    f"{_p_value(r['mcnemar_p_pooled'])} |")
            if controlled:
                control = "–" if r["control"] is None else r["control"].rpartition("@")[2]
                line += (f" {control} | "
                         f"{_interval(r['vs_control_points'], r['vs_control_lower'], r['vs_control_upper'])} | "
                         f"{_p_value(r['mcnemar_p_control'])} |")
            lines.append(line)
        lines.append("")
    lines += [render_telemetry(pl.read_csv(record / "loss_terms.csv")), ""]
    return "\n".join(lines).rstrip("\n")


def render_telemetry(loss_terms: pl.DataFrame) -> str:
    """The loss terms of each AdvDistill run (second half of its logged steps), averaged over its seeds."""
    runs = (loss_terms.filter(pl.col("weighted_ce").is_not_null())
            .with_columns(run=pl.col("model").str.replace(r"@seed\d+$", ""))
            .group_by("run", maintain_order=True)
            .agg(pl.len().alias("seeds"), *(pl.col(name).mean() for name in TELEMETRY)))
    lines = ["Loss telemetry over the second half of each run's logged steps, mean over its seeds: the weighted CE "
             "term, the λ-scaled contrastive term and its share of the loss, the mean p̄ of wrong responses, their "
             "share at the clamp, and the gradient norm before clipping:", "",
             "| run | seeds | " + " | ".join(TELEMETRY) + " |", "|---|---|" + "---|" * len(TELEMETRY)]
    for r in runs.iter_rows(named=True):
        cells = ["–" if r[name] is None else f"{r[name]:.3f}" for name in TELEMETRY]
        lines.append(f"| {r['run']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


RENDERERS = {"default": render_default, "ablation": render_ablation}


def rendered_readme(readme: str) -> str:
    """``readme`` with every recorded section rendered again from ``docs/results/<name>``."""
    for name, render in RENDERERS.items():
        record = RECORDS / name
        if not (record / "machine.json").exists():
            continue
        begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        if begin not in readme or end not in readme:
            raise SystemExit(f"README.md has no {begin} ... {end} section for docs/results/{name}")
        head, rest = readme.split(begin, 1)
        readme = f"{head}{begin}\n{render(record)}\n{end}{rest.split(end, 1)[1]}"
    return readme


def record(name: str, run: Path, snakemake_log: Path | None = None) -> None:
    report = run / "report"
    missing = [table for table in TABLES[name] if not (report / table).is_file()]
    if missing:
        raise SystemExit(f"{report}: no {', '.join(missing)}; run the pipeline for '{name}' first")
    target = RECORDS / name
    target.mkdir(parents=True, exist_ok=True)
    for table in TABLES[name]:
        shutil.copyfile(report / table, target / table)
    page = target / "report"
    if page.is_dir():
        shutil.rmtree(page)
    for pattern in PAGE_FILES:
        for source in sorted(report.glob(pattern)):
            destination = page / source.relative_to(report)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    (target / "machine.json").write_text(json.dumps(machine(snakemake_log), indent=2) + "\n")
    README.write_text(rendered_readme(README.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    recording = sub.add_parser("record", help="copy a report's tables into docs/results/NAME and update the README")
    recording.add_argument("name", choices=sorted(RENDERERS))
    recording.add_argument("run", type=Path, help="that run's folder, results/<run_name>")
    recording.add_argument("--log", type=Path, help="that run's .snakemake/log file (for its elapsed time)")
    sub.add_parser("check", help="fail if the README differs from what docs/results gives")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.name, args.run, args.log)
        return 0
    if rendered_readme(README.read_text()) != README.read_text():
        print("README.md results sections differ from docs/results; run scripts/readme_results.py record ...",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
