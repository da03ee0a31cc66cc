"""Training on the Hugging Face ``Trainer``: the SFT baseline and the AdvDistill objective.

SFT trains on (prompt, response) pairs with token-mean cross-entropy; AdvDistill puts one group (all
responses of a prompt) in each micro-batch. Both losses come from the last hidden states and the
LM-head weight through :mod:`advdistill.losses`, so a fused backend never materialises the logits.
The student and its loss form one module (:class:`StudentWithLoss`), so the same code runs in one
process or in several (``training.processes``: DDP, or FSDP with ``training.fsdp``), and the student
trains on fp32 master weights unless ``training.precision`` is ``bf16-pure``.
Checkpoints are written every ``save_steps``; a killed run resumes from the newest one. The checkpoint
folder is stamped with a fingerprint of the run (student, data, settings, seed, code), so a rerun
after any of them changed starts from the student base, and it is deleted once the model is saved.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from advdistill.config import LossConfig, PromptConfig, TrainingConfig
from advdistill.errors import InputError, TrainingError
from advdistill.io import (
    atomic_directory,
    check_replaceable,
    check_resume_folder,
    claim_resume_folder,
    read_json,
    read_parquet,
    write_json,
)
from advdistill.losses import group_loss, group_loss_terms, sft_loss
from advdistill.prompts import end_of_turn_id, render_prompts
from advdistill.provenance import fingerprint, path_identity, source_digest

IGNORE_INDEX = -100
SCORED_COLUMNS = {"prompt_id": pl.String, "sample_idx": pl.Int64, "response": pl.String, "advantage": pl.Float64,
                  "correct": pl.Boolean, "kept": pl.Boolean}
log = logging.getLogger(__name__)


@dataclass
class TokenizedPair:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def tokenize_pair(tokenizer: Any, prompt: str, response: str, max_length: int) -> TokenizedPair:
    """Prompt and response token ids, prompt tokens masked in ``labels``, the response closed the way the
    chat template closes an assistant turn (``<|im_end|>``; the EOS where the template has no such token).

    Sequences longer than ``max_length`` lose the end of the response (flagged ``truncated``).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    turn_end = end_of_turn_id(tokenizer)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id if turn_end is None else turn_end]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return TokenizedPair(input_ids, labels, truncated=len(prompt_ids) + len(response_ids) > max_length)


def pad_sequences(pairs: Sequence[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (padding masked)."""
    width = max(len(p.input_ids) for p in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, pair in enumerate(pairs):
        n = len(pair.input_ids)
        input_ids[row, :n] = torch.tensor(pair.input_ids)
        labels[row, :n] = torch.tensor(pair.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class ListDataset(Dataset):
    def __init__(self, items: Sequence[Any]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class PairCollator:
    """Batches of :class:`TokenizedPair` for plain causal-LM training."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
        return pad_sequences(pairs, self.pad_id)


def resolve_precision(setting: str) -> str:
    """``auto`` is ``bf16-mixed`` on a bf16-capable GPU and ``fp32`` elsewhere."""
    if setting == "auto":
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return setting


def load_student(path: str, precision: str) -> tuple[PreTrainedModel, torch.dtype]:
    """The student in its training dtype, and the dtype its checkpoint was saved in (the one to save it in).

    Hub checkpoints are bf16, and ``from_pretrained`` keeps that dtype, so without an explicit fp32 load
    AdamW would update bf16 weights: at lr 5e-6 most updates round away. Only ``bf16-pure`` trains that way.
    """
    saved_dtype = AutoConfig.from_pretrained(path).dtype or torch.float32
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype)
    precision = resolve_precision(precision)
    if precision == "bf16-pure":
        log.warning("training.precision bf16-pure: weights and AdamW state stay in bf16, so small updates round "
                    "away (use bf16-mixed unless memory forces this)")
    train_dtype = torch.bfloat16 if precision == "bf16-pure" else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=train_dtype), saved_dtype


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
                       layer_classes: Sequence[str] = ()) -> TrainingArguments:
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
        bf16=resolve_precision(cfg.precision) == "bf16-mixed",
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
        report_to="none",
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
        prediction_loss_only=True,
    )


