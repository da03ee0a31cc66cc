"""Group-relative advantages and group filtering.

For the responses of one prompt with rewards ``R``: ``A_i = (R_i - mean(R)) / (std(R) + eps)``, with
the population standard deviation (``ddof=0``; ``score.advantage_std: sample`` gives ``ddof=1``) and
``eps = 1e-4`` by default, as in GRPO. A group
whose rewards are all equal gets advantages of exactly 0. A group is kept for training if it has at
least ``min_correct`` correct responses (paper: 1) and, when ``drop_zero_variance`` is set, rewards
that are not all equal.
"""

from __future__ import annotations

import polars as pl

from advdistill.errors import ConfigError

STD_DDOF = {"population": 0, "sample": 1}


def group_advantages(df: pl.DataFrame, group_col: str = "prompt_id", reward_col: str = "reward",
                     eps: float = 1e-4, std: str = "population") -> pl.DataFrame:
    """Add ``advantage`` and ``group_reward_std`` (the ``population`` or ``sample`` std of the group's rewards;
    a one-response group has sample std 0 here, not NaN)."""
    if std not in STD_DDOF:
        raise ConfigError(f"score.advantage_std: expected population or sample, got '{std}'")
    std = pl.col(reward_col).std(ddof=STD_DDOF[std]).over(group_col).fill_null(0.0).fill_nan(0.0)
    return df.with_columns(
        ((pl.col(reward_col) - pl.col(reward_col).mean().over(group_col)) / (std + eps)).alias("advantage"),
        std.alias("group_reward_std"),
    )


def keep_groups(df: pl.DataFrame, group_col: str = "prompt_id", drop_zero_variance: bool = False,
                min_correct: int = 1) -> pl.DataFrame:
    """Add ``kept`` (bool) and ``drop_reason`` (``too_few_correct`` | ``zero_variance`` | null)."""
    too_few_correct = pl.col("correct").sum().over(group_col) < min_correct
    zero_variance = pl.lit(drop_zero_variance) & (pl.col("group_reward_std") == 0)
    reason = (pl.when(too_few_correct).then(pl.lit("too_few_correct"))
              .when(zero_variance).then(pl.lit("zero_variance"))
              .otherwise(pl.lit(None, dtype=pl.String)))
    return df.with_columns(reason.alias("drop_reason")).with_columns(pl.col("drop_reason").is_null().alias("kept"))
