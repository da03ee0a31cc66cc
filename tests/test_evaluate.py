import json

import polars as pl
import pytest

from advdistill import prompts
from advdistill.config import EvaluationConfig, PromptConfig
from advdistill.evaluate import judge, run_evaluate, with_unanswered_prompts
from advdistill.io import write_parquet
from advdistill.prompts import build_messages, choose_few_shot
from tests.helpers import files_under, run_cli


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


def test_few_shot_turns_are_training_rows_with_a_worked_solution(synthetic_rows):
    train, test = synthetic_rows
    unsolved = [{**row, "id": f"unsolved-{i}", "solution": ""} for i, row in enumerate(test.to_dicts() * 8)]
    candidates = unsolved + train.to_dicts()  # 128 rows without a solution beside 64 with one
    shots = choose_few_shot(candidates, 2, seed=3)
    assert shots == choose_few_shot(candidates, 2, seed=3)
    assert {s["id"] for s in shots} <= set(train["id"])
    messages = build_messages(test.row(0, named=True), few_shot=shots)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert "<answer>\\boxed{" in messages[1]["content"]


def test_evaluate_writes_responses_and_metrics(tiny_model_dir, synthetic_rows, rows_file, tmp_path, monkeypatch):
    import advdistill.evaluate as evaluate_module

    rendered = []

    def render_prompts(*args, **kwargs):
        rendered.extend(prompts.render_prompts(*args, **kwargs))
        return rendered[-len(args[0]):]

    monkeypatch.setattr(evaluate_module, "render_prompts", render_prompts)
    write_parquet(synthetic_rows[1], tmp_path / "test.parquet")
    cfg = EvaluationConfig(max_new_tokens=8, batch_size=8)
    metrics = run_evaluate(str(tiny_model_dir), tmp_path / "test.parquet", cfg, PromptConfig(few_shot=1),
                              rows_file, 0, tmp_path / "responses.parquet", tmp_path / "metrics.json")
    train, test = synthetic_rows
    assert len(rendered) == test.height
    for prompt, question in zip(rendered, test["question"]):
        # its own question, one worked training example, and no other test question
        assert question in prompt and sum(q in prompt for q in train["question"]) == 1
        assert sum(q in prompt for q in test["question"]) == 1
    responses = pl.read_parquet(tmp_path / "responses.parquet")
    assert responses.height == synthetic_rows[1].height == metrics["n"]
    assert responses.columns == ["prompt_id", "sample_idx", "response", "n_tokens", "truncated", "predicted",
                                 "correct", "format_ok"]
    assert responses["sample_idx"].unique().to_list() == [0]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert (written["few_shot"], written["few_shot_requested"]) == (1, 1) and "few_shot_note" not in written
    # greedy (the default) writes the metrics it always has: no sampling settings, pass@k or majority
    assert set(written) == {"n", "accuracy", "mean_tokens_correct", "mean_tokens_wrong", "verbosity_ratio",
                            "degeneracy_correct", "degeneracy_wrong", "degeneracy", "degeneracy_ngram",
                            "template_adherence", "truncated_share", "model", "testset", "few_shot",
                            "few_shot_requested", "train_overlap"}
    assert written["train_overlap"] == 0
    assert not (tmp_path / "responses.raw.parquet").exists()


