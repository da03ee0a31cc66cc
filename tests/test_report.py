"""Report tables, benchmark parsing and the full report on tiny synthetic inputs."""

from __future__ import annotations

import json
import warnings

import polars as pl
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from advdistill.errors import InputError, OutputError
from advdistill.io import read_json, write_json, write_parquet
from advdistill.metrics import evaluation_metrics
from advdistill.report import build_report, run_report
from advdistill.report.comparisons import (
    comparison_pairs,
    has_replicates,
    headlines,
    paired_comparison,
    paired_comparisons,
    replicate_summary,
)
from advdistill.report.page import markdown_table, write_markdown_table
from advdistill.report.plots import loss_terms_figure
from advdistill.report.tables import (
    accuracy_cells,
    accuracy_table,
    behaviour_tables,
    loss_terms_table,
    paper_accuracy,
    paper_lengths,
    paper_training_hours,
    stage_costs,
    training_compute,
)

BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"

METRICS = {
    ("teacher", "gsm8k"): {"accuracy": 0.8858, "mean_tokens_correct": 142.66, "mean_tokens_wrong": 169.94,
                           "verbosity_ratio": 1.19123, "degeneracy_correct": 0.00049,
                           "degeneracy_wrong": 0.0231, "template_adherence": 0.9},
    ("student", "gsm8k"): {"n": 4, "accuracy": 0.5, "mean_tokens_correct": 10.0, "mean_tokens_wrong": None,
                           "verbosity_ratio": None, "degeneracy_correct": 0.1,
                           "degeneracy_wrong": None, "template_adherence": 1.0},
    ("student", "mmlu"): {"accuracy": 0.23571, "mean_tokens_correct": 326.0, "mean_tokens_wrong": 361.0,
                          "verbosity_ratio": 1.10736, "degeneracy_correct": 0.2444,
                          "degeneracy_wrong": 0.0191, "template_adherence": 0.123456},
}


def test_accuracy_table_orders_rows_and_columns_and_leaves_missing_cells_null():
    """student on gsm8k, 2 of n = 4: Wilson centre (2 + z²/2)/(4 + z²) = 0.5, half z/(4 + z²)·sqrt(1 + z²/4)
    = 1.95996/7.84146·1.40012 = 0.34996, so [15.00, 85.00] %. Without ``n`` there is no interval."""
    table = accuracy_table(METRICS, ["student", "teacher", "absent"], ["mmlu", "gsm8k"])
    assert table.columns == ["model", "mmlu", "mmlu lower", "mmlu upper", "gsm8k", "gsm8k lower", "gsm8k upper"]
    assert table.rows() == [("student", 23.57, None, None, 50.0, 15.0, 85.0),
                            ("teacher", None, None, None, 88.58, None, None),
                            ("absent", None, None, None, None, None, None)]
    assert table.schema["mmlu"] == pl.Float64
    assert accuracy_cells(table, ["mmlu", "gsm8k"]).rows() == [("student", "23.57", "50.00 [15.00, 85.00]"),
                                                               ("teacher", None, "88.58"),
                                                               ("absent", None, None)]


def test_comparison_pairs_per_student_objectives_then_base_then_teacher():
    models = ["teacher", "s1-base", "s1-sft", "s1-advdistill", "big-model-base", "big-model-sft"]
    assert comparison_pairs(models) == [
        ("s1-advdistill", "s1-sft"), ("s1-advdistill", "s1-base"), ("s1-advdistill", "teacher"),
        ("s1-sft", "s1-base"), ("s1-sft", "teacher"), ("big-model-sft", "big-model-base"),
        ("big-model-sft", "teacher")]
    assert comparison_pairs(["teacher", "s1-base"]) == []


def test_paired_comparison_joins_on_prompt_id_and_says_when_prompt_sets_differ():
    """Shared prompts b, c, d: first right on b only (b = 1), second right on c and d only (c = 2); a and e are
    not shared. d = (1 − 2)/3 = −33.33 points, half = 1.96·sqrt(3 − 1/3)/3 = 106.69 points, so [−100 (clipped),
    73.35]; p = min(1, 2·(1 + 3)/8) = 1."""
    first = pl.DataFrame({"prompt_id": ["a", "b", "c", "d"], "correct": [True, True, False, False]})
    second = pl.DataFrame({"prompt_id": ["d", "c", "b", "e"], "correct": [True, True, False, True]})
    assert paired_comparison(first, second) == {
        "n": 3, "difference_points": -33.33, "ci_lower": -100.0, "ci_upper": 73.35, "b": 1, "c": 2,
        "mcnemar_p": 1.0, "note": "compared on the 3 prompts both answered (4 and 4 evaluated)"}
    unshared = paired_comparison(first, second.with_columns(pl.col("prompt_id") + "x"))
    assert unshared["n"] == 0 and unshared["difference_points"] is None and unshared["mcnemar_p"] is None


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
        "sample_idx": [0] * len(correct),
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


T, F = True, False


@pytest.fixture
def report_inputs(tmp_path):
    """Prompts p0-p3 for teacher and student-base, p0-p9 for the trained students (all on arith)."""
    models, testsets = ["teacher", "student-base", "student-sft", "student-advdistill"], ["arith", "logic"]
    frames = {("teacher", "arith"): judged_responses([T, T, T, F], [10, 12, 14, 40]),
              ("teacher", "logic"): judged_responses([T, F], [20, 30]),
              ("student-base", "arith"): judged_responses([T, F, F, F], [8, 16, 24, 32]),
              ("student-sft", "arith"): judged_responses([T, T, T, T, T, T, T, F, F, F], [10] * 10),
              ("student-advdistill", "arith"): judged_responses([T, F, F, F, F, F, F, T, F, F], [10] * 10)}
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
    train_metrics_files = {("arith", "student-sft"): tmp_path / "in" / "sft.json",
                           ("arith", "student-advdistill"): tmp_path / "in" / "advdistill.json"}
    write_json({"global_step": 40, "train_runtime": 12.345, "train_items": 160, "train_loss": 0.5},
               train_metrics_files[("arith", "student-sft")])
    write_json({"global_step": 20, "train_runtime": 30.06, "train_items": 20, "tokens_seen": 51200},
               train_metrics_files[("arith", "student-advdistill")])
    return {"metrics_files": metrics_files, "scored_files": scored_files, "responses_files": responses_files,
            "benchmark_files": {"evaluate": [benchmark]}, "manifests": [manifest],
            "out_dir": tmp_path / "report", "models": models, "testsets": testsets,
            "train_metrics_files": train_metrics_files}


