"""Report tables, benchmark parsing and the full report on tiny synthetic inputs."""

from __future__ import annotations

import polars as pl
import pytest

from advdistill.io import write_json, write_parquet
from advdistill.metrics import evaluation_metrics
from advdistill.report import (
    accuracy_table,
    behaviour_tables,
    build_report,
    markdown_table,
    stage_costs,
    write_markdown_table,
)

BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"

METRICS = {
    ("teacher", "gsm8k"): {"accuracy": 0.8858, "mean_tokens_correct": 142.66, "mean_tokens_wrong": 169.94,
                           "verbosity_ratio": 1.19123, "degeneracy_correct": 0.00049,
                           "degeneracy_wrong": 0.0231, "template_adherence": 0.9},
    ("student", "gsm8k"): {"accuracy": 0.5, "mean_tokens_correct": 10.0, "mean_tokens_wrong": None,
                           "verbosity_ratio": None, "degeneracy_correct": 0.1,
                           "degeneracy_wrong": None, "template_adherence": 1.0},
    ("student", "mmlu"): {"accuracy": 0.23571, "mean_tokens_correct": 326.0, "mean_tokens_wrong": 361.0,
                          "verbosity_ratio": 1.10736, "degeneracy_correct": 0.2444,
                          "degeneracy_wrong": 0.0191, "template_adherence": 0.123456},
}


def test_accuracy_table_orders_rows_and_columns_and_leaves_missing_cells_null():
    table = accuracy_table(METRICS, ["student", "teacher", "absent"], ["mmlu", "gsm8k"])
    assert table.columns == ["model", "mmlu", "gsm8k"]
    assert table.rows() == [("student", 23.57, 50.0), ("teacher", None, 88.58), ("absent", None, None)]
    assert table.schema["mmlu"] == pl.Float64


def test_behaviour_tables_layout():
    tables = behaviour_tables(METRICS, ["teacher", "student"], ["gsm8k", "mmlu"])
    verbosity, degeneracy, adherence = tables["verbosity"], tables["degeneracy"], tables["template_adherence"]
    assert verbosity.columns == ["model", "gsm8k ✓", "gsm8k ✗", "gsm8k ratio", "mmlu ✓", "mmlu ✗", "mmlu ratio"]
    assert verbosity.row(0) == ("teacher", 142.7, 169.9, 1.19, None, None, None)
    assert verbosity.row(1) == ("student", 10.0, None, None, 326.0, 361.0, 1.11)
    assert degeneracy.columns == ["model", "gsm8k ✓", "gsm8k ✗", "mmlu ✓", "mmlu ✗"]
    assert degeneracy.row(0) == ("teacher", 0.0, 0.023, None, None)
    assert degeneracy.row(1) == ("student", 0.1, None, 0.244, 0.019)
    assert adherence.rows() == [("teacher", 90.0, None), ("student", 100.0, 12.35)]


