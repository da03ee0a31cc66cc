"""A training run's checkpoints: the fingerprint that says whose they are, the run clock each one carries (so
a resumed run reports its whole runtime), the seal written last into each, checkpoints cut off mid-save or
damaged afterwards set aside, and the loss of the whole run over its resumed segments."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from advdistill.config import PromptConfig, TrainingConfig
from advdistill.errors import InputError
from advdistill.io import read_json, write_json
from advdistill.provenance import fingerprint, path_identity, source_digest

log = logging.getLogger(__name__)

CLOCK_FILE = "run_clock.json"
SEAL_FILE = "checkpoint_complete.json"
"""Written last into every checkpoint: each of its files with its size, once they are on disk."""


class RunClock(TrainerCallback):
    """Stamps each checkpoint with the training seconds spent to reach it, so a resumed run reports its
    whole runtime (the work of a killed segment after its last checkpoint is redone and not counted), then
    seals it (:func:`seal_checkpoint`: the Trainer has written everything else by the time it calls ``on_save``)."""

    def __init__(self, prior_seconds: float = 0.0):
        self.prior_seconds = prior_seconds
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.prior_seconds + time.monotonic() - self.started

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            write_json({"seconds": self.elapsed(), "step": state.global_step}, folder / CLOCK_FILE)
            seal_checkpoint(folder)


def seal_checkpoint(folder: Path) -> None:
    """Flushes every file of a saved checkpoint to disk, then records each with its size in :data:`SEAL_FILE`."""
    sizes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SEAL_FILE):
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
        sizes[path.relative_to(folder).as_posix()] = path.stat().st_size
    write_json({"files": sizes}, folder / SEAL_FILE)


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed (no seal: cut off mid-save; a file missing or of another size than
    sealed: damaged since), or None. Sizes catch truncation without reading gigabytes of optimizer state."""
    try:
        sizes = read_json(folder / SEAL_FILE)["files"]
    except (InputError, OSError, ValueError, KeyError, TypeError):
        return f"no readable {SEAL_FILE} (killed while saving?)"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was saved (truncated?)"
    return None


def set_aside_incomplete_checkpoints(checkpoints: Path) -> list[str]:
    """Rename checkpoints newer than the newest complete one to ``incomplete-checkpoint-N`` (the Trainer no
    longer sees them, the files stay for inspection until the run finishes); returns their names."""
    folders = sorted((f for f in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if f.is_dir()),
                     key=lambda f: int(f.name.rsplit("-", 1)[1]) if f.name.rsplit("-", 1)[1].isdigit() else -1,
                     reverse=True)
    set_aside = []
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            break
        folder.rename(folder.with_name(f"incomplete-{folder.name}"))
        log.warning("checkpoint %s cannot be resumed: %s; set aside, resuming from an earlier one", folder, problem)
        set_aside.append(folder.name)
    return set_aside


def remove_unsealed_checkpoints(checkpoints: Path) -> list[str]:
    """Delete the checkpoints of ``checkpoints`` that carry no seal: the one a failed save (a full disk) cut off, whose
    bytes would only fill the disk further; sealed ones stay for the next run to resume. Returns their names."""
    removed = []
    for folder in sorted(checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*")) if checkpoints.is_dir() else []:
        if folder.is_dir() and not folder.is_symlink() and not (folder / SEAL_FILE).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def whole_run_loss(log_history: Sequence[dict[str, Any]]) -> float | None:
    """Mean training loss over every step of the run, resumed segments included: each logged loss is the
    mean over the steps since the previous log, so it is weighted by that number of steps."""
    total, steps, previous = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - previous)
            steps += entry["step"] - previous
            previous = entry["step"]
    return total / steps if steps else None


def training_fingerprint(model_path: str, rows_path: Path, scored_path: Path, objective: str, cfg: TrainingConfig,
                         prompt_cfg: PromptConfig, seed: int) -> str:
    """What a training run's checkpoints depend on; a checkpoint of another run must not be resumed. The trackers
    (``report_to``) are left out: they do not change the weights, so a killed run resumes with a tracker added."""
    training = {key: value for key, value in dataclasses.asdict(cfg).items() if key != "report_to"}
    return fingerprint({
        "model": path_identity(model_path), "rows": path_identity(str(rows_path)),
        "scored": path_identity(str(scored_path)), "objective": objective, "training": training,
        "prompt": dataclasses.asdict(prompt_cfg), "seed": seed, "code": source_digest(),
    })