def test_build_report_writes_tables_figures_and_page(report_inputs):
    """Wilson 95 % intervals (z² = 3.8415): 3/4 -> centre (3 + 1.9207)/7.8415 = 0.6275, half
    1.96/7.8415·sqrt(0.75 + 0.9604) = 0.3269, so [30.06, 95.44]; 1/2 -> 0.5 ± 1.96/5.8415·sqrt(0.5 + 0.9604)
    = [9.45, 90.55]; 1/4 -> [4.56, 69.94]; 7/10 -> [39.68, 89.22]; 2/10 -> [5.67, 50.98].

    Paired (difference = model − versus, Wald half-width 1.96·sqrt((b + c) − (b − c)²/n)/n, McNemar
    p = min(1, 2·Σ_{i<=min(b,c)} C(b+c, i)/2^(b+c))):
    advdistill vs sft on p0-p9: b = 1 (p7), c = 6 (p1-p6): −50 points, half 1.96·sqrt(7 − 2.5)/10 = 41.58,
    p = 2·(1 + 7)/128 = 0.125. On p0-p3 (the others' prompts, noted): advdistill vs base b = c = 0 (0 ± 0,
    p = 1); advdistill vs teacher b = 0, c = 2 (−50, half 1.96·sqrt(2 − 1)/4 = 49.0, p = 2/4 = 0.5);
    sft vs base b = 3, c = 0 (+75, half 1.96·sqrt(0.75)/4 = 42.43, upper clipped to 100, p = 2/8 = 0.25);
    sft vs teacher b = 1, c = 0 (+25, half 42.43, p = min(1, 2·1/2) = 1).
    """
    index = build_report(**report_inputs)
    out_dir = report_inputs["out_dir"]
    assert index == out_dir / "index.html"
    page = index.read_text()
    for value in ("75.00 [30.06, 95.44]", "50.00 [9.45, 90.55]", "25.00 [4.56, 69.94]", "70.00 [39.68, 89.22]",
                  "3.33", "24.0", "12.25", "512.5", "abc123def", "teacher", "student-sft"):
        assert value in page
    assert "<td>–</td>" in page  # the students were not evaluated on logic
    for name in ("accuracy", "paired_comparisons", "verbosity", "degeneracy", "template_adherence",
                 "training_compute", "stage_costs"):
        assert (out_dir / f"{name}.md").stat().st_size > 0
        assert (out_dir / f"{name}.csv").stat().st_size > 0
    assert pl.read_csv(out_dir / "accuracy.csv").rows() == [
        ("teacher", 75.0, 30.06, 95.44, 50.0, 9.45, 90.55), ("student-base", 25.0, 4.56, 69.94, None, None, None),
        ("student-sft", 70.0, 39.68, 89.22, None, None, None),
        ("student-advdistill", 20.0, 5.67, 50.98, None, None, None)]
    assert "| student-sft | 70.00 [39.68, 89.22] | – |" in (out_dir / "accuracy.md").read_text()

    comparisons = pl.read_csv(out_dir / "paired_comparisons.csv")
    assert comparisons.columns == ["testset", "model", "versus", "n", "difference_points", "ci_lower", "ci_upper",
                                   "b", "c", "mcnemar_p", "note"]
    note = "compared on the 4 prompts both answered (10 and 4 evaluated)"
    assert comparisons.rows() == [
        ("arith", "student-advdistill", "student-sft", 10, -50.0, -91.58, -8.42, 1, 6, 0.125, None),
        ("arith", "student-advdistill", "student-base", 4, 0.0, 0.0, 0.0, 0, 0, 1.0, note),
        ("arith", "student-advdistill", "teacher", 4, -50.0, -99.0, -1.0, 0, 2, 0.5, note),
        ("arith", "student-sft", "student-base", 4, 75.0, 32.57, 100.0, 3, 0, 0.25, note),
        ("arith", "student-sft", "teacher", 4, 25.0, -17.43, 67.43, 1, 0, 1.0, note)]
    headline = ("student-advdistill vs student-sft on arith: −50.0 points [95 % CI −91.6, −8.4], "
                "McNemar p = 0.12, n = 10")
    assert page.split("<h2>")[0].endswith(f'<p class="headline">{headline}</p>\n')

    assert pl.read_csv(out_dir / "training_compute.csv").rows() == [
        ("arith", "student-sft", 40, None, 160, 12.3), ("arith", "student-advdistill", 20, 51200, 20, 30.1)]
    assert "| arith | student-sft | 40 | n/a | 160 | 12.3 |" in (out_dir / "training_compute.md").read_text()
    figures = sorted(p.name for p in (out_dir / "plots").iterdir())
    assert figures == ["accuracy.png", "advantages_arith.png", "correct_per_group_arith.png",
                       "curves_arith_student-advdistill.png", "curves_arith_student-sft.png",
                       "lengths_arith.png", "lengths_logic.png", "loss_terms_arith_student-advdistill.png",
                       "loss_terms_arith_student-sft.png"]
    for name in figures:
        assert (out_dir / "plots" / name).read_bytes().startswith(b"\x89PNG")
        assert f'src="plots/{name}"' in page
    assert not [p for p in out_dir.rglob(".*tmp-*")]


def test_build_report_without_benchmarks_or_manifests(report_inputs):
    report_inputs.update(benchmark_files={}, manifests=None, scored_files={})
    page = build_report(**report_inputs).read_text()
    assert "Provenance" not in page
    assert not (report_inputs["out_dir"] / "stage_costs.md").exists()


def test_build_report_without_trained_students(report_inputs):
    report_inputs.update(models=["teacher", "student-base"], train_metrics_files=None)
    page = build_report(**report_inputs).read_text()
    assert 'class="headline"' not in page and "Paired comparisons" not in page and "Training compute" not in page
    assert not (report_inputs["out_dir"] / "paired_comparisons.csv").exists()


SAMPLED_METRICS = {
    ("teacher", "arith"): {"n": 4, "accuracy": 0.75},
    ("teacher", "logic"): {"n": 2, "accuracy": 0.5},
    ("student-sft", "arith"): {"n": 5, "n_samples": 4, "accuracy": 0.4, "accuracy_lower": 0.0460713,
                               "accuracy_upper": 0.7539287, "majority_accuracy": 0.2,
                               "pass_at_k": {"1": 0.4, "2": 19 / 30, "4": 0.8}, "temperature": 0.8, "top_p": 1.0},
    ("student-base", "arith"): {"n": 2, "n_samples": 2, "accuracy": 0.5, "accuracy_lower": 0.0,
                                "accuracy_upper": 1.0, "majority_accuracy": 0.0,
                                "pass_at_k": {"1": 0.5, "2": 1.0}, "temperature": 0.8, "top_p": 1.0},
}


