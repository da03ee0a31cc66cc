"""Resumable sampling: prompts in, a samples parquet out, shard by shard.

Prompts are processed in shards of ``shard_size``; each finished shard is written to a parts
folder beside the output. A killed run skips the shards already there. The parts folder carries a
fingerprint of everything that determines its content (model files, prompts, sampling settings,
seed, source code), so parts left by a different run are discarded rather than reused. Every
``generate`` call is seeded from the run seed and its batch number, so a resumed run writes exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from advdistill.config import SamplingConfig
from advdistill.errors import InputError
from advdistill.io import claim_resume_folder, read_parquet, write_parquet
from advdistill.paths import sampling_parts_folder
from advdistill.provenance import fingerprint, path_identity, source_digest
from advdistill.sampling.base import Completion, GenerationParams, SamplingBackend

log = logging.getLogger(__name__)

SAMPLE_SCHEMA = {
    "prompt_id": pl.String,
    "sample_idx": pl.Int32,
    "response": pl.String,
    "n_tokens": pl.Int32,
    "truncated": pl.Boolean,
}


def run_fingerprint(model_path: str, prompt_ids: Sequence[str], prompts: Sequence[str],
                    params: GenerationParams, cfg: SamplingConfig, seed: int) -> str:
    return fingerprint({
        "model": path_identity(model_path),
        "code": source_digest(),
        "prompts": hashlib.sha256("\x00".join([*prompt_ids, *prompts]).encode()).hexdigest(),
        "params": asdict(params),
        "batch_size": cfg.batch_size,
        "shard_size": cfg.shard_size,
        "dtype": cfg.dtype,
        "seed": seed,
    })


def batch_seed(seed: int, first_prompt: int) -> int:
    """Seed of the ``generate`` call whose first prompt has global index ``first_prompt``."""
    return (seed * 1_000_003 + first_prompt) % (2**63)


def progress_label(stage: str, params: GenerationParams) -> str:
    """What the progress bar says it is doing: an evaluation writes answers, the sample stage a teacher's
    responses; at temperature 0 both are greedy, not sampled."""
    verb = "generating greedy" if params.temperature == 0 else "sampling"
    return f"{verb} {'answers' if stage == 'evaluate' else 'responses'}"


def sample_prompts(
    backend: SamplingBackend | Callable[[], SamplingBackend],
    prompt_ids: Sequence[str],
    prompts: Sequence[str],
    params: GenerationParams,
    cfg: SamplingConfig,
    seed: int,
    out_path: Path,
    fingerprint: str,
    first_index: int = 0,
    stage: str = "sample",
) -> pl.DataFrame:
    """Sample ``params.n`` completions per prompt into ``out_path``, resuming from finished shards.

    ``backend`` may be a factory, so that a run whose shards are all done never loads the model.
    ``first_index`` is the global index of ``prompts[0]`` when this job samples one part of a run. ``stage`` (sample
    or evaluate) owns the resume folder. A finished shard that no longer reads (damaged since) is sampled again.
    """
    parts_dir = sampling_parts_folder(out_path)
    claim_resume_folder(parts_dir, fingerprint, stage)

    shard_starts = range(0, len(prompts), cfg.shard_size)
    finished = {}
    for shard_number in range(len(shard_starts)):
        part = parts_dir / f"shard-{shard_number:05d}.parquet"
        if part.exists():
            try:
                finished[shard_number] = read_parquet(part, SAMPLE_SCHEMA).select(*SAMPLE_SCHEMA).cast(SAMPLE_SCHEMA)
            except InputError as err:
                log.warning("sampling %s again: %s", part, err)
    if finished:
        log.info("resuming: %d of %d shards already sampled", len(finished), len(shard_starts))
    progress = tqdm(total=len(prompts), desc=progress_label(stage, params), unit="prompt")
    for shard_number, start in enumerate(shard_starts):
        part = parts_dir / f"shard-{shard_number:05d}.parquet"
        end = min(start + cfg.shard_size, len(prompts))
        if shard_number not in finished:
            if callable(backend) and not isinstance(backend, SamplingBackend):
                backend = backend()
            rows = []
            for batch_start in range(start, end, cfg.batch_size):
                batch_end = min(batch_start + cfg.batch_size, end)
                seed_here = batch_seed(seed, first_index + batch_start)
                completions = backend.generate(list(prompts[batch_start:batch_end]), params, seed_here)
                rows.extend(_rows(prompt_ids[batch_start:batch_end], completions))
                progress.update(batch_end - batch_start)
            finished[shard_number] = pl.DataFrame(rows, schema=SAMPLE_SCHEMA)
            write_parquet(finished[shard_number], part)
        else:
            progress.update(end - start)
    progress.close()
    parts = [finished[i] for i in range(len(shard_starts))]
    samples = pl.concat(parts) if parts else pl.DataFrame(schema=SAMPLE_SCHEMA)
    unanswered = unanswered_prompts(samples, prompt_ids)
    if unanswered:  # the backend skipped them (a prompt too long for vLLM's max_model_len)
        log.warning("%d of %d prompts got no response, e.g. %s", len(unanswered), len(prompt_ids),
                    ", ".join(unanswered[:5]))
    write_parquet(samples, out_path)
    shutil.rmtree(parts_dir)
    return samples


def unanswered_prompts(samples: pl.DataFrame, prompt_ids: Sequence[str]) -> list[str]:
    """The prompts of ``prompt_ids`` with no row in ``samples``, in order."""
    answered = set(samples["prompt_id"].to_list())
    return [pid for pid in prompt_ids if pid not in answered]


def _rows(prompt_ids: Sequence[str], completions: list[list[Completion]]) -> list[dict]:
    return [
        {"prompt_id": pid, "sample_idx": idx, "response": c.text, "n_tokens": c.n_tokens,
         "truncated": c.truncated}
        for pid, group in zip(prompt_ids, completions)
        for idx, c in enumerate(group)
    ]
