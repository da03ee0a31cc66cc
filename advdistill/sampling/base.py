"""The sampling-backend interface shared by the Hugging Face and vLLM backends."""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from advdistill.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    truncated: bool


@dataclass(frozen=True)
class GenerationParams:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int

    def __post_init__(self):
        if self.temperature == 0 and self.n != 1:
            raise ConfigError("sampling: greedy decoding (temperature 0) gives identical samples: use n_samples 1")


class SamplingBackend(abc.ABC):
    """Writes ``n`` completions for each prompt; must be deterministic for a fixed ``seed``."""

    @abc.abstractmethod
    def generate(self, prompts: list[str], params: GenerationParams, seed: int) -> list[list[Completion]]:
        """``n`` completions per prompt, in prompt order; none for a prompt the backend cannot take (one that
        leaves no room for ``max_new_tokens`` in the context, :func:`prompts_that_fit`), which the caller counts."""


def prompts_that_fit(lengths: Sequence[int], context: int, max_new_tokens: int, context_name: str,
                     fix: str) -> list[int]:
    """Positions of the prompts (of ``lengths`` tokens) that leave room for ``max_new_tokens`` in ``context``
    tokens; the others are logged. A context no prompt can fit is a configuration error naming both numbers."""
    limit = context - max_new_tokens
    if limit < 1:
        raise ConfigError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in {context_name} "
                          f"{context}: {fix} max_new_tokens (sampling/evaluation)")
    fit = [i for i, length in enumerate(lengths) if length <= limit]
    if len(fit) < len(lengths):
        too_long = [f"{i} ({length} tokens)" for i, length in enumerate(lengths) if length > limit]
        log.warning("skipping %d of %d prompts of this call, longer than %s %d - max_new_tokens %d = %d tokens "
                    "(they get no samples): prompt %s", len(too_long), len(lengths), context_name, context,
                    max_new_tokens, limit, ", ".join(too_long))
    return fit