def test_accuracy_table_with_sampled_evaluations():
    """pass@1 with the interval of metrics.json; majority and pass@k columns only for arith, where models sampled;
    the greedy teacher's majority is its accuracy (Wilson 3/4: [30.06, 95.44]) and it has no pass@k for k > 1;
    student-base (2 samples) has no pass@4."""
    table = accuracy_table(SAMPLED_METRICS, ["teacher", "student-base", "student-sft"], ["arith", "logic"])
    assert table.columns == ["model", "arith", "arith lower", "arith upper", "arith majority", "arith pass@2",
                             "arith pass@4", "logic", "logic lower", "logic upper"]
    assert table.rows() == [("teacher", 75.0, 30.06, 95.44, 75.0, None, None, 50.0, 9.45, 90.55),
                            ("student-base", 50.0, 0.0, 100.0, 0.0, 100.0, None, None, None, None),
                            ("student-sft", 40.0, 4.61, 75.39, 20.0, 63.33, 80.0, None, None, None)]
    assert accuracy_cells(table, ["arith", "logic"]).rows() == [
        ("teacher", "75.00 [30.06, 95.44]", "75.00", None, None, "50.00 [9.45, 90.55]"),
        ("student-base", "50.00 [0.00, 100.00]", "0.00", "100.00", None, None),
        ("student-sft", "40.00 [4.61, 75.39]", "20.00", "63.33", "80.00", None)]


def sampled_judged(correct: list[list[bool]]) -> pl.DataFrame:
    """Prompts p0, p1, ... with ``correct[i][j]`` the outcome of sample j of prompt i (the same count each)."""
    return pl.concat([judged_responses(list(column), [5] * len(column)).with_columns(sample_idx=pl.lit(j))
                      for j, column in enumerate(zip(*correct))]).sort("prompt_id", "sample_idx")


def test_build_report_pairs_sampled_prompts_by_majority(report_inputs):
    """student-sft answers p0-p3 with 4 samples each, c = 4, 3, 2, 0: pass@1 0.5625, pass@2 (1 + 1 + 5/6 + 0)/4
    = 70.83 %, pass@4 75 %, majority T, T, F (a tie), F = 50 %; shares 1, 0.75, 0.5, 0 give a t-interval (half
    3.182·0.427/2 = 0.68) clipped to [0, 100]. Against student-base (T, F, F, F): b = 1 (p1), c = 0, +25 points
    [−17.43, 67.43], p = 1."""
    frame = sampled_judged([[T, T, T, T], [T, T, F, T], [F, T, F, T], [F, F, F, F]])
    write_parquet(frame, report_inputs["responses_files"][("student-sft", "arith")])
    write_json({**evaluation_metrics(frame), "temperature": 0.8, "top_p": 1.0},
               report_inputs["metrics_files"][("student-sft", "arith")])
    page = build_report(**report_inputs).read_text()
    out_dir = report_inputs["out_dir"]
    accuracy = pl.read_csv(out_dir / "accuracy.csv")
    assert accuracy.columns[:7] == ["model", "arith", "arith lower", "arith upper", "arith majority", "arith pass@2",
                                    "arith pass@4"]
    assert accuracy.row(2)[:7] == ("student-sft", 56.25, 0.0, 100.0, 50.0, 70.83, 75.0)
    assert accuracy.row(0)[:7] == ("teacher", 75.0, 30.06, 95.44, 75.0, None, None)
    comparisons = pl.read_csv(out_dir / "paired_comparisons.csv")
    assert comparisons.filter(model="student-sft", versus="student-base").row(0) == (
        "arith", "student-sft", "student-base", 4, 25.0, -17.43, 67.43, 1, 0, 1.0, None)
    assert "4 sample(s) per prompt at temperature 0.8, top_p 1.0: student-sft on arith" in page
    assert "a tie counts as wrong" in page and "Student-t over prompts for several samples per prompt" in page


@pytest.mark.failure_mode(
    "evaluation responses with a repeated prompt id",
    sees="the report stops naming the file instead of double-counting",
    kept="every evaluation")
def test_repeated_prompt_id_stops_the_report(report_inputs):
    path = report_inputs["responses_files"][("teacher", "logic")]
    write_parquet(judged_responses([T, F], [1, 2]).with_columns(pl.lit("p0").alias("prompt_id")), path)
    with pytest.raises(InputError, match="prompt_id 'p0' sample_idx 0 occurs more than once"):
        build_report(**report_inputs)


def test_run_report_reads_the_declared_inputs_of_its_plan(tmp_path):
    results = tmp_path / "results"
    evaluations = []
    for model, correct in (("student-base", [T, F]), ("student-sft", [T, T])):
        folder = results / "evaluate" / "arith" / model / "arith"
        write_parquet(judged_responses(correct, [5, 6]), folder / "responses.parquet")
        write_json(evaluation_metrics(judged_responses(correct, [5, 6])), folder / "metrics.json")
        evaluations.append({"model": model, "testset": "arith", "metrics": str(folder / "metrics.json"),
                            "responses": str(folder / "responses.parquet")})
    scored = results / "score" / "arith" / "scored.parquet"
    write_parquet(scored_groups(n_groups=2, group_size=2), scored)
    history = [{"step": step, "loss": 2.0 / step, "weighted_ce": 1.5 / step, "contrastive": 0.5 / step,
                "wrong_p_mean": 0.8} for step in (1, 2, 3)]
    trained = results / "train" / "arith" / "student-sft"
    write_json({"global_step": 3, "train_runtime": 1.0, "train_items": 6, "log_history": history},
               trained / "train_metrics.json")
    write_json({"stage": "score", "seed": 7}, scored.with_name("scored.parquet.manifest.json"))
    write_json({"stage": "score", "seed": 8}, results / "elsewhere" / "other.parquet.manifest.json")
    plan = {"models": ["student-base", "student-sft"], "testsets": ["arith"], "evaluations": evaluations,
            "scored": {"arith": str(scored)}, "provenance": [str(scored), str(trained)],
            "trained": [{"train_set": "arith", "model": "student-sft", "student": "student", "objective": "sft",
                         "variant": None, "seed": 7, "path": str(trained)}]}
    run_report(plan, tmp_path / "report")
    assert pl.read_csv(tmp_path / "report" / "training_compute.csv").rows() == [
        ("arith", "student-sft", 3, None, 6, 1.0)]
    figure = tmp_path / "report" / "plots" / "loss_terms_arith_student-sft.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "student-sft on arith: training loss and its terms" in page
    provenance = page.split("<h2>Provenance</h2>")[1]
    assert str(scored) in provenance and "other.parquet" not in provenance


def test_stage_costs_count_the_benchmark_files_of_the_plan_alone(tmp_path):
    """A foreign benchmark file beside the run's own (another run's job, or a job this config no longer has) and
    a listed job that has not run yet are not counted."""
    benchmarks = tmp_path / "results" / "default" / "benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for name, seconds in (("train/arith/student-sft", 10.0), ("train/arith/student-advdistill", 30.0),
                          ("train/arith/student-sft@foreign", 500.0), ("score/arith", 2.0)):
        path = benchmarks / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:10\t100.0\t1\t1\t1\t0\t0\t50\t{seconds / 2}\n")
    plan = {"models": [], "testsets": [], "evaluations": [], "scored": {},
            "benchmarks": {"train": [str(benchmarks / "train/arith/student-sft.tsv"),
                                     str(benchmarks / "train/arith/student-advdistill.tsv")],
                           "evaluate": [str(benchmarks / "evaluate/arith/student-sft/arith.tsv")]}}
    run_report(plan, tmp_path / "report")
    costs = pl.read_csv(tmp_path / "report" / "stage_costs.csv")
    assert costs.select("stage", "jobs", "total_wall_s").rows() == [("train", 2, 40.0)]


