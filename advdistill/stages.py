"""Stage entry points: each reads its inputs, runs one stage and writes its artefacts atomically.

The CLI (:mod:`advdistill.cli`) parses arguments and calls exactly one of these; the Snakemake rules
call the CLI. Keeping the orchestration here lets tests run a stage without a subprocess.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from advdistill import prompts as prompt_lib
from advdistill.config import (
    BootstrapConfig,
    EvaluationConfig,
    PromptConfig,
    SamplingConfig,
    TokenizerConfig,
    TrainingConfig,
)
from advdistill.datasets import get_adapter, normalise_split
from advdistill.errors import TrainingError
from advdistill.io import atomic_directory, write_json, write_parquet

log = logging.getLogger(__name__)


def prepare(adapter: str, source: str, split: str, options: dict[str, Any], out: Path,
            report_path: Path, name: str | None = None) -> pl.DataFrame:
    frame, report = normalise_split(get_adapter(adapter, source, options), split, name or adapter)
    write_parquet(frame, out)
    write_json(report.to_json(), report_path)
    log.info("%s/%s: kept %d of %d rows; skipped %s", report.dataset, split, report.rows_kept,
             report.rows_read, dict(report.skipped) or "none")
    return frame


def bootstrap_tokenizer(rows_path: Path, cfg: TokenizerConfig, out: Path) -> None:
    from advdistill.bootstrap import train_tokenizer

    tokenizer = train_tokenizer(pl.read_parquet(rows_path).to_dicts(), cfg)
    with atomic_directory(out) as tmp:
        tokenizer.save_pretrained(tmp)
    log.info("tokenizer with %d tokens written to %s", len(tokenizer), out)


def bootstrap_model(rows_path: Path, tokenizer_path: Path, cfg: BootstrapConfig,
                    prompt_cfg: PromptConfig, seed: int, out: Path, work_dir: Path) -> dict[str, Any]:
    """Build a random Qwen2 model and fine-tune it on the reference solutions of ``rows_path``."""
    from transformers import AutoTokenizer

    from advdistill.bootstrap import build_model
    from advdistill.train import tokenize_pair, train_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = build_model(tokenizer, cfg.shape, seed)
    rows = pl.read_parquet(rows_path).filter(pl.col("solution") != "").to_dicts()[:cfg.train_rows]
    pairs = [
        tokenize_pair(tokenizer,
                      prompt_lib.render_prompt(tokenizer, prompt_lib.build_messages(row, prompt_cfg.system_prompt)),
                      prompt_lib.format_response(row["solution"], row["answer"]),
                      cfg.optim.max_seq_length)
        for row in rows
    ]
    metrics = train_model(model, tokenizer, "sft", pairs, TrainingConfig(optim=cfg.optim), work_dir, seed,
                          save_checkpoints=False)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    metrics["examples"] = len(pairs)
    write_json(metrics, out / "bootstrap_metrics.json")
    return metrics


def prompts_for(rows: list[dict[str, Any]], tokenizer: Any, prompt_cfg: PromptConfig,
                few_shot_rows: list[dict[str, Any]] | None = None, seed: int = 0) -> list[str]:
    shots = prompt_lib.choose_few_shot(few_shot_rows or [], prompt_cfg.few_shot, seed)
    return [prompt_lib.render_prompt(tokenizer, prompt_lib.build_messages(r, prompt_cfg.system_prompt, shots))
            for r in rows]


def sample(model_path: str, rows_path: Path, cfg: SamplingConfig, prompt_cfg: PromptConfig,
           seed: int, out: Path) -> pl.DataFrame:
    from transformers import AutoTokenizer

    from advdistill.sampling import get_backend, run_fingerprint, sample_prompts
    from advdistill.sampling.base import GenerationParams

    rows = pl.read_parquet(rows_path).to_dicts()[:cfg.max_prompts]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = prompts_for(rows, tokenizer, prompt_cfg)
    ids = [r["id"] for r in rows]
    params = GenerationParams(n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens)
    fingerprint = run_fingerprint(model_path, ids, texts, params, cfg, seed)
    samples = sample_prompts(lambda: get_backend(cfg.backend, model_path, cfg.dtype), ids, texts,
                             params, cfg, seed, out, fingerprint)
    log.info("wrote %d samples for %d prompts to %s", samples.height, len(rows), out)
    return samples


def score(rows_path: Path, samples_path: Path, cfg: Any, out: Path, summary_path: Path) -> dict:
    from advdistill.score import run_score

    return run_score(rows_path, samples_path, cfg, out, summary_path)


def train(model_path: str, rows_path: Path, scored_path: Path, objective: str, cfg: TrainingConfig,
          prompt_cfg: PromptConfig, seed: int, out: Path, work_dir: Path) -> dict[str, Any]:
    """Fine-tune a student on scored teacher groups with the ``sft`` or ``advdistill`` objective."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from advdistill.train import best_pairs, build_groups, split_validation, train_model

    scored = pl.read_parquet(scored_path)
    if not scored["kept"].any():
        raise TrainingError(f"{scored_path}: no kept groups to train on (every group was filtered out by score)")
    rows = pl.read_parquet(rows_path).to_dicts()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = dict(zip([r["id"] for r in rows], prompts_for(rows, tokenizer, prompt_cfg)))
    groups, truncated = build_groups(prompts, scored, tokenizer, cfg.optim.max_seq_length)
    train_groups, eval_groups = split_validation(groups, cfg.validation_fraction, seed)
    if objective == "sft":
        train_items, eval_items = best_pairs(train_groups), best_pairs(eval_groups)
    else:
        train_items, eval_items = train_groups, eval_groups
    model = AutoModelForCausalLM.from_pretrained(model_path)
    metrics = train_model(model, tokenizer, objective, train_items, cfg, work_dir, seed, eval_items)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    metrics.update({"objective": objective, "groups": len(groups), "train_items": len(train_items),
                    "eval_items": len(eval_items), "truncated_responses": truncated})
    write_json(metrics, out / "train_metrics.json")
    log.info("%s: trained on %d items (%d held out), %d responses truncated", objective, len(train_items),
             len(eval_items), truncated)
    return metrics


