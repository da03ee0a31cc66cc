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
from advdistill.config import BootstrapConfig, PromptConfig, SamplingConfig, TokenizerConfig
from advdistill.datasets import get_adapter, normalise_split
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
    from advdistill.train import tokenize_pair, train_sft

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
    metrics = train_sft(model, tokenizer, pairs, cfg.optim, work_dir, seed, save_checkpoints=False)
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