@pytest.mark.failure_mode("report --out-dir pointed at a folder advdistill did not write",
                          sees="one line: the folder was not written by advdistill, refusing to replace it",
                          kept="the folder and every file in it")
def test_the_report_never_writes_into_a_folder_it_did_not_make(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "index.html").write_text("my page")
    plan = {"models": [], "testsets": [], "evaluations": [], "scored": {}}
    with pytest.raises(OutputError, match="was not written by advdistill"):
        run_report(plan, user)
    assert [p.name for p in user.iterdir()] == ["index.html"] and (user / "index.html").read_text() == "my page"
    index = run_report(plan, tmp_path / "report")
    assert index == tmp_path / "report" / "index.html" and index.is_file()
    assert run_report(plan, tmp_path / "report").is_file()  # its own folder: replaced


def test_provenance_table_lists_each_manifest(tmp_path):
    from advdistill.provenance import stage_manifest, write_manifest
    from advdistill.report.tables import provenance_table

    output = tmp_path / "scored.parquet"
    path = write_manifest(output, stage_manifest("score", {"settings": {"a": 1}}, 7, 0.0, ["rows.parquet"]))
    table = provenance_table([path])
    assert table.row(0, named=True)["stage"] == "score"
    assert table.row(0, named=True)["output"] == str(output)
    assert table.row(0, named=True)["seed"] == 7
    assert len(table.row(0, named=True)["settings_sha256"]) == 12


def test_zero_shot_fallback_is_noted_under_the_accuracy_table(report_inputs):
    path = report_inputs["metrics_files"][("teacher", "logic")]
    note = "evaluated zero-shot: 3 few-shot turns requested, but the training split has 0 rows with a worked solution"
    write_json({**read_json(path), "few_shot": 0, "few_shot_requested": 3, "few_shot_note": note}, path)
    page = build_report(**report_inputs).read_text()
    accuracy_section = page.split("<h3>Accuracy</h3>")[1].split("<h3>")[0]
    assert f"<li>teacher on logic: {note}</li>" in accuracy_section
    assert page.split('<section id="tables">')[1].count("<li>") == 1  # the contents above list sections


SWEEP_RUNS = {name: {"student": "student", "objective": objective, "variant": variant, "seed": seed}
              for name, objective, variant, seed in (
                  ("student-sft", "sft", None, 1), ("student-advdistill", "advdistill", None, 1),
                  ("student-sft@seed2", "sft", None, 2), ("student-advdistill@seed2", "advdistill", None, 2),
                  ("student-advdistill@lam0", "advdistill", "lam0", 1))}


def test_comparison_pairs_of_seeds_and_variants():
    """Per seed the plain runs as without seeds; a variant's run against the plain SFT run of its seed."""
    models = ["teacher", "student-base", *SWEEP_RUNS]
    assert comparison_pairs(models, SWEEP_RUNS) == [
        ("student-advdistill", "student-sft"),
        ("student-advdistill", "student-base"), ("student-advdistill", "teacher"),
        ("student-sft", "student-base"), ("student-sft", "teacher"),
        ("student-advdistill@lam0", "student-sft"),
        ("student-advdistill@seed2", "student-sft@seed2"),
        ("student-advdistill@seed2", "student-base"), ("student-advdistill@seed2", "teacher"),
        ("student-sft@seed2", "student-base"), ("student-sft@seed2", "teacher")]


def test_replicate_summary_over_seeds_by_hand():
    """Two seeds: accuracies 25 % and 100 % give mean 62.5 and t_{0.975,1} = 12.706204736174705 times
    s/sqrt(2) = 53.0330/1.41421 either side; against SFT (50 %, 75 %) the paired differences are -25 and +25
    points (b, c = 0, 1 and 1, 0), pooled b = c = 1, so McNemar p = min(1, 2 * 3/4) = 1."""
    outcomes = {("student-sft", "arith"): judged_responses([T, T, F, F], [5] * 4),
                ("student-sft@seed2", "arith"): judged_responses([T, T, T, F], [5] * 4),
                ("student-advdistill", "arith"): judged_responses([T, F, F, F], [5] * 4),
                ("student-advdistill@seed2", "arith"): judged_responses([T, T, T, T], [5] * 4),
                ("student-advdistill@lam0", "arith"): judged_responses([F, T, F, F], [5] * 4)}
    metrics = {key: {"accuracy": frame["correct"].mean(), "template_adherence": 0.5} for key, frame in outcomes.items()}
    metrics[("student-advdistill@seed2", "arith")]["template_adherence"] = 1.0
    summary = replicate_summary(metrics, outcomes, list(SWEEP_RUNS), ["arith"], SWEEP_RUNS)
    half = 12.706204736174705 * (37.5 * 2 ** 0.5) / 2 ** 0.5
    rows = {(r["objective"], r["variant"]): r for r in summary.iter_rows(named=True)}
    assert rows[("advdistill", None)] == {
        "testset": "arith", "student": "student", "objective": "advdistill", "variant": None, "seeds": 2,
        "accuracy": 62.5, "lower": round(62.5 - half, 2), "upper": round(62.5 + half, 2),
        "template_adherence": 75.0, "versus": "student-sft", "vs_sft_points": 0.0,
        "vs_sft_lower": round(-12.706204736174705 * 25, 2),
        "vs_sft_upper": round(12.706204736174705 * 25, 2), "b": 1, "c": 1, "mcnemar_p_pooled": 1.0,
        **dict.fromkeys(REPLICATE_CONTROL_COLUMNS)}
    assert rows[("sft", None)]["seeds"] == 2 and rows[("sft", None)]["vs_sft_points"] is None
    assert rows[("sft", None)]["accuracy"] == 62.5
    variant = rows[("advdistill", "lam0")]
    assert (variant["seeds"], variant["accuracy"], variant["lower"]) == (1, 25.0, None)
    assert (variant["vs_sft_points"], variant["vs_sft_lower"], variant["b"], variant["c"]) == (-25.0, None, 0, 1)
    assert variant["mcnemar_p_pooled"] == 1.0
    assert has_replicates(summary)
    assert not has_replicates(summary.filter(pl.col("seeds") == 1).with_columns(variant=None))


