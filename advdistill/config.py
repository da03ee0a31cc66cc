"""Typed configuration sections.

Snakemake validates ``config.yaml`` against the config schema (:mod:`advdistill.schema`); each rule then
hands its own section to the CLI as JSON, which is validated against that section's part of the same schema
and parsed here into a frozen dataclass, whose ``__post_init__`` checks the rules that tie keys together.
Planning parses every section the same way, so a job never meets a config error that planning let through.
Unknown keys are an error that names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from advdistill.errors import ConfigError
from advdistill.schema import json_object, validate

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, section: str) -> T:
    """Build dataclass ``cls`` from ``data`` after validating it against its part of the config schema
    (:data:`SCHEMA_PARTS`); ``section`` names the config path in error messages."""
    if cls in SCHEMA_PARTS:
        validate(data or {}, SCHEMA_PARTS[cls], section)
    return _build(cls, data, section)


def _build(cls: type[T], data: dict[str, Any] | None, section: str) -> T:
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
        kwargs[name] = _build(nested, value, f"{section}.{name}") if nested else value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"config section '{section}': {err}") from err
    except ConfigError as err:
        if str(err).split(":", 1)[0] not in fields:
            raise
        # a __post_init__ naming keys within the dataclass (ModelShape): each gets the section's place in the config
        names = re.compile(r"\b(" + "|".join(sorted(map(re.escape, fields), key=len, reverse=True)) + r")\b")
        raise ConfigError("config " + names.sub(lambda match: f"{section}.{match.group(1)}", str(err))) from err


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_json(cls: type[T], text: str, section: str) -> T:
    return from_dict(cls, json_object(text, f"config section '{section}'"), section)


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

    def __post_init__(self):
        """Sizes that Qwen2's attention cannot split would only fail at the first forward pass. The message names the
        key within the shape: :func:`_build` puts the shape's place in the config in front."""
        heads, kv_heads = self.num_attention_heads, self.num_key_value_heads
        if self.hidden_size % heads:
            raise ConfigError(f"hidden_size: {self.hidden_size} is not a multiple of num_attention_heads {heads}")
        if (self.hidden_size // heads) % 2:
            raise ConfigError(f"hidden_size: {self.hidden_size} over num_attention_heads {heads} gives heads of odd "
                              f"width {self.hidden_size // heads}; the rotary position embedding needs an even width")
        if heads % kv_heads:
            raise ConfigError(f"num_attention_heads: {heads} is not a multiple of num_key_value_heads {kv_heads}")


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


def check_samples_differ(section: str, n_samples: int, temperature: float) -> None:
    """Several responses per prompt need a temperature above 0: greedy decoding would write them all the same."""
    if temperature == 0 and n_samples > 1:
        raise ConfigError(f"config {section}.n_samples: {n_samples} responses per prompt at {section}.temperature 0 "
                          f"(greedy decoding) would all be the same; set n_samples to 1 or a temperature above 0")


@dataclass(frozen=True)
class SamplingConfig(EngineConfig):
    """Teacher sampling (paper: 8 samples, T=0.9, top_p=1.0, 2048 new tokens)."""

    n_samples: int = 8
    temperature: float = 0.9
    top_p: float = 1.0
    jobs: int = 1
    max_prompts: int | None = None

    def __post_init__(self):
        check_samples_differ("sampling", self.n_samples, self.temperature)


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
    advantage_std: str = "population"
    min_correct: int = 1
    drop_zero_variance: bool = False

    def __post_init__(self):
        if not any(self.reward_weights.values()):
            raise ConfigError("config score.reward_weights: no reward has a non-zero weight, so every response would "
                              "score 0 and no group could be ranked; give at least one reward a weight")


@dataclass(frozen=True)
class EvaluationConfig(EngineConfig):
    """Evaluation of every model on every test set: greedy by default, or ``n_samples`` sampled responses per
    prompt (pass@1, majority and pass@k in :func:`advdistill.metrics.evaluation_metrics`)."""

    max_prompts: int | None = None
    base_few_shot: int = 3
    degeneracy_ngram: int = 4
    max_train_overlap: float = 0.05
    n_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        check_samples_differ("evaluation", self.n_samples, self.temperature)


@dataclass(frozen=True)
class LossConfig:
    """The AdvDistill loss: ``sum_i softmax(A/tau)_i CE_i + lam * sum_{i wrong} -log(1 - min(p_i, p_max))``."""

    backend: str = "auto"
    tau: float = 0.5
    lam: float = 0.5
    p_max: float = 0.999
    chunk_size: int | None = None
    ce_reduction: str = "mean"
    contrastive_scale: str = "none"
    contrastive_tokens: str = "all"
    """``all`` (the paper): ``p_i`` is the mean over every response token; ``divergent`` (an extension, not the
    paper's): over the tokens after the wrong response's longest common prefix with a correct one of its group."""

    def __post_init__(self):
        if self.contrastive_tokens not in CONTRASTIVE_TOKENS:
            raise ConfigError(f"training.loss.contrastive_tokens: expected one of {', '.join(CONTRASTIVE_TOKENS)}, "
                              f"got '{self.contrastive_tokens}'")


CONTRASTIVE_TOKENS = ("all", "divergent")
PRECISIONS = ("auto", "bf16-mixed", "fp32", "bf16-pure")


@dataclass(frozen=True)
class TrainingConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    validation_fraction: float = 0.05
    nonfinite_loss: str = "error"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    processes: int = 1
    fsdp: bool = False
    report_to: str | list[str] = "none"

    def __post_init__(self):
        if self.nonfinite_loss not in ("error", "skip"):
            raise ConfigError(f"training.nonfinite_loss: expected 'error' or 'skip', got '{self.nonfinite_loss}'")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"training.precision: expected one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if not isinstance(self.processes, int) or self.processes < 1:
            raise ConfigError(f"training.processes: expected a positive integer, got {self.processes!r}")
        if self.fsdp and self.processes < 2:
            raise ConfigError("training.fsdp shards the student across processes: set training.processes to 2 or more")


# The part of the config schema that each section's dataclass is validated against (JSON pointers).
SCHEMA_PARTS: dict[type, str] = {
    TokenizerConfig: "/properties/tokenizer",
    ModelShape: "/$defs/model_shape",
    OptimConfig: "/$defs/optim",
    BootstrapConfig: "/$defs/bootstrap_settings",
    PromptConfig: "/properties/prompt",
    EngineConfig: "/$defs/engine",
    SamplingConfig: "/properties/sampling",
    CosineConfig: "/properties/score/properties/cosine",
    ScoreConfig: "/properties/score",
    EvaluationConfig: "/properties/evaluation",
    LossConfig: "/properties/training/properties/loss",
    TrainingConfig: "/properties/training",
}

# The config section that each CLI stage takes as JSON (``--settings``, ``--prompt``), by its key in the config,
# and the dataclass it is parsed into: the CLI and the planning checks both parse through it.
STAGE_SECTIONS: dict[str, type] = {
    "tokenizer": TokenizerConfig,
    "bootstrap": BootstrapConfig,
    "prompt": PromptConfig,
    "sampling": SamplingConfig,
    "score": ScoreConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
}


def section_from_dict(section: str, data: dict[str, Any] | None, key: str | None = None) -> Any:
    """Config section ``section`` (a key of :data:`STAGE_SECTIONS`) parsed into its dataclass; ``key`` is where
    it stands in the config when that is not ``section`` itself (e.g. ``students[0].bootstrap``)."""
    return from_dict(STAGE_SECTIONS[section], data, key or section)


def section_from_json(section: str, text: str) -> Any:
    """Config section ``section`` given as JSON on the command line, parsed into its dataclass."""
    return from_json(STAGE_SECTIONS[section], text, section)

