"""Tokenised (prompt, response) pairs: the prompt masked out of the labels, the response closed like an
assistant turn, and right padding into a batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from advdistill.losses import IGNORE_INDEX
from advdistill.prompts import end_of_turn_id


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
