"""Training on the Hugging Face ``Trainer``: the SFT baseline and the AdvDistill objective.

SFT trains on (prompt, response) pairs with token-mean cross-entropy; AdvDistill puts one group (all
responses of a prompt) in each micro-batch. Both losses come from the last hidden states and the
LM-head weight through :mod:`advdistill.losses`, so a fused backend never materialises the logits.
Checkpoints are written every ``save_steps``; a killed run resumes from the newest one. The checkpoint
folder is stamped with a fingerprint of the run (student, data, settings, seed, code), so a rerun
after any of them changed starts from the student base, and it is deleted once the model is saved.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch.utils.data import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from advdistill.config import LossConfig, OptimConfig, PromptConfig, TrainingConfig
from advdistill.errors import TrainingError
from advdistill.io import atomic_directory, claim_resume_folder, write_json
from advdistill.losses import group_loss, sft_loss
from advdistill.prompts import render_prompts
from advdistill.provenance import fingerprint, path_identity, source_digest

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


@dataclass
class TokenizedPair:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def tokenize_pair(tokenizer: Any, prompt: str, response: str, max_length: int) -> TokenizedPair:
    """Prompt and response token ids, prompt tokens masked in ``labels``, EOS closing the response.

    Sequences longer than ``max_length`` lose the end of the response (flagged ``truncated``).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
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


def use_bf16(setting: str | bool) -> bool:
    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(setting)


def training_arguments(optim: OptimConfig, output_dir: Path, seed: int, has_eval: bool,
                       save_checkpoints: bool) -> TrainingArguments:
    return TrainingArguments(
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
        bf16=use_bf16(optim.bf16),
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


class FusedLossTrainer(Trainer):
    """``Trainer`` whose loss comes from hidden states and the LM-head weight (:mod:`advdistill.losses`).

    The model's decoder runs without its LM head, so no logits are computed here. ``objective`` is
    ``sft`` (token-mean cross-entropy over the batch) or ``advdistill`` (one group per micro-batch).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, objective: str, loss_cfg: LossConfig, nonfinite_loss: str = "error", **kwargs):
        super().__init__(*args, **kwargs)
        if objective not in ("sft", "advdistill"):
            raise ValueError(f"unknown training objective '{objective}' (known: sft, advdistill)")
        self.objective = objective
        self.loss_cfg = loss_cfg
        self.nonfinite_loss = nonfinite_loss
        self.skipped_nonfinite: list[dict[str, Any]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        hidden = decoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        weight = model.get_output_embeddings().weight
        if self.objective == "sft":
            loss = sft_loss(hidden, weight, inputs["labels"], self.loss_cfg)
        else:
            loss = group_loss(hidden, weight, inputs["labels"], inputs["advantages"], inputs["correct"], self.loss_cfg)
        if not torch.isfinite(loss):
            where = f"step {self.state.global_step}, group {inputs.get('group_id', 'n/a')}"
            if self.nonfinite_loss == "error":
                raise TrainingError(f"non-finite loss {loss.item()} at {where}")
            log.warning("skipping non-finite loss %s at %s", loss.item(), where)
            self.skipped_nonfinite.append({"step": self.state.global_step, "group": inputs.get("group_id")})
            loss = hidden.sum() * 0.0
        return (loss, {}) if return_outputs else loss


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


def train_model(model: PreTrainedModel, tokenizer: Any, objective: str, train_items: Sequence[Any],
                cfg: TrainingConfig, checkpoint_dir: Path, seed: int, eval_items: Sequence[Any] = (),
                save_checkpoints: bool = True) -> dict[str, Any]:
    """Train on pairs (``sft``) or groups (``advdistill``); returns the trainer's metrics."""
    if not train_items:
        raise TrainingError("no training examples")
    optim = cfg.optim
    if objective == "advdistill" and optim.per_device_batch_size != 1:
        optim = dataclasses.replace(optim, per_device_batch_size=1)
    collator = (PairCollator if objective == "sft" else GroupCollator)(tokenizer.pad_token_id)
    trainer = FusedLossTrainer(
        model=model,
        args=training_arguments(optim, checkpoint_dir, seed, bool(eval_items), save_checkpoints),
        train_dataset=ListDataset(train_items),
        eval_dataset=ListDataset(eval_items) if eval_items else None,
        data_collator=collator,
        objective=objective,
        loss_cfg=cfg.loss,
        nonfinite_loss=cfg.nonfinite_loss,
    )
    checkpoint = get_last_checkpoint(str(checkpoint_dir)) if save_checkpoints and checkpoint_dir.is_dir() else None
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    return {**result.metrics, "resumed_from": checkpoint, "skipped_nonfinite": trainer.skipped_nonfinite,
            "log_history": trainer.state.log_history}


def build_groups(prompts: dict[str, str], scored: Any, tokenizer: Any, max_length: int) -> tuple[list[Group], int]:
    """Kept groups of a scored table (polars) as :class:`Group`; also returns the truncated-response count."""
    groups, truncated = [], 0
    kept = scored.filter(scored["kept"]).sort("prompt_id", "sample_idx")
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
    scored = pl.read_parquet(scored_path)
    if not scored["kept"].any():
        raise TrainingError(f"{scored_path}: no kept groups to train on (every group was filtered out by score)")
    rows = pl.read_parquet(rows_path).to_dicts()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = dict(zip([r["id"] for r in rows], render_prompts(rows, tokenizer, prompt_cfg)))
    groups, truncated = build_groups(prompts, scored, tokenizer, cfg.optim.max_seq_length)
    train_groups, eval_groups = split_validation(groups, cfg.validation_fraction, seed)
    if objective == "sft":
        train_items, eval_items = best_pairs(train_groups), best_pairs(eval_groups)
    else:
        train_items, eval_items = train_groups, eval_groups
    model = AutoModelForCausalLM.from_pretrained(model_path)
    claim_resume_folder(work_dir, training_fingerprint(model_path, rows_path, scored_path, objective, cfg,
                                                       prompt_cfg, seed))
    metrics = train_model(model, tokenizer, objective, train_items, cfg, work_dir, seed, eval_items)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(work_dir)
    metrics.update({"objective": objective, "groups": len(groups), "train_items": len(train_items),
                    "eval_items": len(eval_items), "truncated_responses": truncated})
    write_json(metrics, out / "train_metrics.json")
    log.info("%s: trained on %d items (%d held out), %d responses truncated", objective, len(train_items),
             len(eval_items), truncated)
    return metrics