def test_replicate_headline_names_the_seeds_and_the_pooled_test():
    outcomes = {("student-sft", "arith"): judged_responses([T, T, T, T], [5] * 4),
                ("student-sft@seed2", "arith"): judged_responses([T, T, T, T], [5] * 4),
                ("student-advdistill", "arith"): judged_responses([F, F, F, T], [5] * 4),
                ("student-advdistill@seed2", "arith"): judged_responses([F, F, T, T], [5] * 4)}
    metrics = {key: {"accuracy": frame["correct"].mean()} for key, frame in outcomes.items()}
    models = [name for name in SWEEP_RUNS if "lam0" not in name]
    summary = replicate_summary(metrics, outcomes, models, ["arith"], SWEEP_RUNS)
    comparisons = paired_comparisons(outcomes, models, ["arith"], SWEEP_RUNS)
    # differences -75 and -50: mean -62.5, s = 17.678, half = 12.7062 * 12.5 = 158.83, so -221.3 to +96.3;
    # pooled b = 0, c = 5: p = 2 / 2**5 = 0.0625
    assert headlines(comparisons, summary) == [
        "student-advdistill vs student-sft on arith, mean over 2 seeds: −62.5 points [95 % t-interval −221.3, "
        "+96.3], McNemar p = 0.062 (pooled over seeds)"]
    assert headlines(comparisons)[0].startswith("student-advdistill vs student-sft on arith: −75.0 points")


CONTROLLED_RUNS = {name: {"student": "student", "objective": objective, "variant": variant, "seed": seed,
                         "control": control}
                   for name, objective, variant, seed, control in (
                       ("student-sft", "sft", None, 1, None), ("student-sft@seed2", "sft", None, 2, None),
                       ("student-advdistill@lam0", "advdistill", "lam0", 1, None),
                       ("student-advdistill@lam0@seed2", "advdistill", "lam0", 2, None),
                       ("student-advdistill@lam0.5", "advdistill", "lam0.5", 1, "lam0"),
                       ("student-advdistill@lam0.5@seed2", "advdistill", "lam0.5", 2, "lam0"))}


def test_replicate_summary_compares_a_variant_with_its_control_seed_by_seed_by_hand():
    """lam0.5 against its control lam0, seed by seed: seed 1 b, c = 3, 0 (+75 points), seed 2 b, c = 1, 0 (+25):
    mean +50, s = 25 * sqrt(2), half = t_{0.975,1} * s / sqrt(2) = 12.706204736174705 * 25; pooled b = 4, c = 0,
    so McNemar p = 2 / 2**4 = 0.125. Against SFT: +25 and -25 points, b = c = 1, p = 1."""
    outcomes = {("student-sft", "arith"): judged_responses([T, T, F, F], [5] * 4),
                ("student-sft@seed2", "arith"): judged_responses([T, T, T, F], [5] * 4),
                ("student-advdistill@lam0", "arith"): judged_responses([F, F, F, F], [5] * 4),
                ("student-advdistill@lam0@seed2", "arith"): judged_responses([T, F, F, F], [5] * 4),
                ("student-advdistill@lam0.5", "arith"): judged_responses([T, T, T, F], [5] * 4),
                ("student-advdistill@lam0.5@seed2", "arith"): judged_responses([T, T, F, F], [5] * 4)}
    metrics = {key: {"accuracy": frame["correct"].mean()} for key, frame in outcomes.items()}
    summary = replicate_summary(metrics, outcomes, list(CONTROLLED_RUNS), ["arith"], CONTROLLED_RUNS)
    rows = {r["variant"]: r for r in summary.iter_rows(named=True)}
    half = 12.706204736174705 * 25
    controlled = rows["lam0.5"]
    assert {key: controlled[key] for key in ("versus", "vs_sft_points", "b", "c", "mcnemar_p_pooled")} == {
        "versus": "student-sft", "vs_sft_points": 0.0, "b": 1, "c": 1, "mcnemar_p_pooled": 1.0}
    assert {key: controlled[key] for key in REPLICATE_CONTROL_COLUMNS} == {
        "control": "student-advdistill@lam0", "vs_control_points": 50.0, "vs_control_lower": round(50 - half, 2),
        "vs_control_upper": round(50 + half, 2), "control_b": 4, "control_c": 0, "mcnemar_p_control": 0.125}
    for variant in (None, "lam0"):
        assert all(rows[variant][key] is None for key in REPLICATE_CONTROL_COLUMNS)
    assert rows["lam0"]["vs_sft_points"] == -50.0  # -50 at both seeds: controls leave the SFT comparison alone


REPLICATE_CONTROL_COLUMNS = ("control", "vs_control_points", "vs_control_lower", "vs_control_upper", "control_b",
                             "control_c", "mcnemar_p_control")


VARIANT_ONLY_RUNS = {name: {"student": "student", "objective": objective, "variant": variant, "seed": seed}
                     for name, objective, variant, seed in (
                         ("student-sft@short", "sft", "short", 1), ("student-sft@long", "sft", "long", 1),
                         ("student-advdistill@lam0", "advdistill", "lam0", 1),
                         ("student-sft@short@seed2", "sft", "short", 2),
                         ("student-advdistill@lam0@seed2", "advdistill", "lam0", 2))}


def test_without_plain_runs_the_first_sft_variant_is_the_reference():
    """plain_runs: false leaves no plain SFT run: each seed's runs are compared with its first SFT variant, and the
    headline names both runs without their seeds."""
    models = ["teacher", "student-base", *VARIANT_ONLY_RUNS]
    assert comparison_pairs(models, VARIANT_ONLY_RUNS) == [
        ("student-sft@long", "student-sft@short"), ("student-advdistill@lam0", "student-sft@short"),
        ("student-advdistill@lam0@seed2", "student-sft@short@seed2")]
    outcomes = {("student-sft@short", "arith"): judged_responses([T, T, T, T], [5] * 4),
                ("student-sft@long", "arith"): judged_responses([T, T, T, F], [5] * 4),
                ("student-sft@short@seed2", "arith"): judged_responses([T, T, F, F], [5] * 4),
                ("student-advdistill@lam0", "arith"): judged_responses([T, F, F, F], [5] * 4),
                ("student-advdistill@lam0@seed2", "arith"): judged_responses([T, T, F, F], [5] * 4)}
    metrics = {key: {"accuracy": frame["correct"].mean()} for key, frame in outcomes.items()}
    summary = replicate_summary(metrics, outcomes, list(VARIANT_ONLY_RUNS), ["arith"], VARIANT_ONLY_RUNS)
    rows = {r["variant"]: r for r in summary.iter_rows(named=True)}
    # lam0 against short: -75 and 0 points, b = 0, c = 3 pooled
    assert (rows["lam0"]["versus"], rows["lam0"]["vs_sft_points"], rows["lam0"]["b"], rows["lam0"]["c"]) == (
        "student-sft@short", -37.5, 0, 3)
    assert rows["short"]["versus"] is None and rows["long"]["versus"] == "student-sft@short"
    comparisons = paired_comparisons(outcomes, list(VARIANT_ONLY_RUNS), ["arith"], VARIANT_ONLY_RUNS)
    assert headlines(comparisons, summary)[0].startswith(
        "student-advdistill@lam0 vs student-sft@short on arith, mean over 2 seeds: −37.5 points")


