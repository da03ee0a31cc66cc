import json

import polars as pl
import pytest

from advdistill.config import EvaluationConfig, PromptConfig
from advdistill.evaluate import judge, run_evaluate
from advdistill.io import write_parquet
from advdistill.prompts import build_messages, choose_few_shot


def test_judge_marks_correctness_and_format():
    rows = pl.DataFrame({"id": ["a", "b"], "answer": ["4", "B"], "kind": ["numeric", "multiple_choice"],
                         "choices": [[], ["x", "y"]]})
    responses = pl.DataFrame({"prompt_id": ["a", "b"], "sample_idx": [0, 0], "n_tokens": [5, 5],
                              "truncated": [False, False],
                              "response": ["<think>t</think><answer>\\boxed{4}</answer>", "\\boxed{y}"]})
    judged = judge(rows, responses)
    assert judged["correct"].to_list() == [True, True]
    assert judged["format_ok"].to_list() == [True, False]
    assert judged["predicted"].to_list() == ["4", "y"]


def test_few_shot_turns_come_from_training_rows_only(synthetic_rows):
    train, test = synthetic_rows
    shots = choose_few_shot(train.to_dicts(), 2, seed=3)
    assert shots == choose_few_shot(train.to_dicts(), 2, seed=3)
    assert {s["id"] for s in shots} <= set(train["id"])
    messages = build_messages(test.row(0, named=True), few_shot=shots)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert "<answer>\\boxed{" in messages[1]["content"]


def test_evaluate_writes_responses_and_metrics(tiny_model_dir, synthetic_rows, rows_file, tmp_path):
    write_parquet(synthetic_rows[1], tmp_path / "test.parquet")
    cfg = EvaluationConfig(max_new_tokens=8, batch_size=8)
    metrics = run_evaluate(str(tiny_model_dir), tmp_path / "test.parquet", cfg, PromptConfig(few_shot=1),
                              rows_file, 0, tmp_path / "responses.parquet", tmp_path / "metrics.json")
    responses = pl.read_parquet(tmp_path / "responses.parquet")
    assert responses.height == synthetic_rows[1].height == metrics["n"]
    expected_columns = {"prompt_id", "response", "n_tokens", "truncated", "predicted", "correct", "format_ok"}
    assert expected_columns <= set(responses.columns)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert (written["few_shot"], written["few_shot_requested"]) == (1, 1) and "few_shot_note" not in written
    assert not (tmp_path / "responses.raw.parquet").exists()


@pytest.mark.failure_mode(
    "few-shot turns requested but the training split has no worked solutions (MMLU-PRO)",
    sees="a warning; base models and the teacher answer zero-shot, noted in metrics.json and the report",
    kept="the evaluation runs")
def test_base_models_fall_back_to_zero_shot_without_worked_solutions(tiny_model_dir, synthetic_rows, tmp_path,
                                                                      caplog):
    """MMLU-PRO's training rows have no solutions: few-shot turns are dropped, with a warning and a note."""
    train, test = synthetic_rows
    write_parquet(test, tmp_path / "test.parquet")
    write_parquet(train.with_columns(solution=pl.when(pl.col("id") == train["id"][0]).then(pl.col("solution"))
                                     .otherwise(pl.lit(""))), tmp_path / "train.parquet")
    cfg = EvaluationConfig(max_new_tokens=4, max_prompts=3)
    metrics = run_evaluate(str(tiny_model_dir), tmp_path / "test.parquet", cfg, PromptConfig(few_shot=2),
                           tmp_path / "train.parquet", 0, tmp_path / "responses.parquet", tmp_path / "metrics.json")
    assert metrics["n"] == pl.read_parquet(tmp_path / "responses.parquet").height == 3
    assert (metrics["few_shot"], metrics["few_shot_requested"]) == (0, 2)
    assert "1 rows with a worked solution" in metrics["few_shot_note"]
    assert metrics["few_shot_note"] in caplog.text