class StudentWithLoss(nn.Module):
    """The student and its fused loss as one module, so that a DDP or FSDP wrapper runs the whole step.

    DDP all-reduces gradients only for a forward through its wrapper, and FSDP gathers the LM-head
    weight only inside the root module's forward; a loss computed from the decoder outside ``forward``
    would skip both. The decoder runs without its LM head, so no logits are materialised.
    """

    def __init__(self, student: PreTrainedModel, objective: str, loss_cfg: LossConfig):
        super().__init__()
        if objective not in ("sft", "advdistill"):
            raise ValueError(f"unknown training objective '{objective}' (known: sft, advdistill)")
        self.student = student
        self.objective = objective
        self.loss_cfg = loss_cfg
        # Trainer hands ``num_items_in_batch`` (label tokens of the whole accumulated batch on all processes)
        # only to models that accept loss kwargs: SFT divides its token sum by it.
        self.accepts_loss_kwargs = objective == "sft"
        self.record_terms = False
        self.recorded_terms: list[dict[str, float | None]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                advantages: torch.Tensor | None = None, correct: torch.Tensor | None = None,
                num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        hidden = self.student.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weight = self.student.get_output_embeddings().weight
        if self.objective == "advdistill":
            if self.record_terms:
                self.recorded_terms.append(group_loss_terms(hidden, weight, labels, advantages, correct,
                                                            self.loss_cfg))
            return group_loss(hidden, weight, labels, advantages, correct, self.loss_cfg)
        loss = sft_loss(hidden, weight, labels, self.loss_cfg)
        if num_items_in_batch is None:
            return loss
        # A batch whose responses were all truncated away has no label tokens: its loss is 0, not 0/0.
        total = torch.as_tensor(num_items_in_batch, device=loss.device).clamp(min=1)
        return loss * (labels[:, 1:] != IGNORE_INDEX).sum() / total


class FusedLossTrainer(Trainer):
    """``Trainer`` of a :class:`StudentWithLoss`; checkpoints hold the student alone, as ``save_pretrained`` writes it.

    SFT is a token-mean cross-entropy over the whole accumulated batch of every process (so that any
    split into processes and accumulation steps gives the same update); AdvDistill is a mean over groups.
    """

    def __init__(self, *args, nonfinite_loss: str = "error", **kwargs):
        super().__init__(*args, **kwargs)
        self.nonfinite_loss = nonfinite_loss
        self.skipped_nonfinite: list[dict[str, Any]] = []
        self.loss_is_scaled_for_ga = self.model.objective == "sft"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        group_id = inputs.pop("group_id", None)
        # Loss terms are measured on the micro-batches of the first optimizer step of each logging interval.
        self.model.record_terms = model.training and self.state.global_step % self.args.logging_steps == 0
        if self.model.objective == "sft" and num_items_in_batch is not None:
            # DDP averages gradients over processes, while num_items_in_batch already counts all of them.
            loss = model(**inputs, num_items_in_batch=num_items_in_batch) * self.accelerator.num_processes
        else:
            loss = model(**inputs)
        if not torch.isfinite(loss):
            where = f"step {self.state.global_step}, group {group_id or 'n/a'}"
            if self.nonfinite_loss == "error":
                raise TrainingError(f"non-finite loss {loss.item()} at {where}")
            log.warning("skipping non-finite loss %s at %s", loss.item(), where)
            self.skipped_nonfinite.append({"step": self.state.global_step, "group": group_id})
            loss = sum(p.sum() for p in model.parameters()) * 0.0
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Training logs also carry the mean loss terms recorded since the last log (AdvDistill)."""
        recorded = self.model.recorded_terms
        if "loss" in logs and recorded:
            for name in recorded[0]:
                values = [terms[name] for terms in recorded if terms[name] is not None]
                logs[name] = sum(values) / len(values) if values else None
            recorded.clear()
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            save_student(self.model.student, Path(output_dir or self.args.output_dir), state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        student = self.model.student
        saved = AutoModelForCausalLM.from_pretrained(resume_from_checkpoint, dtype=student.dtype)
        student.load_state_dict(saved.state_dict())
        return None


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors cast to ``dtype``; tensors that shared memory (tied embeddings) still share it, so
    ``save_pretrained`` writes them once, as the hub checkpoints do."""
    cast: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            cast.setdefault((tensor.data_ptr(), tuple(tensor.shape)), tensor.to(dtype))
    return {name: cast.get((tensor.data_ptr(), tuple(tensor.shape)), tensor) for name, tensor in state.items()}


def save_student(student: PreTrainedModel, out: Path, state_dict: dict[str, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None) -> None:
    """``save_pretrained`` of the student from its own or a :class:`StudentWithLoss` state dict.

    With ``dtype`` (the end of a run) the student itself is cast too, so config.json names the saved dtype.
    """
    state = student.state_dict() if state_dict is None else {
        name.removeprefix("student."): tensor for name, tensor in state_dict.items()}
    if dtype is not None:
        state = cast_state(state, dtype)
        student.to(dtype)  # save_pretrained records the parameters' dtype in config.json
    student.save_pretrained(out, state_dict=state)


@dataclass
class Group:
    """All responses of one prompt, tokenized, with their advantages and correctness."""

    group_id: str
    pairs: list[TokenizedPair]
    advantages: list[float]
    correct: list[bool]


class GroupCollator:
    """One group per micro-batch (the AdvDistill objective)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, groups: Sequence[Group]) -> dict[str, Any]:
        if len(groups) != 1:
            raise TrainingError(f"AdvDistill takes one group per micro-batch, got {len(groups)}")
        group = groups[0]
        batch = pad_sequences(group.pairs, self.pad_id)
        batch["advantages"] = torch.tensor(group.advantages, dtype=torch.float32)
        batch["correct"] = torch.tensor(group.correct, dtype=torch.bool)
        batch["group_id"] = group.group_id
        return batch


def check_launch(processes: int) -> None:
    """``training.processes`` must match the processes this run was launched with (see the train rule)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != processes:
        raise TrainingError(f"training.processes is {processes} but this run has {launched} process(es); launch it "
                            f"with 'accelerate launch --num_processes {processes} -m advdistill.cli train ...' "
                            "(the train rule does) or set training.processes to match")


def advdistill_steps(groups: int, cfg: TrainingConfig) -> int:
    """Optimizer steps of an AdvDistill run on ``groups`` groups (one per micro-batch), counted as the Trainer
    counts them: per process ``ceil(groups / processes)`` micro-batches, ``ceil(.. / accumulation)`` steps per
    epoch (at least one), ``ceil(epochs * that)`` in all."""
    micro_batches = math.ceil(groups / cfg.processes)
    per_epoch = max(math.ceil(micro_batches / cfg.optim.gradient_accumulation_steps), 1)
    return math.ceil(cfg.optim.epochs * per_epoch)


def build_trainer(model: PreTrainedModel, tokenizer: Any, objective: str, train_items: Sequence[Any],
                  cfg: TrainingConfig, checkpoint_dir: Path, seed: int, eval_items: Sequence[Any] = (),
                  save_checkpoints: bool = True) -> FusedLossTrainer:
    """A trainer of ``model`` on pairs (``sft``) or groups (``advdistill``, one group per micro-batch)."""
    if not train_items:
        raise TrainingError("no training examples")
    check_launch(cfg.processes)
    if objective == "sft" and cfg.match_steps and cfg.optim.max_steps <= 0:
        steps = advdistill_steps(len(train_items), cfg)
        log.info("training.match_steps: SFT takes the %d optimizer steps AdvDistill takes on these groups", steps)
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=steps))
    if objective == "advdistill" and cfg.optim.per_device_batch_size != 1:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, per_device_batch_size=1))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    collator = (PairCollator if objective == "sft" else GroupCollator)(tokenizer.pad_token_id)
    trainer = FusedLossTrainer(
        model=StudentWithLoss(model, objective, cfg.loss),
        args=training_arguments(cfg, checkpoint_dir, seed, bool(eval_items), save_checkpoints,
                                getattr(model, "_no_split_modules", None) or ()),
        train_dataset=ListDataset(train_items),
        eval_dataset=ListDataset(eval_items) if eval_items else None,
        data_collator=collator,
        nonfinite_loss=cfg.nonfinite_loss,
    )
    if cfg.fsdp and not trainer.is_fsdp_enabled:
        raise TrainingError(f"training.fsdp is true but accelerate did not shard the model (distributed type "
                            f"{trainer.accelerator.distributed_type}); it shards on GPUs only")
    return trainer


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