def test_loss_terms_table_averages_the_second_half_of_the_logged_steps():
    history = [{"step": s, "loss": 1.0, "weighted_ce": w, "contrastive": c, "wrong_p_mean": p, "grad_norm": g}
               for s, w, c, p, g in ((1, 9.0, 9.0, 0.1, 9.0), (2, 9.0, 9.0, 0.1, 9.0), (3, 1.0, 3.0, 0.8, 2.0),
                                     (4, 2.0, 1.0, 0.9, 4.0))]
    history.append({"train_runtime": 5.0})
    table = loss_terms_table({("arith", "s-advdistill"): {"log_history": history},
                              ("arith", "s-sft"): {"log_history": [{"step": 1, "loss": 2.0}]}})
    assert table.rows() == [("arith", "s-advdistill", 2, 1.5, 2.0, round(2.0 / 3.5, 3), 0.85, None, 3.0),
                            ("arith", "s-sft", 0, None, None, None, None, None, None)]


def test_loss_terms_legend_names_the_contrastive_term_with_its_lambda():
    history = [{"step": step, "loss": 2.0 / step, "weighted_ce": 1.5 / step, "contrastive": 0.5 / step,
                "wrong_p_mean": 0.8} for step in (1, 2, 3)]
    figure = loss_terms_figure(history, "s-advdistill on arith")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph missing from the font only warns, and is drawn as a box
        FigureCanvasAgg(figure).draw()
    loss_axes, wrong_p_axes = figure.axes
    assert [text.get_text() for text in loss_axes.get_legend().get_texts()] == [
        "loss", "weighted cross-entropy", "λ·Σ contrastive"]
    assert [text.get_text() for text in wrong_p_axes.get_legend().get_texts()] == ["mean p of wrong responses"]


def test_paper_reference_tables():
    accuracy = accuracy_table({("s-sft", "gsm8k"): {"accuracy": 0.7, "n": 10}}, ["s-sft", "s-base"], ["gsm8k"])
    table = paper_accuracy(accuracy, {"gsm8k": {"s-sft": 72.85, "s-base": 42.45}})
    assert table.rows() == [("gsm8k", "s-sft", 72.85, 70.0, 39.68, 89.22, -2.85, True),
                            ("gsm8k", "s-base", 42.45, None, None, None, None, None)]
    lengths = paper_lengths({("s-sft", "gsm8k"): {"mean_tokens_correct": 140.04, "mean_tokens_wrong": None}},
                            {"gsm8k": {"s-sft": {"correct": 552.8, "wrong": 552.7}}})
    assert lengths.rows() == [("gsm8k", "s-sft", 552.8, 140.0, 552.7, None)]
    compute = training_compute({("gsm8k", "s-sft"): {"global_step": 3, "train_runtime": 5400.0}})
    hours = paper_training_hours(compute, {"gsm8k": {"s-sft": 3.0, "s-advdistill": 15.0}})
    assert hours.rows() == [("gsm8k", "s-sft", 3.0, 1.5), ("gsm8k", "s-advdistill", 15.0, None)]


@pytest.mark.failure_mode(
    "advdistill report called by hand with a plan that lacks a part (no evaluations, an entry without its files)",
    sees="report stops (exit 2): --plan: <part> must be a JSON array / <part>[i] lacks <keys>",
    kept="everything; nothing is read or written")
@pytest.mark.parametrize("plan, message", [
    ("{}", "--plan: 'models' must be a JSON array"),
    ('{"models": [], "testsets": [], "scored": {}, "evaluations": [{"model": "a"}]}',
     "--plan: evaluations[0] lacks testset, metrics, responses"),
    ('{"models": [], "testsets": [], "scored": {}, "evaluations": [], "trained": [{"model": "a", "path": "p"}]}',
     "--plan: trained[0] lacks train_set, student, objective"),
])
def test_an_incomplete_plan_is_named_before_anything_is_read(capsys, tmp_path, plan, message):
    """It used to end in a KeyError traceback."""
    from tests.helpers import run_cli

    code, err = run_cli(capsys, "report", "--plan", plan, "--out-dir", tmp_path / "report")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "report").exists()


def plan_naming(tmp_path, key, name):
    """A plan whose inputs exist and all make a figure (so an unchecked name would be written), with ``name`` at
    ``key``, every other name safe."""
    names = {"scored": "arith", "testsets": "arith", "train_set": "arith", "model": "student-sft", **{key: name}}
    responses, metrics, scored = tmp_path / "responses.parquet", tmp_path / "metrics.json", tmp_path / "scored.parquet"
    write_parquet(judged_responses([T, F], [5, 6]), responses)
    write_json(evaluation_metrics(judged_responses([T, F], [5, 6])), metrics)
    write_parquet(scored_groups(n_groups=2, group_size=2), scored)
    write_json({"global_step": 1, "train_runtime": 1.0, "log_history": [{"step": 1, "loss": 1.0}]},
               tmp_path / "trained" / "train_metrics.json")
    return {"models": [names["model"]], "testsets": [names["testsets"]], "scored": {names["scored"]: str(scored)},
            "evaluations": [{"model": names["model"], "testset": names["testsets"], "metrics": str(metrics),
                             "responses": str(responses)}],
            "trained": [{"train_set": names["train_set"], "model": names["model"], "student": "student",
                         "objective": "sft", "path": str(tmp_path / "trained")}]}


@pytest.mark.failure_mode(
    "advdistill report called with a plan whose scored dataset, test set or trained run's train_set or model is no "
    "safe file name ('../../x', '..', '.x', '-x', 'a/b', a trailing newline)",
    sees="report stops (exit 2): --plan <key>: '<name>' is not a safe name, with the rule a safe name follows",
    kept="everything; no file is read or written, inside --out-dir or outside it")
@pytest.mark.parametrize("key, where", [("scored", "--plan scored:"), ("testsets", "--plan testsets[0]:"),
                                        ("train_set", "--plan trained[0].train_set:"),
                                        ("model", "--plan trained[0].model:")])
@pytest.mark.parametrize("name", ["../../../../escaped", "..", ".hidden", "-x", "a/b", "arith\n", "a@.."])
def test_a_plan_name_that_is_no_safe_file_name_is_refused_before_anything_is_written(capsys, tmp_path, key, where,
                                                                                      name):
    """The names become parts of the plots' file names, and writing creates missing folders: '../../../../escaped'
    used to write escaped.png beside the report's folder."""
    from tests.helpers import run_cli

    plan = json.dumps(plan_naming(tmp_path, key, name))
    out_dir = tmp_path / "run" / "report"
    out_dir.parent.mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    code, err = run_cli(capsys, "report", "--plan", plan, "--out-dir", out_dir)
    assert code == 2 and f"{where} {name!r} is not a safe name" in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_trained_run_of_a_variant_and_seed_names_its_plots(tmp_path):
    """Its name joins config names with '@', as the workflow writes it: one path component all the same."""
    run_report(plan_naming(tmp_path, "model", "student-sft@lam0.5@seed7"), tmp_path / "report")
    plots = tmp_path / "report" / "plots"
    assert (plots / "loss_terms_arith_student-sft@lam0.5@seed7.png").is_file()
    assert (plots / "curves_arith_student-sft@lam0.5@seed7.png").is_file()


