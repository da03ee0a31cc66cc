"""The ``train`` stage on the Hugging Face ``Trainer``: the SFT baseline and the AdvDistill objective.

SFT trains on (prompt, response) pairs with token-mean cross-entropy; AdvDistill on whole groups (all
responses of a prompt), ``training.optim.per_device_batch_size`` prompts per micro-batch for both. Both losses come from the last hidden states and the
LM-head weight through :mod:`advdistill.losses`, so a fused backend never materialises the logits.
The student and its loss form one module (:class:`StudentWithLoss`), so the same code runs in one
process or in several (``training.processes``: DDP, or FSDP with ``training.fsdp``), and the student
trains on fp32 master weights unless ``training.precision`` is ``bf16-pure``.
Checkpoints are written every ``save_steps``; a killed run resumes from the newest one. The checkpoint
folder is stamped with a fingerprint of the run (student, data, settings, seed, code), so a rerun
after any of them changed starts from the student base, and it is deleted once the model is saved.
Experiment trackers (``training.report_to``) name the run ``run_name``; TensorBoard writes into the run's tracker
folder beside the model folder (:mod:`advdistill.trackers`).
The parts live in :mod:`advdistill.training`; this module reads the inputs and runs them in order.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import polars as pl
from transformers import AutoTokenizer

from advdistill.config import PromptConfig, TrainingConfig
from advdistill.datasets.base import read_rows
from advdistill.errors import TrainingError
from advdistill.hub import local_model
from advdistill.io import (
    atomic_directory,
    check_replaceable,
    check_resume_folder,
    check_rows,
    claim_resume_folder,
    read_parquet,
    write_json,
)
from advdistill.prompts import render_prompts
from advdistill.trackers import default_tracker_dir
from advdistill.training.checkpoints import training_fingerprint
from advdistill.training.groups import best_pairs, build_groups, split_validation
from advdistill.training.student import load_student, resolve_precision, save_student
from advdistill.training.trainer import build_trainer, fit

SCORED_COLUMNS = {"prompt_id": pl.String, "sample_idx": pl.Int64, "response": pl.String, "advantage": pl.Float64,
                  "correct": pl.Boolean, "kept": pl.Boolean}
# what makes a row of the scored table unusable -> the rows that have it; advantage, correct and response are
# checked in kept groups only, the ones train reads (a NaN advantage made SFT train on a group's first response)
SCORED_PROBLEMS = {
    "a missing prompt_id": pl.col("prompt_id").is_null(),
    "a missing kept flag": pl.col("kept").is_null(),
    "a repeated (prompt_id, sample_idx)": pl.struct("prompt_id", "sample_idx").is_duplicated(),
    "a missing or non-finite advantage in a kept group":
        pl.col("kept") & ~pl.col("advantage").is_finite().fill_null(False),
    "a missing correct flag in a kept group": pl.col("kept") & pl.col("correct").is_null(),
    "a missing response in a kept group": pl.col("kept") & pl.col("response").is_null(),
}
log = logging.getLogger(__name__)


def run_train(model_path: str, rows_path: Path, scored_path: Path, objective: str, cfg: TrainingConfig,
              prompt_cfg: PromptConfig, seed: int, out: Path, checkpoints: Path,
              few_shot_seed: int | None = None, run_name: str | None = None,
              tracker_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tune a student on scored teacher groups with the ``sft`` or ``advdistill`` objective.

    Few-shot turns (``prompt_cfg.few_shot``) come from ``rows_path``, picked by ``few_shot_seed`` (default
    ``seed``): the pipeline passes the sampler's seed, so the student learns from the prompts the teacher saw.

    ``checkpoints`` holds the checkpoints of this run only (see
    :func:`~advdistill.training.checkpoints.training_fingerprint`). The trackers name the run ``run_name``
    (default: the name of ``out``); ``tracker_dir`` (default ``<out>.trackers``) is this run's folder for the
    trackers that write files.
    """
    tracker_dir = tracker_dir or default_tracker_dir(out)
    check_replaceable(out, "train")
    check_replaceable(tracker_dir, "train", "--tracker-dir")
    check_resume_folder(checkpoints, "train", "--checkpoints")
    scored = read_parquet(scored_path, SCORED_COLUMNS)
    if scored.is_empty():
        raise TrainingError(f"{scored_path}: the scored table has no rows, so no groups to train on")
    check_rows(scored, scored_path, SCORED_PROBLEMS, ["prompt_id", "sample_idx", "advantage"])
    if not scored["kept"].any():
        raise TrainingError(f"{scored_path}: no kept groups to train on (every group was filtered out by score)")
    rows = read_rows(rows_path).to_dicts()
    model_folder = local_model(model_path, "advdistill train")  # a hub id: fetched here, in bounded time
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    shots_seed = seed if few_shot_seed is None else few_shot_seed
    prompts = dict(zip([r["id"] for r in rows], render_prompts(rows, tokenizer, prompt_cfg, rows, shots_seed)))
    groups, truncated = build_groups(prompts, scored, tokenizer, cfg.optim.max_seq_length)
    train_groups, eval_groups = split_validation(groups, cfg.validation_fraction, seed)
    if objective == "sft":
        train_items, eval_items = best_pairs(train_groups), best_pairs(eval_groups)
    else:
        train_items, eval_items = train_groups, eval_groups
    model, saved_dtype = load_student(model_folder, cfg.precision)
    trainer = build_trainer(model, tokenizer, objective, train_items, cfg, checkpoints, seed, eval_items,
                            run_name=run_name or out.name, tracker_dir=tracker_dir)
    if trainer.is_world_process_zero():
        claim_resume_folder(checkpoints, training_fingerprint(model_path, rows_path, scored_path, objective, cfg,
                                                              prompt_cfg, seed), "train")
    trainer.accelerator.wait_for_everyone()
    metrics = fit(trainer, checkpoints)
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    metrics.update({"objective": objective, "groups": len(groups), "train_items": len(train_items),
                    "eval_items": len(eval_items), "truncated_responses": truncated,
                    "precision": resolve_precision(cfg.precision, model.config.hidden_size), "processes": trainer.accelerator.num_processes,
                    "fsdp": trainer.is_fsdp_enabled})
    if trainer.is_world_process_zero():
        # the metrics go in with the model, and the checkpoints only once both are in place: a job killed between
        # the two would leave a model without its metrics, and nothing to resume from
        with atomic_directory(out, "train") as tmp:
            save_student(model, tmp, state, saved_dtype)
            tokenizer.save_pretrained(tmp)
            write_json(metrics, tmp / "train_metrics.json")
        shutil.rmtree(checkpoints)
        log.info("%s: trained on %d items (%d held out), %d responses truncated", objective, len(train_items),
                 len(eval_items), truncated)
    trainer.accelerator.wait_for_everyone()
    return metrics