def evaluate(model_path: str, rows_path: Path, cfg: EvaluationConfig, prompt_cfg: PromptConfig,
             few_shot_rows_path: Path | None, seed: int, out: Path, metrics_path: Path) -> dict:
    from advdistill.evaluate import run_evaluate

    return run_evaluate(model_path, rows_path, cfg, prompt_cfg, few_shot_rows_path, seed, out, metrics_path)


def report(plan: dict[str, Any], results: Path, benchmarks: Path, out_dir: Path) -> Path:
    """The run's report from the evaluate/score outputs laid out under ``results``.

    ``plan`` has ``models`` (row order) and ``experiments`` (training dataset -> its test sets). A test
    set is reported with the students trained on the first experiment that lists it.
    """
    from advdistill.report import build_report

    metrics_files, responses_files, testsets = {}, {}, []
    for train_set, experiment_testsets in plan["experiments"].items():
        for testset in experiment_testsets:
            if testset in testsets:
                continue
            testsets.append(testset)
            for model in plan["models"]:
                folder = results / "evaluate" / train_set / model / testset
                metrics_files[(model, testset)] = folder / "metrics.json"
                responses_files[(model, testset)] = folder / "responses.parquet"
    scored_files = {name: results / "score" / name / "scored.parquet" for name in plan["experiments"]}
    benchmark_files = {stage.name: sorted(stage.rglob("*.tsv"))
                       for stage in sorted(benchmarks.iterdir()) if stage.is_dir()} if benchmarks.is_dir() else {}
    manifests = sorted(results.glob("*/**/manifest.json"))
    return build_report(metrics_files, scored_files, responses_files, benchmark_files, manifests, out_dir,
                        plan["models"], testsets)
