"""Typed configuration sections.

Snakemake validates ``config.yaml`` against ``workflow/schemas/config.schema.yaml``; each rule then
hands its own section to the CLI as JSON, which is parsed here into a frozen dataclass. Unknown keys
are an error that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def from_dict(cls: type[T], data: dict[str, Any] | None, section: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``section`` names the config path in error messages."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{section}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"known: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        nested = _dataclass_type(hints[name])
        kwargs[name] = from_dict(nested, value, f"{section}.{name}") if nested else value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"config section '{section}': {err}") from err


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_json(cls: type[T], text: str, section: str) -> T:
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"config section '{section}' is not valid JSON: {err}") from err
    return from_dict(cls, data, section)


@dataclass(frozen=True)
class TokenizerConfig:
    """Byte-level BPE trained on the embedded dataset (only used when a model is bootstrapped)."""

    vocab_size: int = 512
    min_frequency: int = 2


@dataclass(frozen=True)
class ModelShape:
    """Qwen2 architecture sizes for a bootstrapped model."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 352
    max_position_embeddings: int = 512


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (Appendix B of the paper for the students)."""

    learning_rate: float = 5e-6
    weight_decay: float = 0.01
    epochs: float = 4.0
    max_steps: int = -1
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 0.5
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 16
    max_seq_length: int = 2048
    eval_steps: int = 400
    save_steps: int = 400
    bf16: str = "auto"
    logging_steps: int = 10


@dataclass(frozen=True)
class BootstrapConfig:
    """A randomly initialised Qwen2 model pretrained on reference solutions inside the pipeline."""

    train_rows: int | None = None
    shape: ModelShape = field(default_factory=ModelShape)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass(frozen=True)
class PromptConfig:
    system_prompt: str | None = None
    few_shot: int = 0


@dataclass(frozen=True)
class EngineConfig:
    """How responses are generated: backend, batching, resumable shards, and vLLM engine options."""

    backend: str = "hf"
    max_new_tokens: int = 2048
    batch_size: int = 16
    shard_size: int = 256
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None


@dataclass(frozen=True)
class SamplingConfig(EngineConfig):
    """Teacher sampling (paper: 8 samples, T=0.9, top_p=1.0, 2048 new tokens)."""

    n_samples: int = 8
    temperature: float = 0.9
    top_p: float = 1.0
    jobs: int = 1
    max_prompts: int | None = None


@dataclass(frozen=True)
class CosineConfig:
    """Cosine length reward (Yeo et al. 2025) with the Open-RS recipe's defaults."""

    correct_at_zero: float = 1.0
    correct_at_max: float = 0.5
    wrong_at_zero: float = 0.0
    wrong_at_max: float = -0.5
    max_length: int = 2048


@dataclass(frozen=True)
class ScoreConfig:
    reward_weights: dict[str, float] = field(default_factory=lambda: {"cosine": 2.0, "format": 1.0})
    cosine: CosineConfig = field(default_factory=CosineConfig)
    advantage_eps: float = 1e-4
    min_correct: int = 1
    drop_zero_variance: bool = False


@dataclass(frozen=True)
class EvaluationConfig(EngineConfig):
    """Greedy evaluation of every model on every test set."""

    base_few_shot: int = 3
    degeneracy_ngram: int = 4


@dataclass(frozen=True)
class LossConfig:
    """The AdvDistill loss: ``sum_i softmax(A/tau)_i CE_i + lam * sum_{i wrong} -log(1 - min(p_i, p_max))``."""

    backend: str = "auto"
    tau: float = 0.5
    lam: float = 0.5
    p_max: float = 0.999
    chunk_size: int | None = None


@dataclass(frozen=True)
class TrainingConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    validation_fraction: float = 0.05
    nonfinite_loss: str = "error"

    def __post_init__(self):
        if self.nonfinite_loss not in ("error", "skip"):
            raise ConfigError(f"training.nonfinite_loss: expected 'error' or 'skip', got '{self.nonfinite_loss}'")