@pytest.mark.parametrize("advantage", [float("nan"), float("inf"), None])
def test_a_scored_table_with_an_advantage_that_is_no_number_is_named(tmp_path, advantage):
    from advdistill.report.build import read_scored

    scored = scored_groups(n_groups=2, group_size=2).with_columns(
        pl.when(pl.col("prompt_id") == pl.col("prompt_id").max()).then(advantage).otherwise(pl.col("advantage"))
        .alias("advantage"))
    write_parquet(scored, tmp_path / "scored.parquet")
    with pytest.raises(InputError, match=r"scored\.parquet: 2 row\(s\) with a null, NaN or infinite advantage, first: "
                                         r"row 2 \(prompt_id 'g1', advantage (nan|inf|None)\); row 3 "):
        read_scored(tmp_path / "scored.parquet")


CONFIG_BYTES = b'{"model_type": "qwen2", "hidden_size": 32}\n'


def model_folder(folder, stands_in_for=None):
    """A folder with a hand-written config.json (marked as a stand-in for ``stands_in_for``); its bytes."""
    from advdistill.provenance import STAND_IN_KEY

    data = CONFIG_BYTES if stands_in_for is None else CONFIG_BYTES.replace(
        b"}", f', "{STAND_IN_KEY}": "{stands_in_for}"}}'.encode())
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(data)
    return data


def test_a_stage_manifest_records_the_environment_and_the_model_folder(tmp_path, monkeypatch):
    """What ``advdistill evaluate`` writes after its work: torch as installed (importlib.metadata, no import of
    absent vllm), the CPU model of /proc/cpuinfo, and the --model folder with the sha256 of its config.json."""
    import hashlib
    import importlib.metadata
    import sys
    import time

    import torch

    from advdistill import provenance
    from advdistill.cli import build_parser, record_provenance

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: Test\nmodel name\t: Test CPU 9000 @ 3.00GHz\n")
    monkeypatch.setattr(provenance, "CPUINFO", cpuinfo)
    data = model_folder(tmp_path / "models" / "student")
    out = tmp_path / "eval" / "responses.parquet"
    args = build_parser().parse_args(["evaluate", "--model", str(tmp_path / "models" / "student"), "--rows",
                                      str(tmp_path / "rows.parquet"), "--out", str(out), "--metrics",
                                      str(tmp_path / "eval" / "metrics.json")])
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.0.test" if name == "vllm" else real_version(name))
    record_provenance(args, time.time())
    manifest = read_json(tmp_path / "eval" / "responses.parquet.manifest.json")
    environment = manifest["environment"]
    assert environment["packages"]["torch"] == torch.__version__
    assert environment["packages"]["vllm"] == "0.0.test" and "vllm" not in sys.modules
    assert provenance.package_version("no-such-distribution") is None
    assert environment["cpu"] == "Test CPU 9000 @ 3.00GHz"
    assert manifest["model"] == {"source": str(tmp_path / "models" / "student"),
                                 "folder": str((tmp_path / "models" / "student").resolve()),
                                 "config_sha256": hashlib.sha256(data).hexdigest(), "stands_in_for": None}


def test_on_a_gpu_node_the_manifest_names_the_cuda_runtime_driver_and_gpus(monkeypatch):
    """No GPU here: a stand-in torch that sees two, and nvidia-smi's answer (a line per GPU)."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from advdistill import provenance

    cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                           get_device_name=lambda i: f"NVIDIA H100 80GB HBM3 #{i}")
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda, version=SimpleNamespace(cuda="12.4")))
    asked = []

    def nvidia_smi(command, **kwargs):
        asked.append(command[0])
        return subprocess.CompletedProcess(command, 0, stdout="550.54.15\n550.54.15\n", stderr="")

    monkeypatch.setattr(provenance.subprocess, "run", nvidia_smi)
    assert provenance.gpu_environment() == {"cuda_runtime": "12.4", "cuda_driver": "550.54.15",
                                            "gpus": ["NVIDIA H100 80GB HBM3 #0", "NVIDIA H100 80GB HBM3 #1"]}
    assert asked == ["nvidia-smi"]
    monkeypatch.delitem(sys.modules, "torch")  # a stage that never imported torch used no GPU
    assert provenance.gpu_environment() == {"cuda_runtime": None, "cuda_driver": None, "gpus": []}


def test_a_hub_model_is_recorded_with_its_cached_snapshot(tmp_path, monkeypatch):
    import hashlib

    import huggingface_hub.constants

    from advdistill.provenance import model_record

    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    data = model_folder(repo / "snapshots" / "abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_record("Qwen/Qwen2.5-7B") == {"source": "Qwen/Qwen2.5-7B",
                                               "folder": str(repo / "snapshots" / "abc123"),
                                               "config_sha256": hashlib.sha256(data).hexdigest(),
                                               "stands_in_for": None}
    assert model_record("Qwen/Qwen2.5-3B") == {"source": "Qwen/Qwen2.5-3B", "folder": None, "config_sha256": None,
                                               "stands_in_for": None}


def test_a_merge_manifest_carries_the_sampling_jobs_and_the_report_lists_their_machines(tmp_path):
    """The sampling jobs loaded the teacher on the GPUs; the merge that the report's plan names did neither."""
    import time

    from advdistill.cli import build_parser, record_provenance
    from advdistill.report.tables import environment_table, models_table, stage_jobs

    parts = [tmp_path / "parts" / f"part-{i}.parquet" for i in range(3)]
    gpu = {"python": "3.11.9", "packages": {"torch": "2.5.1", "vllm": "0.6.3"}, "cuda_runtime": "12.4",
           "cuda_driver": "550.54.15", "cpu": "EPYC", "gpus": ["NVIDIA H100", "NVIDIA H100"]}
    for i, part in enumerate(parts[:2]):
        write_json({"stage": "sample", "host": "gpu-node", "environment": gpu,
                    "model": {"source": "Qwen/Qwen2.5-7B", "folder": "/hub/snap", "config_sha256": "f" * 64,
                              "stands_in_for": None}}, part.with_name(part.name + ".manifest.json"))
    args = build_parser().parse_args(["merge-samples", *map(str, parts), "--out", str(tmp_path / "samples.parquet")])
    record_provenance(args, time.time())
    merged = tmp_path / "samples.parquet.manifest.json"
    manifest = read_json(merged)
    assert list(manifest["parts"]) == [str(parts[0]), str(parts[1])]  # part-2 wrote no manifest
    assert manifest["model"] is None
    jobs = stage_jobs([merged])
    assert [output for output, _ in jobs] == [str(parts[0]), str(parts[1]), str(tmp_path / "samples.parquet")]
    environment = environment_table(jobs)
    assert environment.height == 2  # the two sampling jobs are one row
    sample = environment.row(0, named=True)
    assert (sample["stages"], sample["jobs"], sample["host"], sample["vllm"], sample["cuda_driver"],
            sample["gpus"]) == ("sample", 2, "gpu-node", "0.6.3", "550.54.15", "2 × NVIDIA H100")
    assert environment.row(1, named=True)["stages"] == "merge-samples"
    assert models_table(jobs).rows() == [("sample", 2, "Qwen/Qwen2.5-7B", "/hub/snap", "f" * 12, None)]


