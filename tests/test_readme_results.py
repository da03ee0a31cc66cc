"""The README's result sections are generated from recorded report tables (scripts/readme_results.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_results", REPO / "scripts" / "readme_results.py")
readme_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_results)


def test_readme_matches_the_recorded_results():
    assert (readme_results.RECORDS / "default" / "machine.json").is_file(), "no recorded default run"
    assert readme_results.main(["check"]) == 0


def write_report(run: Path) -> Path:
    """A finished run's folder with the report tables the sections read, a page and a figure; returns the report."""
    report = run / "report"
    (report / "plots").mkdir(parents=True)
    (report / "index.html").write_text('<img src="plots/accuracy.png">')
    (report / "plots" / "accuracy.png").write_bytes(b"\x89PNG")
    (report / "index.html.manifest.json").write_text("{}")
    pl.DataFrame({"train_set": ["arith"] * 2, "model": ["student-sft", "student-advdistill"],
                  "optimizer_steps": [351, 2793], "tokens_seen": [None, 51200], "train_items": [910, 7300],
                  "wall_s": [14.2, 102.4]}).write_csv(report / "training_compute.csv")
    pl.DataFrame({"train_set": ["arith"] * 2, "model": ["student-sft", "student-advdistill"], "steps": [0, 140],
                  "weighted_ce": [None, 0.89], "contrastive": [None, 0.69], "contrastive_share": [None, 0.44],
                  "wrong_p_mean": [None, 0.42], "wrong_at_clamp": [None, 0.0], "grad_norm": [None, 1.73]}
                 ).write_csv(report / "loss_terms.csv")
    pl.DataFrame({"model": ["teacher", "student-sft", "student-advdistill"], "arith": [85.0, 40.5, 11.0],
                  "arith lower": [79.41, 33.95, 7.39], "arith upper": [89.28, 47.38, 16.07],
                  "arith majority": [85.0, 40.5, 11.0]}).write_csv(  # a sampled run's extra column
        report / "accuracy.csv")
    pl.DataFrame({"model": ["teacher", "student-sft", "student-advdistill"], "arith": [100.0, 99.5, 38.5]}).write_csv(
        report / "template_adherence.csv")
    pl.DataFrame({"testset": ["arith", "arith"], "model": ["student-advdistill"] * 2,
                  "versus": ["student-sft", "teacher"], "n": [200, 200], "difference_points": [-29.5, -74.0],
                  "ci_lower": [-36.5, -80.0], "ci_upper": [-22.5, -68.0], "b": [3, 0], "c": [62, 148],
                  "mcnemar_p": [4.1e-14, 1e-40], "note": [None, None]}).write_csv(report / "paired_comparisons.csv")
    pl.DataFrame({"stage": ["train", "evaluate"], "jobs": [2, 6], "total_wall_s": [120.0, 60.0],
                  "total_cpu_s": [200.0, 100.0], "max_rss_mb": [900.0, 800.0]}).write_csv(report / "stage_costs.csv")
    return report


@pytest.fixture
def readme(tmp_path, monkeypatch) -> Path:
    """A README in ``tmp_path`` that the script records into, with its records under ``tmp_path/docs/results``."""
    monkeypatch.setattr(readme_results, "README", tmp_path / "README.md")
    monkeypatch.setattr(readme_results, "RECORDS", tmp_path / "docs" / "results")
    monkeypatch.setattr(readme_results, "REPO", tmp_path)
    return tmp_path / "README.md"


def test_record_writes_the_section_and_check_catches_an_edit(tmp_path, readme):
    readme.write_text("# Title\n\n<!-- results:default -->\nold numbers\n<!-- /results:default -->\n\nAfter.\n")
    write_report(tmp_path / "run")
    readme_results.record("default", tmp_path / "run")
    text = readme.read_text()
    page = tmp_path / "docs" / "results" / "default" / "report"
    assert sorted(p.relative_to(page).as_posix() for p in page.rglob("*") if p.is_file()) == [
        "accuracy.csv", "index.html", "loss_terms.csv", "paired_comparisons.csv", "plots/accuracy.png",
        "stage_costs.csv", "template_adherence.csv", "training_compute.csv"]
    assert "| student-advdistill | 2,793 | 7,300 | 102 |" in text
    assert "| student-advdistill | 1 | 0.890 | 0.690 | 0.440 | 0.420 | 0.000 | 1.730 |" in text
    assert "old numbers" not in text and text.endswith("<!-- /results:default -->\n\nAfter.\n")
    assert "| student-advdistill | 11.0 [7.4, 16.1] | 38.5 |" in text
    assert ("- student-advdistill vs student-sft on arith: −29.5 points [−36.5, −22.5], p = 4.1e-14 (n = 200)"
            in text)
    assert "the jobs' wall times add up to 3.0 min" in text
    assert readme_results.main(["check"]) == 0
    readme.write_text(text.replace("11.0 [7.4, 16.1]", "16.0 [7.4, 16.1]"))
    assert readme_results.main(["check"]) == 1