def set_aside_incomplete_checkpoints(checkpoint_dir: Path) -> list[str]:
    """Rename checkpoints newer than the newest complete one to ``incomplete-checkpoint-N`` (the Trainer no
    longer sees them, the files stay for inspection until the run finishes); returns their names."""
    folders = sorted((f for f in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if f.is_dir()),
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


def fit(trainer: FusedLossTrainer, checkpoint_dir: Path, save_checkpoints: bool = True) -> dict[str, Any]:
    """Train, resuming from the newest complete checkpoint in ``checkpoint_dir``; returns metrics of the whole
    run (loss and runtime over every segment) beside the trainer's metrics of this segment."""
    incomplete, checkpoint = [], None
    if save_checkpoints and checkpoint_dir.is_dir():
        if trainer.is_world_process_zero():
            incomplete = set_aside_incomplete_checkpoints(checkpoint_dir)
        trainer.accelerator.wait_for_everyone()
        checkpoint = get_last_checkpoint(str(checkpoint_dir))
    clock_file = Path(checkpoint) / CLOCK_FILE if checkpoint else None
    clock = RunClock(read_json(clock_file)["seconds"] if clock_file and clock_file.exists() else 0.0)
    trainer.add_callback(clock)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    history = trainer.state.log_history
    return {**result.metrics, "segment_runtime": result.metrics.get("train_runtime"),
            "train_runtime": clock.elapsed(), "train_loss": whole_run_loss(history),
            "global_step": trainer.state.global_step, "tokens_seen": trainer.state.num_input_tokens_seen,
            "resumed_from": checkpoint, "incomplete_checkpoints": incomplete,
            "skipped_nonfinite": trainer.skipped_nonfinite, "log_history": history}


def train_model(model: PreTrainedModel, tokenizer: Any, objective: str, train_items: Sequence[Any],
                cfg: TrainingConfig, checkpoint_dir: Path, seed: int, eval_items: Sequence[Any] = (),
                save_checkpoints: bool = True) -> dict[str, Any]:
    """Train ``model`` in place in this process; returns the trainer's metrics."""
    trainer = build_trainer(model, tokenizer, objective, train_items, cfg, checkpoint_dir, seed, eval_items,
                            save_checkpoints)
    return fit(trainer, checkpoint_dir, save_checkpoints)


def build_groups(prompts: dict[str, str], scored: Any, tokenizer: Any, max_length: int) -> tuple[list[Group], int]:
    """Kept groups of a scored table (polars) as :class:`Group`; also returns the truncated-response count."""
    groups, truncated = [], 0
    kept = scored.filter(scored["kept"]).sort("prompt_id", "sample_idx")
    unknown = sorted(set(kept["prompt_id"]) - set(prompts))
    if unknown:
        raise InputError(f"scored groups of {len(unknown)} prompt(s) not in the training rows, e.g. {unknown[:3]}: "
                         "were the rows prepared again after scoring?")
    for (prompt_id,), frame in kept.group_by("prompt_id", maintain_order=True):
        pairs = [tokenize_pair(tokenizer, prompts[prompt_id], response, max_length) for response in frame["response"]]
        truncated += sum(p.truncated for p in pairs)
        groups.append(Group(prompt_id, pairs, frame["advantage"].to_list(), frame["correct"].to_list()))
    return groups, truncated


def best_pairs(groups: Sequence[Group]) -> list[TokenizedPair]:
    """The SFT baseline's data: per group, the response with the highest advantage (first on ties)."""
    return [g.pairs[max(range(len(g.pairs)), key=lambda i: (g.advantages[i], -i))] for g in groups]


def split_validation(groups: Sequence[Group], fraction: float, seed: int) -> tuple[list[Group], list[Group]]:
    """Hold out ``fraction`` of the groups (at least one when ``fraction > 0`` and there are two)."""
    order = sorted(groups, key=lambda g: g.group_id)
    if fraction <= 0 or len(order) < 2:
        return list(order), []
    held = max(1, int(round(fraction * len(order))))
    shuffled = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed)).tolist()
    held_ids = set(shuffled[:held])
    return ([g for i, g in enumerate(order) if i not in held_ids], [g for i, g in enumerate(order) if i in held_ids])