def stage_manifest_of(tmp_path, name: str, stands_in_for=None):
    """The manifest of an evaluation of a model folder ``name`` (a stand-in for ``stands_in_for``)."""
    from advdistill.provenance import stage_manifest, write_manifest

    folder = tmp_path / "models" / name
    model_folder(folder, stands_in_for)
    return write_manifest(tmp_path / "eval" / name / "responses.parquet",
                          stage_manifest("evaluate", {}, 0, 0.0, [str(folder)], model=str(folder)))


def test_the_page_opens_with_a_banner_naming_the_stand_ins(report_inputs, tmp_path):
    report_inputs["manifests"] = [stage_manifest_of(tmp_path, "teacher-standin", "Qwen/Qwen2.5-7B"),
                                  stage_manifest_of(tmp_path, "student-base")]
    page = build_report(**report_inputs).read_text()
    body = page.split("<body>", 1)[1].lstrip()
    assert body.startswith('<div class="standin" role="alert"><strong>This run used stand-in models')
    banner = body.split("</div>")[0]
    assert f"Qwen/Qwen2.5-7B replaced by {(tmp_path / 'models' / 'teacher-standin').resolve()}" in banner
    assert "student-base" not in banner and "say nothing about the real models" in banner
    models = page.split('<section id="provenance-models">')[1].split("</section>")[0]
    assert "<td>Qwen/Qwen2.5-7B</td>" in models and "student-base" in models


def test_no_banner_without_a_stand_in(report_inputs, tmp_path):
    report_inputs["manifests"] = [stage_manifest_of(tmp_path, "student-base")]
    page = build_report(**report_inputs).read_text()
    assert 'class="standin"' not in page and "stand-in models" not in page
    assert "student-base" in page.split('<section id="provenance-models">')[1]


def test_the_page_names_the_run_its_config_files_and_when_it_was_built(tmp_path):
    import re
    from datetime import datetime, timezone

    plan = {"models": [], "testsets": [], "evaluations": [], "scored": {},
            "run": {"name": "paper-gsm8k", "config_files": ["config/paper/gsm8k.yaml", "overrides.yaml"]}}
    before = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    page = run_report(plan, tmp_path / "report").read_text()
    assert "<title>AdvDistill report: paper-gsm8k</title>" in page
    run_line = page.split('<p class="run">')[1].split("</p>")[0]
    assert run_line.startswith("Run: <strong>paper-gsm8k</strong>")
    assert "Config files: <code>config/paper/gsm8k.yaml</code>, <code>overrides.yaml</code>" in run_line
    built = re.search(r"Report built: (\d{4}-\d{2}-\d{2}) \d{2}:\d{2} UTC", run_line)
    assert built and built.group(1) in (before, datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    plan.pop("run")
    assert "Run: <strong>–</strong><br>Config files: –" in run_report(plan, tmp_path / "report").read_text()


@pytest.mark.parametrize("run, message", [
    ('[]', "--plan: 'run' must be a JSON object"),
    ('{"name": 3}', "--plan: 'run' must have a string 'name' and an array of strings 'config_files'"),
    ('{"name": "r", "config_files": "config.yaml"}', "an array of strings 'config_files'"),
])
def test_a_malformed_run_section_is_named(capsys, tmp_path, run, message):
    from tests.helpers import run_cli

    plan = f'{{"models": [], "testsets": [], "scored": {{}}, "evaluations": [], "run": {run}}}'
    code, err = run_cli(capsys, "report", "--plan", plan, "--out-dir", tmp_path / "report")
    assert code == 2 and message in err
    assert not (tmp_path / "report").exists()


def test_every_table_and_figure_is_linked_from_the_contents(report_inputs, tmp_path):
    import re

    report_inputs["manifests"] = [stage_manifest_of(tmp_path, "student-base")]
    page = build_report(**report_inputs).read_text()
    out_dir = report_inputs["out_dir"]
    contents = page.split("<h2>Contents</h2>")[1].split("</ul>\n")[0]
    links = re.findall(r'href="#([^"]+)"', contents)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)) and set(links) <= set(ids)
    assert set(links) >= {f"table-{p.stem}" for p in out_dir.glob("*.md")} | {
        f"figure-{p.stem}" for p in (out_dir / "plots").glob("*.png")} | {
        "tables", "figures", "provenance", "provenance-outputs", "provenance-environment", "provenance-models"}
    assert page.index("<h2>Contents</h2>") < page.index('<section id="tables">')


HISTORY = [{"step": 1, "loss": 2.0, "learning_rate": 1e-5, "grad_norm": 3.0},
           {"step": 2, "loss": 1.5, "learning_rate": 2e-5, "grad_norm": 2.0},
           {"step": 2, "eval_loss": 1.8, "eval_runtime": 0.1},
           {"step": 3, "loss": 1.0, "learning_rate": 1.5e-5, "grad_norm": 1.0},
           {"step": 4, "loss": 0.8, "learning_rate": 1e-5},
           {"step": 4, "eval_loss": 1.2, "eval_runtime": 0.1},
           {"step": 4, "train_runtime": 5.0, "train_loss": 1.3}]


def test_training_curves_show_training_and_validation_loss_and_the_learning_rate():
    from advdistill.report.plots import training_curves_figure

    figure = training_curves_figure(HISTORY, "s-sft on arith")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FigureCanvasAgg(figure).draw()
    loss_axes, rate_axes = figure.axes
    train, validation = loss_axes.get_lines()
    assert (train.get_label(), list(train.get_xdata()), list(train.get_ydata())) == (
        "training loss", [1, 2, 3, 4], [2.0, 1.5, 1.0, 0.8])
    assert (validation.get_label(), list(validation.get_xdata()), list(validation.get_ydata())) == (
        "validation loss", [2, 4], [1.8, 1.2])
    (rate,) = rate_axes.get_lines()
    assert list(rate.get_xdata()) == [1, 2, 3, 4] and list(rate.get_ydata()) == [1e-5, 2e-5, 1.5e-5, 1e-5]


def test_the_report_writes_a_curves_figure_per_trained_run(report_inputs):
    path = report_inputs["train_metrics_files"][("arith", "student-sft")]
    write_json({**read_json(path), "log_history": HISTORY}, path)
    page = build_report(**report_inputs).read_text()
    figure = report_inputs["out_dir"] / "plots" / "curves_arith_student-sft.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert ('<figure id="figure-curves_arith_student-sft"><img src="plots/curves_arith_student-sft.png" '
            'alt="student-sft on arith: training and validation loss and learning rate per step">') in page
