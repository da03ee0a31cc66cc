"""The Hugging Face ``Trainer`` of a student with its fused loss: its arguments (one device per process, FSDP
when asked, the experiment trackers of ``training.report_to``), the subclass that handles non-finite losses,
records the loss terms and saves the student alone, and training that resumes from the newest complete
checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from transformers import AutoModelForCausalLM, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_utils import get_last_checkpoint

from advdistill.config import TrainingConfig
from advdistill.errors import OutputError, TrainingError
from advdistill.io import disk_refusal, read_json
from advdistill.trackers import start_tracker_folder, tensorboard_folder, tracker_names
from advdistill.training.checkpoints import (
    CLOCK_FILE,
    RunClock,
    remove_unsealed_checkpoints,
    set_aside_incomplete_checkpoints,
    whole_run_loss,
)
from advdistill.training.collators import GroupCollator, ListDataset, PairCollator
from advdistill.training.student import StudentWithLoss, resolve_precision, save_student

log = logging.getLogger(__name__)


class SingleDeviceArguments(TrainingArguments):
    """``TrainingArguments`` that never replicate the model with ``nn.DataParallel``.

    One process sees every GPU of a workstation; ``Trainer`` would then wrap the model in ``DataParallel``,
    which skips the fused loss's forward. Several GPUs are used through ``training.processes`` instead.
    """

    @property
    def n_gpu(self) -> int:
        return min(super().n_gpu, 1)


def fsdp_arguments(cfg: TrainingConfig, layer_classes: Sequence[str]) -> dict[str, Any]:
    """Full sharding of weights, gradients and optimizer state, one FSDP unit per decoder layer."""
    if not cfg.fsdp:
        return {}
    config = {"version": 2, "reshard_after_forward": True, "transformer_layer_cls_to_wrap": list(layer_classes),
              "state_dict_type": "FULL_STATE_DICT"}
    return {"fsdp": True, "fsdp_config": config}


def training_arguments(cfg: TrainingConfig, output_dir: Path, seed: int, has_eval: bool, save_checkpoints: bool,
                       layer_classes: Sequence[str] = (), run_name: str | None = None) -> TrainingArguments:
    """``cfg.precision`` resolved (:func:`~advdistill.training.student.resolve_precision`; :func:`build_trainer` does
    it); ``run_name`` names the run in the trackers (W&B, MLflow, Trackio, ...); None: transformers' default."""
    if cfg.precision == "auto":
        raise ValueError("training_arguments: resolve training.precision 'auto' first (resolve_precision)")
    optim = cfg.optim
    return SingleDeviceArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=optim.per_device_batch_size,
        per_device_eval_batch_size=optim.per_device_batch_size,
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        learning_rate=optim.learning_rate,
        weight_decay=optim.weight_decay,
        num_train_epochs=optim.epochs,
        max_steps=optim.max_steps,
        warmup_steps=optim.warmup_ratio,
        lr_scheduler_type=optim.lr_scheduler,
        max_grad_norm=optim.max_grad_norm,
        optim="adamw_torch",
        bf16=cfg.precision == "bf16-mixed",
        use_cpu=not torch.cuda.is_available(),
        average_tokens_across_devices=True,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        **fsdp_arguments(cfg, layer_classes),
        eval_strategy="steps" if has_eval else "no",
        eval_steps=optim.eval_steps if has_eval else None,
        save_strategy="steps" if save_checkpoints else "no",
        save_steps=optim.save_steps,
        save_total_limit=2,
        logging_steps=optim.logging_steps,
        report_to=tracker_names(cfg.report_to),
        run_name=run_name,
        project="advdistill",  # Trackio's project (transformers' default: huggingface)
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
        prediction_loss_only=True,
    )


