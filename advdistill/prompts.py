"""Prompt templates: the think/answer/boxed instruction, multiple-choice option lists, few-shot turns.

Prompts are chat messages rendered with the tokenizer's own chat template, so a bootstrapped model
and a hub model go through the same code. Few-shot examples (for base models, as in the paper) are
earlier user/assistant turns drawn from the training split, never from the test split.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from typing import Any

from advdistill.config import PromptConfig
from advdistill.errors import ConfigError

INSTRUCTION = (
    "Think step by step inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags as \\boxed{answer}."
)
MULTIPLE_CHOICE_INSTRUCTION = (
    "Think step by step inside <think> </think> tags, then give the letter of the correct option "
    "inside <answer> </answer> tags as \\boxed{letter}."
)


def option_letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


def user_message(row: Mapping[str, Any]) -> str:
    """The question, its options as lettered lines for multiple choice, and the format instruction."""
    if row["kind"] == "multiple_choice":
        options = "\n".join(f"{letter}. {text}"
                            for letter, text in zip(option_letters(len(row["choices"])), row["choices"]))
        return f"{row['question']}\n{options}\n{MULTIPLE_CHOICE_INSTRUCTION}"
    return f"{row['question']}\n{INSTRUCTION}"


def format_response(reasoning: str, answer: str) -> str:
    """A response in the target format (used for reference solutions and few-shot turns)."""
    return f"<think>{reasoning}</think>\n<answer>\\boxed{{{answer}}}</answer>"


def build_messages(row: Mapping[str, Any], system_prompt: str | None = None,
                   few_shot: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for example in few_shot:
        messages.append({"role": "user", "content": user_message(example)})
        messages.append({"role": "assistant",
                         "content": format_response(example["solution"], example["answer"])})
    messages.append({"role": "user", "content": user_message(row)})
    return messages


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template closes an assistant turn with (``<|im_end|>`` in ChatML), if any.

    A base model prompted through the template ends its answer there, not at its EOS (Qwen2.5 base
    releases: ``<|endoftext|>``): sampling must stop at it and training must teach it.
    """
    marker = "\x00response\x00"
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    rendered = tokenizer.apply_chat_template(turns, tokenize=False)
    tail = rendered.split(marker, 1)[1] if marker in rendered else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return ids[0] if ids and ids[0] in special else None


def choose_few_shot(train_rows: Sequence[Mapping[str, Any]], k: int, seed: int) -> list[Mapping[str, Any]]:
    """``k`` training rows with a reference solution, the same for every test question."""
    if k <= 0:
        return []
    candidates = sorted((r for r in train_rows if r.get("solution")), key=lambda r: r["id"])
    if len(candidates) < k:
        raise ConfigError(f"prompt.few_shot: need {k} training rows with solutions, found {len(candidates)}")
    return random.Random(seed).sample(candidates, k)


def render_prompts(rows: list[dict[str, Any]], tokenizer: Any, prompt_cfg: PromptConfig,
                few_shot_rows: list[dict[str, Any]] | None = None, seed: int = 0) -> list[str]:
    """Rendered prompts of ``rows``; few-shot turns (``prompt_cfg.few_shot``) come from ``few_shot_rows``."""
    shots = choose_few_shot(few_shot_rows or [], prompt_cfg.few_shot, seed)
    return [render_prompt(tokenizer, build_messages(r, prompt_cfg.system_prompt, shots))
            for r in rows]
