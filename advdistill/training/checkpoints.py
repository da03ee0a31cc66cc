"""A training run's checkpoints: the fingerprint that says whose they are, the run clock each one carries (so
a resumed run reports its whole runtime), checkpoints cut off mid-save set aside, and the loss of the whole run
over its resumed segments."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from advdistill.config import PromptConfig, TrainingConfig
from advdistill.io import read_json, write_json
from advdistill.provenance import fingerprint, path_identity, source_digest

log = logging.getLogger(__name__)

CLOCK_FILE = "run_clock.json"
TRAINER_STATE_NAME = "trainer_state.json"  # written last into every Trainer checkpoint


class RunClock(TrainerCallback):
    """Stamps each checkpoint with the training seconds spent to reach it, so a resumed run reports its
    whole runtime (the work of a killed segment after its last checkpoint is redone and not counted)."""

    def __init__(self, prior_seconds: float = 0.0):
        self.prior_seconds = prior_seconds
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.prior_seconds + time.monotonic() - self.started

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            write_json({"seconds": self.elapsed(), "step": state.global_step}, folder / CLOCK_FILE)


def is_complete_checkpoint(folder: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last: a folder without a readable one was cut off mid-save."""
    try:
        read_json(folder / TRAINER_STATE_NAME)
    except (OSError, ValueError):
        return False
    return True


def set_aside_incomplete_checkpoints(checkpoints: Path) -> list[str]:
    """Rename checkpoints newer than the newest complete one to ``incomplete-checkpoint-N`` (the Trainer no
    longer sees them, the files stay for inspection until the run finishes); returns their names."""
    folders = sorted((f for f in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if f.is_dir()),
                     key=lambda f: int(f.name.rsplit("-", 1)[1]) if f.name.rsplit("-", 1)[1].isdigit() else -1,
                     reverse=True)
    set_aside = []
    for folder in folders:
        if is_complete_checkpoint(folder):
            break
        folder.rename(folder.with_name(f"incomplete-{folder.name}"))
        log.warning("checkpoint %s is incomplete (no readable %s; killed while saving?): set aside, resuming "
                    "from an earlier one", folder, TRAINER_STATE_NAME)
        set_aside.append(folder.name)
    return set_aside




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
    """What a training run's checkpoints depend on; a checkpoint of another run must not be resumed."""
    return fingerprint({
        "model": path_identity(model_path), "rows": path_identity(str(rows_path)),
        "scored": path_identity(str(scored_path)), "objective": objective, "training": dataclasses.asdict(cfg),
        "prompt": dataclasses.asdict(prompt_cfg), "seed": seed, "code": source_digest(),
    })