def test_sampled_evaluation_writes_every_sample_and_pass_at_k(tiny_model_dir, synthetic_rows, tmp_path):
    """4 samples per prompt at temperature 0.8: one row per (prompt, sample), pass@1 as the mean over samples, the
    same responses again for the same seed."""
    write_parquet(synthetic_rows[1], tmp_path / "test.parquet")
    cfg = EvaluationConfig(max_new_tokens=6, batch_size=2, max_prompts=3, n_samples=4, temperature=0.8)
    runs = []
    for name in ("first", "again"):
        metrics = run_evaluate(str(tiny_model_dir), tmp_path / "test.parquet", cfg, PromptConfig(), None, 5,
                               tmp_path / name / "responses.parquet", tmp_path / name / "metrics.json")
        runs.append((pl.read_parquet(tmp_path / name / "responses.parquet"), metrics))
    (responses, metrics), (again, _) = runs
    ids = synthetic_rows[1]["id"].head(3).to_list()
    assert responses.select("prompt_id", "sample_idx").rows() == [(i, j) for i in ids for j in range(4)]
    assert responses.equals(again)
    assert responses.group_by("prompt_id").agg(pl.col("response").n_unique())["response"].min() > 1  # sampled
    assert (metrics["n"], metrics["n_samples"], metrics["temperature"], metrics["top_p"]) == (3, 4, 0.8, 1.0)
    assert metrics["accuracy"] == pytest.approx(responses["correct"].mean())
    assert list(metrics["pass_at_k"]) == ["1", "2", "4"]
    assert metrics["pass_at_k"]["1"] == pytest.approx(metrics["accuracy"])
    assert json.loads((tmp_path / "first" / "metrics.json").read_text())["majority_accuracy"] == \
        metrics["majority_accuracy"]


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


@pytest.mark.failure_mode(
    "a test prompt the backend skips (too long for vLLM's max_model_len)",
    sees="a warning naming the prompts; metrics.json counts them in prompts_without_response",
    kept="the evaluation runs; each skipped prompt counts as wrong, not as absent")
def test_a_prompt_without_response_counts_as_wrong(synthetic_rows):
    test = synthetic_rows[1].head(3)
    ids = test["id"].to_list()
    responses = pl.DataFrame({"prompt_id": [ids[0], ids[0]], "sample_idx": [0, 1], "response": ["a", "b"],
                              "n_tokens": [1, 1], "truncated": [False, False]},
                             schema_overrides={"sample_idx": pl.Int32, "n_tokens": pl.Int32})
    completed, unanswered = with_unanswered_prompts(responses, ids, n_samples=2)
    assert unanswered == 2 and completed.schema == responses.schema
    assert completed.filter(pl.col("prompt_id") == ids[2])["sample_idx"].to_list() == [0, 1]
    judged = judge(test, completed)
    assert judged.height == 6 and not judged.filter(pl.col("prompt_id") != ids[0])["correct"].any()
    assert with_unanswered_prompts(responses, ids[:1], n_samples=2) == (responses, 0)


@pytest.mark.failure_mode(
    "a test set whose questions are training questions of its experiment (one release file given for both splits)",
    sees="one line naming the test rows, the share shared, the first id, the training rows and "
         "evaluation.max_train_overlap; exit 2 before the model is loaded",
    kept="everything; nothing is written")
def test_a_test_set_that_is_the_training_set_is_refused(capsys, tiny_model_dir, synthetic_rows, rows_file, tmp_path):
    train, test = synthetic_rows
    write_parquet(pl.concat([test.head(15), train.head(1)]), tmp_path / "test.parquet")  # 1 of 16: 6.25 %
    code, err = run_cli(capsys, "evaluate", "--model", tiny_model_dir, "--rows", tmp_path / "test.parquet",
                        "--few-shot-rows", rows_file, "--settings", '{"max_new_tokens": 4}',
                        "--out", tmp_path / "out" / "responses.parquet", "--metrics", tmp_path / "out" / "m.json")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"advdistill evaluate: error: {tmp_path / 'test.parquet'}: 1 of 16 test questions (6.2 %, "
                           f"first id {train['id'][0]!r}) are also in the training rows {rows_file}, over evaluation."
                           "max_train_overlap 5.0 %: the test set would measure memorisation (one file given for "
                           "both splits?)")
    assert files_under(tmp_path) == {"test.parquet"}
    code, err = run_cli(capsys, "evaluate", "--model", tiny_model_dir, "--rows", tmp_path / "test.parquet",
                        "--few-shot-rows", rows_file, "--settings", '{"max_new_tokens": 4, "max_train_overlap": 0.1}',
                        "--out", tmp_path / "out" / "responses.parquet", "--metrics", tmp_path / "out" / "m.json")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "m.json").read_text())["train_overlap"] == 1