class FusedLossTrainer(Trainer):
    """``Trainer`` of a :class:`StudentWithLoss`; checkpoints hold the student alone, as ``save_pretrained`` writes it,
    beside the optimizer, scheduler and RNG states, in one layout with or without FSDP.

    SFT is a token-mean cross-entropy over the whole accumulated batch of every process, AdvDistill the mean
    over every group of it (each micro-batch's mean over its own groups, scaled by its share of the groups), so
    that any split of the same global batch into processes, accumulation steps and micro-batches gives the same
    update, a last micro-batch or accumulation window with fewer groups included.
    """

    def __init__(self, *args, nonfinite_loss: str = "error", tracker_dir: Path | None = None, **kwargs):
        """``tracker_dir``: the folder of the trackers that write files (TensorBoard), see :func:`fit`."""
        with tensorboard_folder(tracker_dir):
            super().__init__(*args, **kwargs)
        self.tracker_dir = tracker_dir
        self.nonfinite_loss = nonfinite_loss
        self.skipped_nonfinite: list[dict[str, Any]] = []
        # both losses come scaled by num_items_in_batch (tokens for SFT, groups for AdvDistill), not by the Trainer
        self.loss_is_scaled_for_ga = True

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """SFT: the label tokens of the accumulated batch on all processes (the Trainer's count); AdvDistill: its
        groups, so that each micro-batch's loss is scaled by its share of them (:meth:`compute_loss`)."""
        if self.model.objective != "advdistill":
            return super()._get_num_items_in_batch(batch_samples, device)
        groups = torch.tensor(sum(len(batch["group_ids"]) for batch in batch_samples), device=device)
        if self.args.world_size > 1:
            groups = self.accelerator.gather(groups).sum()
        return groups

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        group_ids = inputs.pop("group_ids", None)
        # Loss terms are measured on the micro-batches of the first optimizer step of each logging interval.
        self.model.record_terms = model.training and self.state.global_step % self.args.logging_steps == 0
        # DDP averages gradients over processes, while num_items_in_batch already counts all of them.
        if self.model.objective == "sft" and num_items_in_batch is not None:
            loss = model(**inputs, num_items_in_batch=num_items_in_batch) * self.accelerator.num_processes
        elif model.training and num_items_in_batch is not None:
            # the mean over the micro-batch's groups, weighed by its share of the accumulated batch's groups
            share = len(group_ids) * self.accelerator.num_processes / num_items_in_batch
            loss = model(**inputs) * share
        else:
            loss = model(**inputs)
        if not torch.isfinite(loss):
            group = ", ".join(group_ids) if group_ids else None
            where = f"step {self.state.global_step}, group {group or 'n/a'}"
            if self.nonfinite_loss == "error":
                raise TrainingError(f"non-finite loss {loss.item()} at {where}")
            log.warning("skipping non-finite loss %s at %s", loss.item(), where)
            self.skipped_nonfinite.append({"step": self.state.global_step, "group": group})
            loss = sum(p.sum() for p in model.parameters()) * 0.0
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Training logs also carry the mean loss terms recorded since the last log (AdvDistill), and so do the
        trackers. A term without a value (no wrong response since the last log) is left out: trackers take
        numbers only (TensorBoard's and MLflow's callbacks drop anything else with a warning)."""
        recorded = self.model.recorded_terms
        if "loss" in logs and recorded:
            for name in recorded[0]:
                values = [terms[name] for terms in recorded if terms[name] is not None]
                if values:
                    logs[name] = sum(values) / len(values)
            recorded.clear()
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Under FSDP ``save_model`` hands in the full state dict, gathered on process 0 (FULL_STATE_DICT).
        if self.args.should_save:
            save_student(self.model.student, Path(output_dir or self.args.output_dir), state_dict)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under FSDP, the optimizer and scheduler only: the Trainer would also write a second full copy of the
        model in FSDP's own layout (``pytorch_model_fsdp.bin``) beside the student ``save_model`` wrote."""
        if not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        from accelerate.utils import save_fsdp_optimizer

        # The full optimizer state, gathered on process 0 (``optimizer.bin``); the Trainer loads it back itself.
        save_fsdp_optimizer(self.accelerator.state.fsdp_plugin, self.accelerator, self.optimizer, self.model,
                            output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """The student of a checkpoint (``save_pretrained`` layout), into the plain or the FSDP-sharded model.

        Under FSDP process 0 reads the checkpoint and each process receives its shards of the full state.
        """
        student = self.model.student
        if not self.is_fsdp_enabled:
            saved = AutoModelForCausalLM.from_pretrained(resume_from_checkpoint, dtype=student.dtype)
            student.load_state_dict(saved.state_dict())
            return None
        model = model if model is not None else self.model_wrapped
        state = {}
        if self.accelerator.is_main_process:
            saved = AutoModelForCausalLM.from_pretrained(resume_from_checkpoint, dtype=student.dtype)
            state = {f"student.{name}": tensor for name, tensor in saved.state_dict().items()}
        self.accelerator.wait_for_everyone()
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        self.accelerator.wait_for_everyone()
        return None


def check_launch(processes: int) -> None:
    """``training.processes`` must match the processes this run was launched with (see the train rule)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != processes:
        raise TrainingError(f"training.processes is {processes} but this run has {launched} process(es); launch it "
                            f"with 'accelerate launch --num_processes {processes} -m advdistill.cli train ...' "
                            "(the train rule does) or set training.processes to match")


def build_trainer(model: PreTrainedModel, tokenizer: Any, objective: str, train_items: Sequence[Any],
                  cfg: TrainingConfig, checkpoints: Path, seed: int, eval_items: Sequence[Any] = (),
                  save_checkpoints: bool = True, run_name: str | None = None,
                  tracker_dir: Path | None = None) -> FusedLossTrainer:
    """A trainer of ``model`` on pairs (``sft``) or groups (``advdistill``), ``cfg.optim.per_device_batch_size`` of
    them (prompts) per micro-batch, reporting to the trackers of ``cfg.report_to`` as ``run_name``; file-based ones
    (TensorBoard) write into ``tracker_dir``."""
    if not train_items:
        raise TrainingError("no training examples")
    check_launch(cfg.processes)
    precision = resolve_precision(cfg.precision, model.config.hidden_size)
    if precision != cfg.precision:
        log.info("training.precision auto: %s for this %d-wide student on this machine", precision,
                 model.config.hidden_size)
        cfg = dataclasses.replace(cfg, precision=precision)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    collator = (PairCollator(tokenizer.pad_token_id) if objective == "sft"
                else GroupCollator(tokenizer.pad_token_id, cfg.loss.contrastive_tokens))
    trainer = FusedLossTrainer(
        model=StudentWithLoss(model, objective, cfg.loss),
        args=training_arguments(cfg, checkpoints, seed, bool(eval_items), save_checkpoints,
                                getattr(model, "_no_split_modules", None) or (), run_name),
        train_dataset=ListDataset(train_items),
        eval_dataset=ListDataset(eval_items) if eval_items else None,
        data_collator=collator,
        nonfinite_loss=cfg.nonfinite_loss,
        tracker_dir=tracker_dir,
    )
    if cfg.fsdp and not trainer.is_fsdp_enabled:
        raise TrainingError(f"training.fsdp is true but accelerate did not shard the model (distributed type "
                            f"{trainer.accelerator.distributed_type}); it shards on GPUs only")
    return trainer


def fit(trainer: FusedLossTrainer, checkpoints: Path, save_checkpoints: bool = True) -> dict[str, Any]:
    """Train, resuming from the newest complete checkpoint in ``checkpoints``; returns metrics of the whole
    run (loss and runtime over every segment) beside the trainer's metrics of this segment. The trainer's tracker
    folder goes on with a resumed run and starts empty otherwise (:func:`~advdistill.trackers.start_tracker_folder`).
    """
    incomplete, checkpoint = [], None
    if save_checkpoints:
        # Every process waits here, whether or not it sees the folder yet: process 0 may create it meanwhile.
        if trainer.is_world_process_zero() and checkpoints.is_dir():
            incomplete = set_aside_incomplete_checkpoints(checkpoints)
        trainer.accelerator.wait_for_everyone()
        checkpoint = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if trainer.tracker_dir is not None and trainer.is_world_process_zero():
        start_tracker_folder(trainer.tracker_dir, trainer.args.report_to, resuming=checkpoint is not None)
    clock_file = Path(checkpoint) / CLOCK_FILE if checkpoint else None
    clock = RunClock(read_json(clock_file)["seconds"] if clock_file and clock_file.exists() else 0.0)
    trainer.add_callback(clock)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as err:  # a checkpoint save the disk refused, in whatever library wrote it (io.disk_refusal)
        reason = None if isinstance(err, OutputError) else disk_refusal(err)
        if not save_checkpoints or not (reason or isinstance(err, OutputError)):
            raise
        if trainer.is_world_process_zero():
            for name in remove_unsealed_checkpoints(checkpoints):
                log.warning("removed %s, cut off while it was saved", checkpoints / name)
        if reason is None:
            raise
        raise OutputError(f"cannot write a checkpoint into {checkpoints}: {reason}") from err
    history = trainer.state.log_history
    return {**result.metrics, "segment_runtime": result.metrics.get("train_runtime"),
            "train_runtime": clock.elapsed(), "train_loss": whole_run_loss(history),
            "global_step": trainer.state.global_step, "tokens_seen": trainer.state.num_input_tokens_seen,
            "resumed_from": checkpoint, "incomplete_checkpoints": incomplete,
            "skipped_nonfinite": trainer.skipped_nonfinite, "log_history": history}


def train_model(model: PreTrainedModel, tokenizer: Any, objective: str, train_items: Sequence[Any],
                cfg: TrainingConfig, checkpoints: Path, seed: int, eval_items: Sequence[Any] = (),
                save_checkpoints: bool = True, callbacks: Iterable[TrainerCallback] = ()) -> dict[str, Any]:
    """Train ``model`` in place in this process; returns the trainer's metrics."""
    trainer = build_trainer(model, tokenizer, objective, train_items, cfg, checkpoints, seed, eval_items,
                            save_checkpoints)
    for callback in callbacks:
        trainer.add_callback(callback)
    return fit(trainer, checkpoints, save_checkpoints)
