"""Student training on the Hugging Face ``Trainer``: the SFT baseline and the AdvDistill objective.

SFT trains on one (prompt, response) pair per example with the model's own token-mean
cross-entropy. AdvDistill puts one group (all responses of a prompt) in each micro-batch and
computes the loss from the last hidden states and the LM-head weight through
:mod:`advdistill.losses`, so the logits are never materialised when a fused backend is used.
Checkpoints are written every ``save_steps``; a killed run resumes from the newest one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from advdistill.config import OptimConfig

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (no data, a non-finite loss)."""


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
        disable_tqdm=False,
    )


class NonFiniteLossGuard(TrainerCallback):
    """Stops training when a logged loss is NaN or infinite, instead of training on garbage."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingError(f"non-finite training loss {loss} logged at step {state.global_step}")


def run_trainer(trainer: Trainer, output_dir: Path, resume: bool) -> dict[str, Any]:
    """Train (resuming from the newest checkpoint in ``output_dir`` if any) and return metrics."""
    checkpoint = get_last_checkpoint(str(output_dir)) if resume and output_dir.is_dir() else None
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics)
    metrics["resumed_from"] = checkpoint
    metrics["log_history"] = trainer.state.log_history
    return metrics


def train_sft(model: PreTrainedModel, tokenizer: Any, train_pairs: Sequence[TokenizedPair],
              optim: OptimConfig, checkpoint_dir: Path, seed: int,
              eval_pairs: Sequence[TokenizedPair] = (), save_checkpoints: bool = True) -> dict[str, Any]:
    """Causal-LM fine-tuning on (prompt, response) pairs; returns the trainer's metrics."""
    if not train_pairs:
        raise TrainingError("no training examples")
    trainer = Trainer(
        model=model,
        args=training_arguments(optim, checkpoint_dir, seed, bool(eval_pairs), save_checkpoints),
        train_dataset=ListDataset(train_pairs),
        eval_dataset=ListDataset(eval_pairs) if eval_pairs else None,
        data_collator=PairCollator(tokenizer.pad_token_id),
        callbacks=[NonFiniteLossGuard()],
    )
    return run_trainer(trainer, checkpoint_dir, resume=save_checkpoints)