def test_record_names_a_missing_report_table(tmp_path, monkeypatch):
    monkeypatch.setattr(readme_results, "RECORDS", tmp_path / "docs" / "results")
    (tmp_path / "run" / "report").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no accuracy.csv, template_adherence.csv"):
        readme_results.record("default", tmp_path / "run")


ABLATION_REPLICATES = pl.DataFrame(
    {"testset": ["arith"] * 3, "student": ["student"] * 3, "objective": ["sft", "advdistill", "advdistill"],
     "variant": ["baseline", "sum-lam0", "sum-lam0.5"], "seeds": [3, 3, 3], "accuracy": [40.0, 45.5, 30.0],
     "lower": [35.0, 40.25, 20.0], "upper": [45.0, 50.75, 40.0], "template_adherence": [100.0, 99.0, 90.0],
     "versus": [None, "student-sft@baseline", "student-sft@baseline"], "vs_sft_points": [None, 5.5, -10.0],
     "vs_sft_lower": [None, 1.0, -20.0], "vs_sft_upper": [None, 10.0, 0.0], "b": [None, 30, 5], "c": [None, 19, 25],
     "mcnemar_p_pooled": [None, 0.15, 0.00032], "control": [None, None, "student-advdistill@sum-lam0"],
     "vs_control_points": [None, None, -15.5], "vs_control_lower": [None, None, -25.25],
     "vs_control_upper": [None, None, -5.75], "control_b": [None, None, 2], "control_c": [None, None, 33],
     "mcnemar_p_control": [None, None, 1.2e-8]})


def test_ablation_section_names_the_reference_and_averages_the_telemetry_over_seeds(tmp_path, readme):
    readme.write_text("<!-- results:ablation -->\n<!-- /results:ablation -->\n")
    report = write_report(tmp_path / "run")
    ABLATION_REPLICATES.write_csv(report / "replicates.csv")
    pl.DataFrame({"train_set": ["arith"] * 3, "model": ["student-sft@baseline", "student-advdistill@sum-lam0",
                                                        "student-advdistill@sum-lam0@seed2"],
                  "steps": [0, 8, 8], "weighted_ce": [None, 10.0, 20.0], "contrastive": [None, 0.0, 0.0],
                  "contrastive_share": [None, 0.0, 0.0], "wrong_p_mean": [None, 0.5, 0.7],
                  "wrong_at_clamp": [None, 0.0, 0.0], "grad_norm": [None, 1.0, 2.0]}
                 ).write_csv(report / "loss_terms.csv")
    log = tmp_path / "run.snakemake.log"
    log.write_text("56 of 56 steps (100%) done\nElapsed time: 0:27:03.5\n")
    readme_results.record("ablation", tmp_path / "run", log)
    text = readme.read_text()
    assert "the run took 27.1 min; the jobs' wall times add up to 3.0 min" in text
    assert "against the SFT run of the same seed (`student-sft@baseline`)" in text
    assert ("| objective | variant | seeds | accuracy | template adherence | vs SFT (points) | McNemar p | "
            "its λ = 0 | vs its λ = 0 (points) | McNemar p |\n|---|---|---|---|---|---|---|---|---|---|\n") in text
    assert "| advdistill | sum-lam0 | 3 | 45.5 [40.2, 50.8] | 99.0 | 5.5 [1.0, 10.0] | 0.15 | – | – | – |" in text
    assert ("| advdistill | sum-lam0.5 | 3 | 30.0 [20.0, 40.0] | 90.0 | -10.0 [-20.0, 0.0] | 0.00032 | sum-lam0 | "
            "-15.5 [-25.2, -5.8] | 1.2e-08 |") in text
    assert "| student-advdistill@sum-lam0 | 2 | 15.000 | 0.000 | 0.000 | 0.600 | 0.000 | 1.500 |" in text
    assert readme_results.main(["check"]) == 0
    # a record made before variants named their controls keeps its table without the control columns
    ABLATION_REPLICATES.select(pl.exclude("^.*control.*$")).write_csv(report / "replicates.csv")
    readme_results.record("ablation", tmp_path / "run", log)
    text = readme.read_text()
    assert "| advdistill | sum-lam0 | 3 | 45.5 [40.2, 50.8] | 99.0 | 5.5 [1.0, 10.0] | 0.15 |\n" in text
    assert "its λ = 0" not in text and "|---|---|---|---|---|---|---|\n" in text
    log.write_text("Error in rule train\n")
    with pytest.raises(SystemExit, match="no 'Elapsed time' line"):
        readme_results.record("ablation", tmp_path / "run", log)
