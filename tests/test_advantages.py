import math

import polars as pl
import pytest

from advdistill.advantages import group_advantages, keep_groups


def frame(groups):
    rows = [{"prompt_id": pid, "sample_idx": i, "reward": r, "correct": c}
            for pid, samples in groups.items() for i, (r, c) in enumerate(samples)]
    return pl.DataFrame(rows)


def test_population_std_hand_computed():
    df = group_advantages(frame({"p": [(1.0, True), (2.0, False), (3.0, False), (4.0, False)]}), eps=1e-4)
    std = math.sqrt(1.25)  # population std of 1..4 (sample std would be sqrt(5/3))
    expected = [(r - 2.5) / (std + 1e-4) for r in (1.0, 2.0, 3.0, 4.0)]
    assert df["advantage"].to_list() == pytest.approx(expected, rel=1e-12)
    assert df["group_reward_std"][0] == pytest.approx(std)


def test_groups_are_independent_and_zero_variance_gives_zero():
    df = group_advantages(frame({"a": [(3.0, True), (3.0, True)], "b": [(0.0, False), (2.0, True)]}))
    by_group = dict(df.group_by("prompt_id").agg(pl.col("advantage")).iter_rows())
    assert by_group["a"] == [0.0, 0.0]
    assert by_group["b"] == pytest.approx([-1 / (1 + 1e-4), 1 / (1 + 1e-4)])


def test_keep_groups_reasons():
    df = group_advantages(frame({
        "mixed": [(1.0, True), (0.0, False)],
        "all_wrong": [(0.0, False), (0.5, False)],
        "flat": [(1.0, True), (1.0, True)],
    }))
    kept = dict(keep_groups(df, drop_zero_variance=True).group_by("prompt_id")
                .agg(pl.col("drop_reason").first()).iter_rows())
    assert kept == {"mixed": None, "all_wrong": "too_few_correct", "flat": "zero_variance"}
    lenient = keep_groups(df, drop_zero_variance=False)
    assert set(lenient.filter("kept")["prompt_id"]) == {"mixed", "flat"}


def test_min_correct_threshold():
    df = group_advantages(frame({"one": [(1.0, True), (0.0, False)], "two": [(1.0, True), (1.0, True)]}))
    assert set(keep_groups(df, min_correct=2).filter("kept")["prompt_id"]) == {"two"}
    assert set(keep_groups(df, min_correct=0).filter("kept")["prompt_id"]) == {"one", "two"}


def test_sample_std_reading_hand_computed():
    """score.advantage_std: sample divides by the ddof=1 std: sqrt(5/3) for rewards 1..4."""
    df = group_advantages(frame({"p": [(1.0, True), (2.0, False), (3.0, False), (4.0, False)],
                                 "single": [(7.0, True)]}), eps=1e-4, std="sample")
    std = math.sqrt(5 / 3)
    expected = [(r - 2.5) / (std + 1e-4) for r in (1.0, 2.0, 3.0, 4.0)]
    assert df.filter(pl.col("prompt_id") == "p")["advantage"].to_list() == pytest.approx(expected, rel=1e-12)
    assert df.filter(pl.col("prompt_id") == "single")["advantage"].to_list() == [0.0]
    with pytest.raises(ValueError, match="score.advantage_std"):
        group_advantages(frame({"p": [(1.0, True)]}), std="bessel")
