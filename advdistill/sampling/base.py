"""The sampling-backend interface shared by the Hugging Face and vLLM backends."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from advdistill.errors import ConfigError


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
        """``n`` completions per prompt, in prompt order; none for a prompt the backend cannot take (vLLM: one
        too long for ``max_model_len``), which the caller logs and counts."""