def test_stage_costs_sums_runs_and_tolerates_na(tmp_path):
    first = tmp_path / "train_a.tsv"
    first.write_text(BENCHMARK_HEADER
                     + "100.5\t0:01:40\t2048.25\t3000\t-\t-\t1.0\t2.0\t95.0\t90.25\n"
                     + "50.0\t0:00:50\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
    second = tmp_path / "train_b.tsv"
    second.write_text(BENCHMARK_HEADER + "10.0\t0:00:10\t4096.5\t5000\t-\t-\t0\t0\t50\t-\n")
    unmeasured = tmp_path / "score.tsv"
    unmeasured.write_text(BENCHMARK_HEADER + "1.5\t0:00:01\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
    costs = stage_costs({"train": [first, second], "score": [unmeasured], "report": []})
    assert costs.columns == ["stage", "jobs", "total_wall_s", "total_cpu_s", "max_rss_mb"]
    assert costs.rows() == [("train", 2, 160.5, 90.25, 4096.5), ("score", 1, 1.5, None, None),
                            ("report", 0, None, None, None)]


def test_markdown_table_shows_nulls_and_writes_csv_beside(tmp_path):
    df = pl.DataFrame({"model": ["a|b", "c"], "x": [1.5, None]})
    assert markdown_table(df) == "| model | x |\n|---|---|\n| a\\|b | 1.5 |\n| c | – |\n"
    path = write_markdown_table(df, tmp_path / "t" / "table.md")
    assert path.read_text() == markdown_table(df)
    assert pl.read_csv(tmp_path / "t" / "table.csv").rows() == [("a|b", 1.5), ("c", None)]


def judged_responses(correct: list[bool], n_tokens: list[int]) -> pl.DataFrame:
    return pl.DataFrame({
        "prompt_id": [f"p{i}" for i in range(len(correct))],
        "response": ["<think>step step step step</think><answer>\\boxed{1}</answer>"] * len(correct),
        "n_tokens": n_tokens,
        "truncated": [False] * len(correct),
        "predicted": ["1"] * len(correct),
        "correct": correct,
        "format_ok": [True, False] * (len(correct) // 2) + [True] * (len(correct) % 2),
    })


def scored_groups(n_groups: int, group_size: int) -> pl.DataFrame:
    rows = []
    for group in range(n_groups):
        for sample in range(group_size):
            correct = sample < group % (group_size + 1)
            rows.append({"prompt_id": f"g{group}", "sample_idx": sample, "response": "r", "n_tokens": 5,
                         "truncated": False, "correct": correct, "r_cos": 0.5, "r_format": 1.0,
                         "reward": float(correct), "advantage": (1.0 if correct else -1.0) * (group + 1) / 4,
                         "kept": 0 < group % (group_size + 1) < group_size})
    return pl.DataFrame(rows)


@pytest.fixture
def report_inputs(tmp_path):
    models, testsets = ["teacher", "student"], ["arith", "logic"]
    frames = {("teacher", "arith"): judged_responses([True, True, True, False], [10, 12, 14, 40]),
              ("teacher", "logic"): judged_responses([True, False], [20, 30]),
              ("student", "arith"): judged_responses([True, False, False, False], [8, 16, 24, 32])}
    metrics_files, responses_files = {}, {}
    for (model, testset), frame in frames.items():
        responses_files[(model, testset)] = tmp_path / "in" / model / testset / "responses.parquet"
        metrics_files[(model, testset)] = tmp_path / "in" / model / testset / "metrics.json"
        write_parquet(frame, responses_files[(model, testset)])
        write_json(evaluation_metrics(frame), metrics_files[(model, testset)])
    scored_files = {"arith": tmp_path / "in" / "scored.parquet"}
    write_parquet(scored_groups(n_groups=10, group_size=4), scored_files["arith"])
    benchmark = tmp_path / "in" / "bench.tsv"
    benchmark.write_text(BENCHMARK_HEADER + "12.25\t0:00:12\t512.5\tNA\tNA\tNA\tNA\tNA\tNA\t11.0\n")
    manifest = tmp_path / "in" / "manifest.json"
    write_json({"git_commit": "abc123def", "config": {"seed": 7}}, manifest)
    return {"metrics_files": metrics_files, "scored_files": scored_files, "responses_files": responses_files,
            "benchmark_files": {"evaluate": [benchmark]}, "manifests": [manifest],
            "out_dir": tmp_path / "report", "models": models, "testsets": testsets}


def test_build_report_writes_tables_figures_and_page(report_inputs):
    index = build_report(**report_inputs)
    out_dir = report_inputs["out_dir"]
    assert index == out_dir / "index.html"
    page = index.read_text()
    for value in ("75.0", "25.0", "50.0", "3.33", "24.0", "12.25", "512.5", "abc123def", "teacher", "student"):
        assert value in page
    assert "<td>–</td>" in page  # student was not evaluated on logic
    for name in ("accuracy", "verbosity", "degeneracy", "template_adherence", "stage_costs"):
        assert (out_dir / f"{name}.md").stat().st_size > 0
        assert (out_dir / f"{name}.csv").stat().st_size > 0
    assert pl.read_csv(out_dir / "accuracy.csv").rows() == [("teacher", 75.0, 50.0),
                                                                        ("student", 25.0, None)]
    figures = sorted(p.name for p in (out_dir / "plots").iterdir())
    assert figures == ["accuracy.png", "advantages_arith.png", "correct_per_group_arith.png",
                       "lengths_arith.png", "lengths_logic.png"]
    for name in figures:
        assert (out_dir / "plots" / name).read_bytes().startswith(b"\x89PNG")
        assert f'src="plots/{name}"' in page
    assert not [p for p in out_dir.rglob(".*tmp-*")]


def test_build_report_without_benchmarks_or_manifests(report_inputs):
    report_inputs.update(benchmark_files={}, manifests=None, scored_files={})
    page = build_report(**report_inputs).read_text()
    assert "Provenance" not in page
    assert not (report_inputs["out_dir"] / "stage_costs.md").exists()


def test_provenance_table_lists_each_manifest(tmp_path):
    from advdistill.provenance import stage_manifest, write_manifest
    from advdistill.report import provenance_table

    output = tmp_path / "scored.parquet"
    path = write_manifest(output, stage_manifest("score", {"settings": {"a": 1}}, 7, 0.0, ["rows.parquet"]))
    table = provenance_table([path])
    assert table.row(0, named=True)["stage"] == "score"
    assert table.row(0, named=True)["output"] == str(output)
    assert table.row(0, named=True)["seed"] == 7
    assert len(table.row(0, named=True)["settings_sha256"]) == 12
