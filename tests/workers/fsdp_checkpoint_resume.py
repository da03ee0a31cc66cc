"""Run under ``torchrun``: an AdvDistill run of the project's trainer (:func:`build_trainer`, :func:`fit`) with
``training.fsdp`` over gloo, checkpointing every 2 of its 4 steps and resuming from the newest checkpoint in its
folder; rank 0 saves the full trained state and the run's metrics.

accelerate turns FSDP on for GPUs only (on CPU its state stays ``MULTI_CPU``, and :func:`build_trainer` stops).
This rehearsal lifts that one gate, so the Trainer, accelerate's FSDP2 wrapping and the project's checkpoint
save and load run as they do on GPUs, with gloo standing in for NCCL.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import accelerate.state
import torch
from accelerate.utils import DistributedType
from transformers import AutoTokenizer

from advdistill.config import LossConfig, OptimConfig, TrainingConfig
from advdistill.training.student import load_student
from advdistill.training.trainer import build_trainer, fit

STEPS, SAVE_STEPS = 4, 2


def shard_on_cpu() -> None:
    """Let accelerate shard with FSDP on CPU processes, as it does on GPUs."""
    original = accelerate.state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate.state.AcceleratorState.__init__ = init


def main(model_dir: str, groups_file: str, checkpoints: str, out: str) -> None:
    faulthandler.dump_traceback_later(150, exit=True)  # a collective that never returns fails the test, with stacks
    shard_on_cpu()
    groups = torch.load(groups_file, weights_only=False)
    optim = OptimConfig(learning_rate=2e-3, max_steps=STEPS, save_steps=SAVE_STEPS, warmup_ratio=0.0,
                        lr_scheduler="linear", max_grad_norm=0.5, max_seq_length=512, logging_steps=1)
    cfg = TrainingConfig(optim=optim, processes=2, fsdp=True, loss=LossConfig(backend="torch"))
    model, _ = load_student(model_dir, "fp32")
    trainer = build_trainer(model, AutoTokenizer.from_pretrained(model_dir), "advdistill", groups, cfg,
                            Path(checkpoints), seed=3)
    metrics = fit(trainer, Path(checkpoints))
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():
        losses = {entry["step"]: entry["loss"] for entry in metrics["log_history"] if "loss" in entry}
        torch.save({name.removeprefix("student."): tensor for name, tensor in state.items()}, out)
        Path(out).with_suffix(".json").write_text(json.dumps({
            "fsdp": trainer.is_fsdp_enabled, "global_step": metrics["global_step"],
            "resumed_from": metrics["resumed_from"], "losses": losses}))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
