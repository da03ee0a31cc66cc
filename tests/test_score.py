import json

import polars as pl
import pytest

from advdistill.config import CosineConfig, ScoreConfig
from advdistill.errors import ConfigError, InputError
from advdistill.score import run_score
from tests.helpers import files_under, run_cli

GOOD = "<think>2 + 2 = 4.</think>\n<answer>\\boxed{4}</answer>"
WRONG = "<think>2 + 2 = 5.</think>\n<answer>\\boxed{5}</answer>"


@pytest.fixture()
def rows_path(tmp_path):
    rows = pl.DataFrame({
        "id": ["p1", "p2"], "split": ["train"] * 2, "question": ["2+2?", "3+3?"], "answer": ["4", "6"],
        "kind": ["numeric"] * 2, "choices": [[], []], "solution": ["", ""],
    }, schema_overrides={"choices": pl.List(pl.String)})
    path = tmp_path / "rows.parquet"
    rows.write_parquet(path)
    return path


def write_samples(folder, samples):
    """``samples`` (prompt_id, sample_idx, response, n_tokens, truncated) as ``folder/samples.parquet``."""
    path = folder / "samples.parquet"
    pl.DataFrame(samples, orient="row", schema={"prompt_id": pl.String, "sample_idx": pl.Int32, "response": pl.String,
                                  "n_tokens": pl.Int32, "truncated": pl.Boolean}).write_parquet(path)
    return path


def test_scores_rewards_advantages_and_bad_responses(tmp_path, rows_path):
    samples = write_samples(tmp_path, [
        ("p1", 0, GOOD, 10, False),
        ("p1", 1, WRONG, 10, False),
        ("p1", 2, "", 0, False),                     # empty response
        ("p1", 3, "", 3, False),                     # only special tokens: decoded to nothing
        ("p2", 0, "<think>\ufffd\ufffd</think>", 5, False),  # undecodable bytes
        ("p2", 1, WRONG, 100, True),
        ("ghost", 0, GOOD, 10, False),               # no such prompt
    ])
    cfg = ScoreConfig(cosine=CosineConfig(max_length=100))
    summary = run_score(rows_path, samples, cfg, tmp_path / "scored.parquet", tmp_path / "summary.json")
    scored = pl.read_parquet(tmp_path / "scored.parquet")
    assert scored.height == 6
    assert scored["correct"].to_list() == [True, False, False, False, False, False]
    assert scored["r_format"].to_list() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    # cosine at L=10 of 100: r_L + 0.5 (r_0 - r_L)(1 + cos(pi / 10))
    assert scored["r_cosine"][0] == pytest.approx(0.5 + 0.25 * (1 + 0.9510565162951535))
    assert scored["r_cosine"][5] == pytest.approx(-0.5)
    assert scored["reward"][0] == pytest.approx(2 * scored["r_cosine"][0] + 1.0)
    assert scored.filter(pl.col("prompt_id") == "p1")["kept"].all()
    assert scored.filter(pl.col("prompt_id") == "p2")["drop_reason"].unique().to_list() == ["too_few_correct"]
    assert summary["empty_responses"] == 2
    assert summary["invalid_utf8_responses"] == 1
    assert summary["orphan_samples"] == 1 and summary["orphan_prompt_ids"] == ["ghost"]
    assert summary["groups_kept"] == 1 and summary["groups_dropped"] == {"too_few_correct": 1}
    assert summary["correct_per_group"] == {0: 1, 1: 1}
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == 6


def test_unknown_reward_name_is_an_error(tmp_path, rows_path):
    samples = write_samples(tmp_path, [("p1", 0, GOOD, 10, False)])
    with pytest.raises(ConfigError, match="unknown reward 'length'"):
        run_score(rows_path, samples, ScoreConfig(reward_weights={"length": 1.0}), tmp_path / "s.parquet",
                  tmp_path / "s.json")


SAMPLES = [("p1", 0, GOOD, 10, False), ("p1", 1, WRONG, 12, False), ("p2", 0, WRONG, 8, False)]


def score_cli(capsys, rows_path, samples_path):
    out = samples_path.parent / "out"
    return run_cli(capsys, "score", "--rows", rows_path, "--samples", samples_path, "--out", out / "scored.parquet",
                   "--summary", out / "summary.json")


