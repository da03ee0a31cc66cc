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


def write_report(report: Path) -> None:
    report.mkdir(parents=True)
    pl.DataFrame({"model": ["teacher", "student-sft", "student-advdistill"], "arith": [85.0, 40.5, 11.0],
                  "arith lower": [79.41, 33.95, 7.39], "arith upper": [89.28, 47.38, 16.07]}).write_csv(
        report / "accuracy.csv")
    pl.DataFrame({"model": ["teacher", "student-sft", "student-advdistill"], "arith": [100.0, 99.5, 38.5]}).write_csv(
        report / "template_adherence.csv")
    pl.DataFrame({"testset": ["arith", "arith"], "model": ["student-advdistill"] * 2,
                  "versus": ["student-sft", "teacher"], "n": [200, 200], "difference_points": [-29.5, -74.0],
                  "ci_lower": [-36.5, -80.0], "ci_upper": [-22.5, -68.0], "b": [3, 0], "c": [62, 148],
                  "mcnemar_p": [4.1e-14, 1e-40], "note": [None, None]}).write_csv(report / "paired_comparisons.csv")
    pl.DataFrame({"stage": ["train", "evaluate"], "jobs": [2, 6], "total_wall_s": [120.0, 60.0],
                  "total_cpu_s": [200.0, 100.0], "max_rss_mb": [900.0, 800.0]}).write_csv(report / "stage_costs.csv")


def test_record_writes_the_section_and_check_catches_an_edit(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- results:default -->\nold numbers\n<!-- /results:default -->\n\nAfter.\n")
    monkeypatch.setattr(readme_results, "README", readme)
    monkeypatch.setattr(readme_results, "RECORDS", tmp_path / "docs" / "results")
    monkeypatch.setattr(readme_results, "REPO", tmp_path)
    write_report(tmp_path / "report")
    readme_results.record("default", tmp_path / "report")
    text = readme.read_text()
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
    (tmp_path / "report").mkdir()
    with pytest.raises(SystemExit, match="no accuracy.csv, template_adherence.csv"):
        readme_results.record("default", tmp_path / "report")
