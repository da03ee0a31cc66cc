import json

import polars as pl
import pytest

from advdistill.config import CosineConfig, ScoreConfig
from advdistill.score import run_score

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


def write_samples(path, samples):
    pl.DataFrame(samples, orient="row", schema={"prompt_id": pl.String, "sample_idx": pl.Int32, "response": pl.String,
                                  "n_tokens": pl.Int32, "truncated": pl.Boolean}).write_parquet(path)


def test_scores_rewards_advantages_and_bad_responses(tmp_path, rows_path):
    samples = tmp_path / "samples.parquet"
    write_samples(samples, [
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
    samples = tmp_path / "samples.parquet"
    write_samples(samples, [("p1", 0, GOOD, 10, False)])
    with pytest.raises(ValueError, match="unknown reward 'length'"):
        run_score(rows_path, samples, ScoreConfig(reward_weights={"length": 1.0}), tmp_path / "s.parquet",
                  tmp_path / "s.json")