@pytest.mark.failure_mode("samples parquet missing a column or with a column of another type",
                          sees="score stops (exit 2): '<file>: no column(s) <name>' or '<file>: column <name> has "
                               "type <dtype>, expected ...', no traceback",
                          kept="everything; nothing is written")
@pytest.mark.parametrize(("change", "message"), [
    (lambda df: df.drop("n_tokens"), "no column(s) n_tokens (found: prompt_id, sample_idx, response, truncated)"),
    (lambda df: df.with_columns(pl.col("n_tokens").cast(pl.String)), "column 'n_tokens' has type String, "
                                                                      "expected an integer"),
    (lambda df: df.with_columns(pl.col("n_tokens") + 0.5), "column 'n_tokens' has type Float64, expected an integer"),
    (lambda df: df.with_columns(pl.col("truncated").cast(pl.Int8)), "column 'truncated' has type Int8, "
                                                                     "expected Boolean"),
])
def test_missing_or_mistyped_sample_column_names_file_and_column(capsys, tmp_path, rows_path, change, message):
    samples = write_samples(tmp_path, SAMPLES)
    change(pl.read_parquet(samples)).write_parquet(samples)
    code, err = score_cli(capsys, rows_path, samples)
    assert (code, err) == (2, f"advdistill score: error: {samples}: {message}\n")
    assert files_under(tmp_path) == {"rows.parquet", "samples.parquet"}


@pytest.mark.failure_mode("negative or missing n_tokens / sample_idx in the samples",
                          sees="score stops (exit 2) naming the file, the count and the first offending rows",
                          kept="everything; nothing is written")
def test_negative_token_counts_stop_naming_the_rows(capsys, tmp_path, rows_path):
    samples = write_samples(tmp_path, [*SAMPLES, ("p2", 1, WRONG, -4, False), ("p2", 2, WRONG, None, False)])
    code, err = score_cli(capsys, rows_path, samples)
    assert (code, err) == (2, f"advdistill score: error: {samples}: 2 row(s) with a missing or negative n_tokens, "
                              "first: row 3 (prompt_id 'p2', sample_idx 1, n_tokens -4); "
                              "row 4 (prompt_id 'p2', sample_idx 2, n_tokens None)\n")
    write_samples(tmp_path, [*SAMPLES, ("p2", -1, WRONG, 4, False)])
    with pytest.raises(InputError, match=r"1 row\(s\) with a missing or negative sample_idx, first: row 3 "):
        run_score(rows_path, samples, ScoreConfig(), tmp_path / "out" / "s.parquet", tmp_path / "out" / "s.json")
    assert files_under(tmp_path) == {"rows.parquet", "samples.parquet"}


@pytest.mark.failure_mode("duplicated (prompt_id, sample_idx) in the samples",
                          sees="score stops (exit 2) naming the file and the repeated rows",
                          kept="everything; nothing is written")
def test_repeated_samples_stop_naming_the_rows(capsys, tmp_path, rows_path):
    samples = write_samples(tmp_path, [*SAMPLES, ("p1", 1, GOOD, 10, False)])
    code, err = score_cli(capsys, rows_path, samples)
    assert (code, err) == (2, f"advdistill score: error: {samples}: 2 row(s) with a repeated (prompt_id, sample_idx), "
                              "first: row 1 (prompt_id 'p1', sample_idx 1, n_tokens 12); "
                              "row 3 (prompt_id 'p1', sample_idx 1, n_tokens 10)\n")
    write_samples(tmp_path, [*SAMPLES, ("p1", 2, GOOD, 10, False)])  # the same response as a new sample is fine
    code, err = score_cli(capsys, rows_path, samples)
    assert code == 0 and pl.read_parquet(tmp_path / "out" / "scored.parquet").height == 4


@pytest.mark.failure_mode("corrupt or truncated samples parquet",
                          sees="score stops (exit 2): '<file>: not a readable parquet file (...)', no traceback",
                          kept="everything; nothing is written")
def test_corrupt_samples_file_names_it(capsys, tmp_path, rows_path):
    samples = write_samples(tmp_path, SAMPLES)
    samples.write_bytes(samples.read_bytes()[:-30])
    code, err = score_cli(capsys, rows_path, samples)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"advdistill score: error: {samples}: not a readable parquet file (")
    assert files_under(tmp_path) == {"rows.parquet", "samples.parquet"}