def training_fingerprint(model_path: str, rows_path: Path, scored_path: Path, objective: str, cfg: TrainingConfig,
                         prompt_cfg: PromptConfig, seed: int) -> str:
    """What a training run's checkpoints depend on; a checkpoint of another run must not be resumed."""
    return fingerprint({
        "model": path_identity(model_path), "rows": path_identity(str(rows_path)),
        "scored": path_identity(str(scored_path)), "objective": objective, "training": dataclasses.asdict(cfg),
        "prompt": dataclasses.asdict(prompt_cfg), "seed": seed, "code": source_digest(),
    })


def run_train(model_path: str, rows_path: Path, scored_path: Path, objective: str, cfg: TrainingConfig,
          prompt_cfg: PromptConfig, seed: int, out: Path, work_dir: Path) -> dict[str, Any]:
    """Fine-tune a student on scored teacher groups with the ``sft`` or ``advdistill`` objective.

    ``work_dir`` holds the checkpoints of this run only (see :func:`training_fingerprint`).
    """
    check_replaceable(out)
    check_resume_folder(work_dir)
    scored = read_parquet(scored_path, SCORED_COLUMNS)
    if not scored["kept"].any():
        raise TrainingError(f"{scored_path}: no kept groups to train on (every group was filtered out by score)")
    rows = read_parquet(rows_path).to_dicts()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = dict(zip([r["id"] for r in rows], render_prompts(rows, tokenizer, prompt_cfg)))
    groups, truncated = build_groups(prompts, scored, tokenizer, cfg.optim.max_seq_length)
    train_groups, eval_groups = split_validation(groups, cfg.validation_fraction, seed)
    if objective == "sft":
        train_items, eval_items = best_pairs(train_groups), best_pairs(eval_groups)
    else:
        train_items, eval_items = train_groups, eval_groups
    model, saved_dtype = load_student(model_path, cfg.precision)
    trainer = build_trainer(model, tokenizer, objective, train_items, cfg, work_dir, seed, eval_items)
    if trainer.is_world_process_zero():
        claim_resume_folder(work_dir, training_fingerprint(model_path, rows_path, scored_path, objective, cfg,
                                                           prompt_cfg, seed))
    trainer.accelerator.wait_for_everyone()
    metrics = fit(trainer, work_dir)
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    metrics.update({"objective": objective, "groups": len(groups), "train_items": len(train_items),
                    "eval_items": len(eval_items), "truncated_responses": truncated,
                    "precision": resolve_precision(cfg.precision), "processes": trainer.accelerator.num_processes,
                    "fsdp": trainer.is_fsdp_enabled})
    if trainer.is_world_process_zero():
        with atomic_directory(out) as tmp:
            save_student(model, tmp, state, saved_dtype)
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(work_dir)
        write_json(metrics, out / "train_metrics.json")
        log.info("%s: trained on %d items (%d held out), %d responses truncated", objective, len(train_items),
                 len(eval_items), truncated)
    trainer.accelerator.wait_for_everyone()
    return metrics
