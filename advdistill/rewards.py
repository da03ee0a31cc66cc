"""Rule-based rewards: batch in, list out, looked up by name.

Every reward takes keyword lists (``completions``, ``lengths``, ``correct``), ignores keywords it
does not use and returns one float per completion. :data:`REWARD_FUNCTIONS` maps a config name to a
factory that receives that reward's own config section (or None) and returns the reward function.
The composite reward is a weighted sum (paper: ``2 * cosine + 1 * format``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from advdistill.answers import extract_boxed
from advdistill.config import CosineConfig
from advdistill.errors import ConfigError

RewardFunction = Callable[..., list[float]]

TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def is_well_formatted(response: str) -> bool:
    """``<think>…</think>`` then ``<answer>…\\boxed{…}…</answer>``, each tag exactly once, with only whitespace
    around the two blocks. Checked with counts, ``find`` and one brace scan, so it is linear in the response's
    length whatever the response (a regular expression with two lazy groups backtracks quadratically on
    unclosed tags repeated many times)."""
    if not response or any(response.count(tag) != 1 for tag in TAGS):
        return False
    body = response.strip()
    if not body.startswith("<think>") or not body.endswith("</answer>"):
        return False
    rest = body[body.find("</think>") + len("</think>"):].lstrip()
    if not rest.startswith("<answer>"):
        return False
    return extract_boxed(rest[len("<answer>"):-len("</answer>")]) is not None


def format_reward(completions: Sequence[str], **_: Any) -> list[float]:
    return [1.0 if is_well_formatted(c) else 0.0 for c in completions]


def make_cosine_reward(cfg: CosineConfig) -> RewardFunction:
    """Cosine length reward (Yeo et al. 2025): ``r_L + 0.5 (r_0 - r_L)(1 + cos(pi L / L_max))``.

    ``L`` is the response length in tokens, capped at ``L_max``. Correct answers go from
    ``correct_at_zero`` (L=0) down to ``correct_at_max``; wrong answers from ``wrong_at_zero`` down to
    ``wrong_at_max``, so long wrong answers are punished most.
    """

    def cosine(lengths: Sequence[int], correct: Sequence[bool], **_: Any) -> list[float]:
        rewards = []
        for length, is_right in zip(lengths, correct, strict=True):
            at_zero, at_max = ((cfg.correct_at_zero, cfg.correct_at_max) if is_right
                               else (cfg.wrong_at_zero, cfg.wrong_at_max))
            progress = min(length, cfg.max_length) / cfg.max_length
            rewards.append(at_max + 0.5 * (at_zero - at_max) * (1.0 + math.cos(math.pi * progress)))
        return rewards

    return cosine


def correctness_reward(correct: Sequence[bool], **_: Any) -> list[float]:
    return [1.0 if c else 0.0 for c in correct]


REWARD_FUNCTIONS: dict[str, Callable[[Any], RewardFunction]] = {
    "cosine": lambda cfg: make_cosine_reward(cfg or CosineConfig()),
    "format": lambda _cfg: format_reward,
    "correctness": lambda _cfg: correctness_reward,
}


def composite_reward(components: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> list[float]:
    """Weighted sum of reward components; every weighted name must have been computed."""
    missing = [name for name in weights if name not in components]
    if missing:
        raise ConfigError(f"score.reward_weights: {missing} not among the rewards {sorted(components)}")
    size = len(next(iter(components.values()))) if components else 0
    return [sum(weights[name] * components[name][i] for name in weights) for i in range(size)]
