"""The ``sample`` and ``merge-samples`` stages: teacher responses for the training prompts, in one job or in
several prompt ranges of whole shards (``sampling.jobs``) merged afterwards."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from advdistill.config import PromptConfig, SamplingConfig
from advdistill.datasets.base import read_rows
from advdistill.errors import ConfigError, InputError
from advdistill.io import read_parquet, write_parquet
from advdistill.prompts import render_prompts
from advdistill.sampling import get_backend
from advdistill.sampling.base import GenerationParams
from advdistill.sampling.shards import SAMPLE_SCHEMA, run_fingerprint, sample_prompts

log = logging.getLogger(__name__)


def part_range(n_prompts: int, shard_size: int, part: int, parts: int) -> tuple[int, int]:
    """Prompt range ``[start, end)`` of job ``part`` of ``parts``: whole shards, split as evenly as possible.

    Ranges start on shard boundaries, so every batch has the same first prompt (and seed) whatever
    the number of jobs, and the merged samples equal a single job's.
    """
    if not 0 <= part < parts:
        raise ConfigError(f"--part: sampling part {part} is outside 0..{parts - 1}")
    n_shards = -(-n_prompts // shard_size)
    first, last = part * n_shards // parts, (part + 1) * n_shards // parts
    return min(first * shard_size, n_prompts), min(last * shard_size, n_prompts)


def run_sample(model_path: str, rows_path: Path, cfg: SamplingConfig, prompt_cfg: PromptConfig,
               seed: int, out: Path, part: int = 0, parts: int = 1) -> pl.DataFrame:
    """Sample the prompts of job ``part`` of ``parts`` (see :func:`part_range`) into ``out``.

    Few-shot turns (``prompt_cfg.few_shot``) are picked by ``seed`` from the whole of ``rows_path``, as evaluation
    picks them from the training split, so trained students are evaluated with the turns they learned from.
    """
    from transformers import AutoTokenizer

    from advdistill.hub import local_model

    all_rows = read_rows(rows_path).to_dicts()
    if not all_rows:
        raise InputError(f"{rows_path}: no rows to sample")
    rows = all_rows[:cfg.max_prompts]
    start, end = part_range(len(rows), cfg.shard_size, part, parts)
    rows = rows[start:end]
    model_folder = local_model(model_path, "advdistill sample")  # a hub id: fetched here, in bounded time
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    texts = render_prompts(rows, tokenizer, prompt_cfg, all_rows, seed)
    ids = [r["id"] for r in rows]
    params = GenerationParams(n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens)
    fingerprint = run_fingerprint(model_path, ids, texts, params, cfg, seed)
    samples = sample_prompts(lambda: get_backend(cfg, model_folder), ids, texts,
                             params, cfg, seed, out, fingerprint, first_index=start)
    log.info("wrote %d samples for prompts %d..%d to %s", samples.height, start, end, out)
    return samples


def read_part(path: Path) -> pl.DataFrame:
    """One sampling job's samples, in the exact :data:`SAMPLE_SCHEMA` (any integer width read); a table with other
    columns is no sampling part (a scored table given by mistake would otherwise merge)."""
    part = read_parquet(path, SAMPLE_SCHEMA)
    extra = [name for name in part.columns if name not in SAMPLE_SCHEMA]
    if extra:
        raise InputError(f"{path}: not a sampling part (extra column(s) {', '.join(extra)})")
    return part.select(list(SAMPLE_SCHEMA)).cast(SAMPLE_SCHEMA)


def merge_samples(parts: list[Path], out: Path) -> pl.DataFrame:
    """Concatenate the parts of a sharded sampling run, in part order; a repeated sample is an error."""
    merged = pl.concat([read_part(p) for p in parts]) if parts else pl.DataFrame(schema=SAMPLE_SCHEMA)
    duplicated = merged.select("prompt_id", "sample_idx").is_duplicated()
    if duplicated.any():
        first = merged.filter(duplicated).row(0, named=True)
        raise InputError(f"sample parts overlap: prompt {first['prompt_id']} sample {first['sample_idx']} "
                         f"appears in more than one of {', '.join(map(str, parts))}")
    write_parquet(merged, out)
    return merged
