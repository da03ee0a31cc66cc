"""The evaluate stage: answers of one model on one test set, judged and summarised.

Responses are generated through the same sampling backends and resumable shards as the teacher's
samples: one greedy response per prompt by default, or ``evaluation.n_samples`` responses sampled at
``evaluation.temperature`` (seeded from the stage's seed, so a fixed seed gives the same responses). They
are judged with the same answer checker and format reward as the scorer, and kept per response (one row
per prompt and ``sample_idx``) so that any metric can be recomputed later.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import polars as pl

from advdistill.answers import judge_answers
from advdistill.config import EngineConfig, EvaluationConfig, PromptConfig, SamplingConfig
from advdistill.datasets.base import read_rows
from advdistill.errors import InputError
from advdistill.io import write_json, write_parquet
from advdistill.metrics import evaluation_metrics
from advdistill.paths import raw_responses
from advdistill.prompts import render_prompts
from advdistill.rewards import format_reward

log = logging.getLogger(__name__)


def judge(rows: pl.DataFrame, responses: pl.DataFrame) -> pl.DataFrame:
    """Add ``predicted``, ``correct`` and ``format_ok`` to responses (one row per prompt and sample)."""
    joined = responses.join(rows.select("id", "answer", "kind", "choices"), left_on="prompt_id",
                            right_on="id", how="inner")
    texts = joined["response"].to_list()
    predicted, correct = judge_answers(texts, joined["answer"], joined["kind"], joined["choices"])
    return joined.with_columns(
        pl.Series("predicted", predicted, dtype=pl.String),
        pl.Series("correct", correct, dtype=pl.Boolean),
        pl.Series("format_ok", [r == 1.0 for r in format_reward(texts)], dtype=pl.Boolean),
    ).drop("answer", "kind", "choices")


def with_unanswered_prompts(responses: pl.DataFrame, prompt_ids: list[str],
                            n_samples: int) -> tuple[pl.DataFrame, int]:
    """Responses with empty ones for the prompts the backend skipped (too long for vLLM's ``max_model_len``),
    so that such a prompt counts as wrong instead of leaving the test set; and how many there were."""
    from advdistill.sampling.shards import unanswered_prompts

    missing = unanswered_prompts(responses, prompt_ids)
    if not missing:
        return responses, 0
    empty = pl.DataFrame({"prompt_id": [pid for pid in missing for _ in range(n_samples)],
                          "sample_idx": [i for _ in missing for i in range(n_samples)],
                          "response": "", "n_tokens": 0, "truncated": False})
    return pl.concat([responses, empty.cast(responses.schema)]), len(missing)


def few_shot_setting(prompt_cfg: PromptConfig, few_shot_rows: list[dict]) -> tuple[PromptConfig, dict]:
    """The prompt settings to evaluate with, and what ``metrics.json`` records about few-shot turns.

    Few-shot turns are worked solutions from the training split. Where it has fewer rows with a solution
    than requested (MMLU-PRO has none), the model is evaluated zero-shot instead, with a warning.
    """
    requested = prompt_cfg.few_shot
    available = sum(bool(row.get("solution")) for row in few_shot_rows)
    if requested <= available:
        return prompt_cfg, {"few_shot": requested, "few_shot_requested": requested}
    note = (f"evaluated zero-shot: {requested} few-shot turns requested, but the training split has "
            f"{available} rows with a worked solution")
    log.warning("%s", note)
    return (dataclasses.replace(prompt_cfg, few_shot=0),
            {"few_shot": 0, "few_shot_requested": requested, "few_shot_note": note})


def question_key(row: dict) -> tuple[str, tuple[str, ...]]:
    """A question as the overlap check compares it: its text and options up to case and spacing."""
    def words(text: str) -> str:
        return " ".join(text.split()).casefold()

    return words(row["question"]), tuple(words(choice) for choice in row.get("choices") or ())


def train_overlap(rows: pl.DataFrame, train_rows: list[dict]) -> list[str]:
    """Ids of the test rows whose question (and options) is also a training question."""
    seen = {question_key(row) for row in train_rows}
    return [row["id"] for row in rows.to_dicts() if question_key(row) in seen]


def check_train_overlap(rows: pl.DataFrame, rows_path: Path, train_rows: list[dict], train_path: Path | None,
                        cfg: EvaluationConfig) -> dict:
    """What ``metrics.json`` records of the test questions that are training questions too; over
    ``evaluation.max_train_overlap`` of them an :class:`InputError`, before a model is loaded."""
    shared = train_overlap(rows, train_rows)
    share = len(shared) / rows.height if rows.height else 0.0
    if share > cfg.max_train_overlap:
        raise InputError(f"{rows_path}: {len(shared)} of {rows.height} test questions ({100 * share:.1f} %, first id "
                         f"{shared[0]!r}) are also in the training rows {train_path}, over evaluation."
                         f"max_train_overlap {100 * cfg.max_train_overlap:.1f} %: the test set would measure memorisation "
                         "(one file given for both splits?)")
    if shared:
        log.warning("%d of %d test questions are also training questions (first id %s)", len(shared), rows.height,
                    shared[0])
    return {"train_overlap": len(shared)}


def run_evaluate(model_path: str, rows_path: Path, cfg: EvaluationConfig, prompt_cfg: PromptConfig,
                 few_shot_rows_path: Path | None, seed: int, out: Path, metrics_path: Path) -> dict:
    from transformers import AutoTokenizer

    from advdistill.hub import local_model
    from advdistill.sampling import get_backend
    from advdistill.sampling.base import GenerationParams
    from advdistill.sampling.shards import run_fingerprint, sample_prompts

    rows = read_rows(rows_path)
    if rows.height == 0:
        raise InputError(f"{rows_path}: no test rows to evaluate")
    if cfg.max_prompts is not None:
        rows = rows.head(cfg.max_prompts)
    few_shot_rows = read_rows(few_shot_rows_path).to_dicts() if few_shot_rows_path else []
    overlap = check_train_overlap(rows, rows_path, few_shot_rows, few_shot_rows_path, cfg)
    prompt_cfg, few_shot = few_shot_setting(prompt_cfg, few_shot_rows)
    model_folder = local_model(model_path, "advdistill evaluate")  # a hub id: fetched here, in bounded time
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    texts = render_prompts(rows.to_dicts(), tokenizer, prompt_cfg, few_shot_rows, seed)
    ids = rows["id"].to_list()
    params = GenerationParams(n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens)
    engine = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EngineConfig)}
    sampling_cfg = SamplingConfig(**engine, n_samples=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p)
    fingerprint = run_fingerprint(model_path, ids, texts, params, sampling_cfg, seed)
    raw = raw_responses(out)
    responses = sample_prompts(lambda: get_backend(cfg, model_folder), ids, texts,
                               params, sampling_cfg, seed, raw, fingerprint, stage="evaluate")
    responses, unanswered = with_unanswered_prompts(responses, ids, cfg.n_samples)
    judged = judge(rows, responses)
    metrics = evaluation_metrics(judged, ngram=cfg.degeneracy_ngram)
    metrics.update({"model": model_path, "testset": str(rows_path), **few_shot, **overlap})
    if unanswered:
        metrics["prompts_without_response"] = unanswered
    if cfg.temperature > 0:
        metrics.update(temperature=cfg.temperature, top_p=cfg.top_p)
    write_parquet(judged, out)
    write_json(metrics, metrics_path)
    raw.unlink(missing_ok=True)
    log.info("%s on %s: accuracy %.3f over %d prompts (%d responses each)", model_path, rows_path,
             metrics["accuracy"], metrics["n"], cfg.n_samples)
    return metrics