def test_integer_columns_of_another_width_are_accepted(tmp_path, rows_path):
    samples = write_samples(tmp_path, SAMPLES)
    pl.read_parquet(samples).with_columns(pl.col("n_tokens", "sample_idx").cast(pl.Int64)).write_parquet(samples)
    summary = run_score(rows_path, samples, ScoreConfig(), tmp_path / "s.parquet", tmp_path / "s.json")
    assert summary["samples"] == 3


@pytest.mark.failure_mode("rows parquet with a missing or repeated id",
                          sees="score stops (exit 2) naming the rows file, the count and the first repeated id",
                          kept="everything; nothing is written (a repeated id would multiply its samples in the join)")
def test_repeated_row_ids_stop(capsys, tmp_path, rows_path):
    rows = pl.read_parquet(rows_path)
    pl.concat([rows, rows.head(1)]).write_parquet(rows_path)
    samples = write_samples(tmp_path, SAMPLES)
    code, err = score_cli(capsys, rows_path, samples)
    assert (code, err) == (2, f"advdistill score: error: {rows_path}: 1 id(s) given to more than one row, first 'p1': "
                              "each prompt's samples and answers are keyed by its id (was it written by advdistill "
                              "prepare?)\n")
    assert files_under(tmp_path) == {"rows.parquet", "samples.parquet"}


@pytest.mark.failure_mode("rows parquet with a blank or null answer or an unknown kind ('numerc'), given to score",
                          sees="score stops (exit 2) naming the rows file, the column, the count and the first row "
                               "id, as sample, train and evaluate do (it used to keep 0 groups, drop every sample as "
                               "an orphan, or judge the unknown kind)",
                          kept="everything; nothing is written")
@pytest.mark.parametrize(("column", "value", "message"), [
    ("answer", " ", "column 'answer' is blank in 1 row(s), first id 'p2': was it written by advdistill prepare?"),
    ("answer", None, "column 'answer' is null in 1 row(s), first id 'p2': was it written by advdistill prepare?"),
    ("kind", "numerc", "column 'kind' holds 'numerc' in 1 row(s), first id 'p2'; a kind is one of numeric, math, "
                       "multiple_choice (was it written by advdistill prepare?)"),
])
def test_rows_the_judge_cannot_use_stop_naming_the_column(capsys, tmp_path, rows_path, column, value, message):
    rows = pl.read_parquet(rows_path)
    rows.with_columns(pl.when(pl.col("id") == "p2").then(pl.lit(value, dtype=pl.String)).otherwise(pl.col(column))
                      .alias(column)).write_parquet(rows_path)
    samples = write_samples(tmp_path, SAMPLES)
    code, err = score_cli(capsys, rows_path, samples)
    assert (code, err) == (2, f"advdistill score: error: {rows_path}: {message}\n")
    assert files_under(tmp_path) == {"rows.parquet", "samples.parquet"}


@pytest.mark.failure_mode("samples of another split or dataset than the --rows (no sample's prompt_id is a row id), "
                          "or a rows file with no rows",
                          sees="score stops (exit 2) naming both files, the counts and the first prompt_id: 'wrong "
                               "--rows?' (it used to write an empty scored table, and train then blamed the filter)",
                          kept="everything; nothing is written")
@pytest.mark.parametrize("keep_rows", [2, 0])
def test_samples_matching_no_row_stop_naming_both_files(capsys, tmp_path, rows_path, keep_rows):
    pl.read_parquet(rows_path).head(keep_rows).write_parquet(rows_path)
    samples = write_samples(tmp_path, [("q7", 0, GOOD, 10, False), ("q7", 1, WRONG, 12, False),
                                       ("q8", 0, WRONG, 8, False)])
    code, err = score_cli(capsys, rows_path, samples)
    assert (code, err) == (2, f"advdistill score: error: {samples}: none of its 3 sample(s) has a prompt_id among the "
                              f"{keep_rows} id(s) of {rows_path}, first prompt_id 'q7': wrong --rows?\n")
    assert files_under(tmp_path) == {"rows.parquet", "samples.parquet"}
