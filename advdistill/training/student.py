"""The student: loaded in its training precision, wrapped with its fused loss as one module (so that DDP and
FSDP run the whole step), and saved as ``save_pretrained`` writes it, in the dtype its checkpoint came in."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from advdistill.config import LossConfig
from advdistill.devices import cpu_training_precision
from advdistill.losses import IGNORE_INDEX, group_loss, group_loss_terms, sft_loss

log = logging.getLogger(__name__)


def resolve_precision(setting: str, hidden_size: int) -> str:
    """``auto`` is ``bf16-mixed`` on a bf16-capable GPU, ``fp32`` on other GPUs, and on a CPU what
    :func:`~advdistill.devices.cpu_training_precision` says for a student ``hidden_size`` wide."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp32"
    return cpu_training_precision(hidden_size)



def load_student(path: str, precision: str) -> tuple[PreTrainedModel, torch.dtype]:
    """The student in its training dtype for ``precision``, and the dtype its checkpoint was saved in (the one to save
    it in).

    Hub checkpoints are bf16, and ``from_pretrained`` keeps that dtype, so without an explicit fp32 load
    AdamW would update bf16 weights: at lr 5e-6 most updates round away. Only ``bf16-pure`` trains that way.
    """
    config = AutoConfig.from_pretrained(path)
    saved_dtype = config.dtype or torch.float32
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype)
    precision = resolve_precision(precision, config.hidden_size)
    if precision == "bf16-pure":
        log.warning("training.precision bf16-pure: weights and AdamW state stay in bf16, so small updates round "
                    "away (use bf16-mixed unless memory forces this)")
    train_dtype = torch.bfloat16 if precision == "bf16-pure" else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=train_dtype), saved_dtype


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
                group_index: torch.Tensor | None = None, contrastive_mask: torch.Tensor | None = None,
                num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """SFT: the token-mean cross-entropy of the batch (scaled by ``num_items_in_batch``, see below).
        AdvDistill: the mean loss of the micro-batch's groups (``group_index``: the group of each row; None: one
        group; ``contrastive_mask`` with ``contrastive_tokens: divergent``);
        :class:`~advdistill.training.trainer.FusedLossTrainer` scales it to the accumulated batch."""
        hidden = self.student.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weight = self.student.get_output_embeddings().weight
        if self.objective == "advdistill":
            if self.record_terms:
                self.recorded_terms.append(group_loss_terms(hidden, weight, labels, advantages, correct,
                                                            self.loss_cfg, group_index, contrastive_mask))
            return group_loss(hidden, weight, labels, advantages, correct, self.loss_cfg, group_index,
                              contrastive_mask)
        loss = sft_loss(hidden, weight, labels, self.loss_cfg)
        if num_items_in_batch is None:
            return loss
        # A batch whose responses were all truncated away has no label tokens: its loss is 0, not 0/0.
        total = torch.as_tensor(num_items_in_batch, device=loss.device).clamp(min=1)
        return loss * (labels[:, 1:] != IGNORE_INDEX).sum() / total


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
