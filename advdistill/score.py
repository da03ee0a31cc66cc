"""The score stage: correctness, rewards, group-relative advantages and group filtering.

Reads the prepared rows and the teacher's samples and writes one scored row per sample plus a
summary. Samples that cannot be scored as text (empty, only special tokens, undecodable bytes)
still get a reward (they are wrong and unformatted) and are counted in the summary; samples whose
``prompt_id`` has no row are dropped and counted, but when no sample has a row the stage stops (the rows of
another split or dataset). The rows are checked as every later stage checks them
(:func:`~advdistill.datasets.base.read_rows`). A samples file that no sample stage writes (a column
missing or of another type, a null or negative ``sample_idx``/``n_tokens``, a repeated
``(prompt_id, sample_idx)``) stops the stage with an error naming the file and its first bad rows: scoring
it anyway would change group sizes, rewards and advantages without a trace.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from advdistill.advantages import group_advantages, keep_groups
from advdistill.answers import judge_answers
from advdistill.config import ScoreConfig
from advdistill.datasets.base import read_rows
from advdistill.errors import ConfigError, InputError
from advdistill.io import check_rows, read_parquet, write_json, write_parquet
from advdistill.rewards import REWARD_FUNCTIONS, composite_reward

log = logging.getLogger(__name__)

REPLACEMENT_CHARACTER = "\ufffd"
# The sample columns score reads (docs/data-model.md), written out rather than imported from the sampling package:
# code_deps follows imports, and score must not rerun when the sampler's code changes.
SAMPLE_COLUMNS = {"prompt_id": pl.String, "sample_idx": pl.Int32, "response": pl.String, "n_tokens": pl.Int32,
                  "truncated": pl.Boolean}
# what makes a row of the samples unusable -> the rows that have it
SAMPLE_PROBLEMS = {
    "a missing prompt_id": pl.col("prompt_id").is_null(),
    "a missing or negative sample_idx": pl.col("sample_idx").is_null() | (pl.col("sample_idx") < 0),
    "a missing or negative n_tokens": pl.col("n_tokens").is_null() | (pl.col("n_tokens") < 0),
    "a missing truncated flag": pl.col("truncated").is_null(),
    "a repeated (prompt_id, sample_idx)": pl.struct("prompt_id", "sample_idx").is_duplicated(),
}


def sample_flags(responses: list[str]) -> dict[str, list[bool]]:
    return {
        "empty_response": [not r.strip() for r in responses],
        "invalid_utf8": [REPLACEMENT_CHARACTER in r for r in responses],
    }


def score_samples(rows: pl.DataFrame, samples: pl.DataFrame, cfg: ScoreConfig) -> tuple[pl.DataFrame, dict]:
    """Scored samples and the counts that go into the summary."""
    joined = samples.join(rows.select("id", "answer", "kind", "choices"),
                          left_on="prompt_id", right_on="id", how="left")
    orphans = joined.filter(pl.col("answer").is_null())
    joined = joined.filter(pl.col("answer").is_not_null())
    responses = joined["response"].fill_null("").to_list()
    predicted, correct = judge_answers(responses, joined["answer"], joined["kind"], joined["choices"])
    lengths = joined["n_tokens"].to_list()
    components = {}
    for name in cfg.reward_weights:
        if name not in REWARD_FUNCTIONS:
            raise ConfigError(f"score.reward_weights: unknown reward '{name}' (known: {', '.join(REWARD_FUNCTIONS)})")
        reward_fn = REWARD_FUNCTIONS[name](getattr(cfg, name, None))
        components[name] = reward_fn(completions=responses, lengths=lengths, correct=correct)
    scored = joined.with_columns(
        pl.Series("predicted", predicted, dtype=pl.String),
        pl.Series("correct", correct, dtype=pl.Boolean),
        *[pl.Series(f"r_{name}", values, dtype=pl.Float64) for name, values in components.items()],
        pl.Series("reward", composite_reward(components, cfg.reward_weights), dtype=pl.Float64),
        *[pl.Series(k, v, dtype=pl.Boolean) for k, v in sample_flags(responses).items()],
    ).drop("answer", "kind", "choices")
    scored = group_advantages(scored, eps=cfg.advantage_eps, std=cfg.advantage_std)
    scored = keep_groups(scored, drop_zero_variance=cfg.drop_zero_variance, min_correct=cfg.min_correct)
    scored = scored.sort("prompt_id", "sample_idx")
    counts = {"orphan_samples": orphans.height,
              "orphan_prompt_ids": orphans["prompt_id"].unique().sort().head(20).to_list()}
    return scored, counts


def summarise(scored: pl.DataFrame, counts: dict[str, Any], bins: int = 20) -> dict[str, Any]:
    groups = scored.group_by("prompt_id").agg(
        pl.col("kept").first(), pl.col("drop_reason").first(), pl.col("correct").sum().alias("n_correct"))
    kept_adv = scored.filter(pl.col("kept"))["advantage"].to_numpy()
    hist_counts, edges = np.histogram(kept_adv, bins=bins) if kept_adv.size else (np.array([]), np.array([]))
    dropped = groups.filter(~pl.col("kept"))["drop_reason"].value_counts()
    return {
        "samples": scored.height,
        "groups": groups.height,
        "groups_kept": int(groups["kept"].sum()),
        "groups_dropped": {r: int(n) for r, n in dropped.iter_rows()},
        "share_correct": float(scored["correct"].mean()) if scored.height else 0.0,
        "share_format": float(scored["r_format"].mean()) if "r_format" in scored.columns and scored.height else None,
        "correct_per_group": {int(k): int(v)
                              for k, v in groups["n_correct"].value_counts().sort("n_correct").iter_rows()},
        "empty_responses": int(scored["empty_response"].sum()),
        "invalid_utf8_responses": int(scored["invalid_utf8"].sum()),
        "truncated_responses": int(scored["truncated"].sum()),
        "advantage_histogram": {"counts": hist_counts.tolist(), "edges": edges.tolist()},
        **counts,
    }


def run_score(rows_path: Path, samples_path: Path, cfg: ScoreConfig, out: Path, summary_path: Path) -> dict:
    rows = read_rows(rows_path)
    samples = read_parquet(samples_path, SAMPLE_COLUMNS)
    if samples.is_empty():
        raise InputError(f"{samples_path}: no samples to score")
    check_rows(samples, samples_path, SAMPLE_PROBLEMS, ["prompt_id", "sample_idx", "n_tokens"])
    if not samples["prompt_id"].is_in(rows["id"].implode()).any():
        raise InputError(f"{samples_path}: none of its {samples.height} sample(s) has a prompt_id among the "
                         f"{rows.height} id(s) of {rows_path}, first prompt_id {samples['prompt_id'][0]!r}: "
                         "wrong --rows?")
    scored, counts = score_samples(rows, samples, cfg)
    summary = summarise(scored, counts)
    write_parquet(scored, out)
    write_json(summary, summary_path)
    log.info("scored %d samples: %d of %d groups kept, %.1f%% correct", summary["samples"],
             summary["groups_kept"], summary["groups"], 100 * summary["share_correct"])
    return summary
