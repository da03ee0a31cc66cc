"""Bootstrapped models for the embedded default: a byte-level BPE tokenizer and tiny Qwen2 models.

Hub models cannot be downloaded on every machine, so the default configuration trains its own
teacher and student base inside the pipeline. They are ordinary ``Qwen2ForCausalLM`` models saved
with ``save_pretrained`` (tokenizer included), so every later stage loads them exactly as it would
load Qwen2.5-7B.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    TrainerCallback,
)

from advdistill.config import (
    BootstrapConfig,
    ModelShape,
    OptimConfig,
    PromptConfig,
    TokenizerConfig,
    TrainingConfig,
)
from advdistill.datasets.base import PROMPT_COLUMNS, ROW_SCHEMA, read_rows
from advdistill.errors import InputError, TrainingError
from advdistill.io import atomic_directory, write_json
from advdistill.paths import snapshot_folder
from advdistill.prompts import (
    INSTRUCTION,
    MULTIPLE_CHOICE_INSTRUCTION,
    build_messages,
    format_response,
    render_prompt,
)

# Qwen2's pre-tokenizer pattern: digits are split one by one, which arithmetic needs.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HAS_SOLUTION = pl.col("solution").str.strip_chars() != ""


def read_solution_rows(path: Path, purpose: str | None = None) -> pl.DataFrame:
    """The rows table at ``path`` (:func:`read_rows`) with its ``solution`` column, a null solution read as none.
    Given a ``purpose``, a table without any reference solution is an error: a tokenizer or model would learn the
    questions alone, or nothing."""
    rows = read_rows(path, {**PROMPT_COLUMNS, "solution": ROW_SCHEMA["solution"]})
    if purpose is not None and not rows.filter(HAS_SOLUTION).height:
        raise InputError(f"{path}: no row with a reference solution to {purpose}")
    return rows.with_columns(pl.col("solution").fill_null(""))


def train_tokenizer(rows: Iterable[dict[str, Any]], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """A Qwen2-style byte-level BPE trained on the questions and reference solutions of ``rows``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def corpus() -> Iterable[str]:
        yield INSTRUCTION
        yield MULTIPLE_CHOICE_INSTRUCTION
        for row in rows:
            yield row["question"]
            yield format_response(row["solution"], row["answer"])

    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    tokenizer.add_tokens(TAG_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, shape: ModelShape, seed: int,
                tie_word_embeddings: bool = True) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized for ``tokenizer``."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def run_bootstrap_tokenizer(rows_path: Path, cfg: TokenizerConfig, out: Path) -> None:
    tokenizer = train_tokenizer(read_solution_rows(rows_path, "train the tokenizer on").to_dicts(), cfg)
    with atomic_directory(out, "bootstrap-tokenizer") as tmp:
        tokenizer.save_pretrained(tmp)
    log.info("tokenizer with %d tokens written to %s", len(tokenizer), out)


def run_bootstrap_model(rows_path: Path, tokenizer_path: Path, cfg: BootstrapConfig,
                        prompt_cfg: PromptConfig, seed: int, out: Path,
                        snapshot_steps: Iterable[int] = ()) -> dict[str, Any]:
    """Build a random Qwen2 model and fine-tune it on the reference solutions of ``rows_path``.

    The weights at each of ``snapshot_steps`` are saved as a model folder of their own inside ``out``
    (``paths.snapshot_folder``): a student base that is an earlier state of the same run costs no second run.
    Bootstrapping takes minutes, so it keeps no checkpoints: the trainer's output folder is temporary.
    """
    rows = read_solution_rows(rows_path, "pretrain on").filter(HAS_SOLUTION).to_dicts()[:cfg.train_rows]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = build_model(tokenizer, cfg.shape, seed)
    snapshots = SnapshotKeeper(model, snapshot_steps)
    metrics = pretrain(model, tokenizer, rows, cfg.optim, prompt_cfg, seed, out, callbacks=[snapshots])
    missed = sorted(set(snapshots.steps) - set(snapshots.weights))
    if missed:
        raise TrainingError(f"snapshot step(s) {', '.join(map(str, missed))} not reached: the bootstrap run took "
                            f"{metrics['global_step']} steps (its optim.max_steps or epochs)")
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    metrics["snapshot_steps"] = sorted(snapshots.weights)
    with atomic_directory(out, "bootstrap-model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for step, weights in snapshots.weights.items():
            model.save_pretrained(snapshot_folder(tmp, step), state_dict=weights)
            tokenizer.save_pretrained(snapshot_folder(tmp, step))
        write_json(metrics, tmp / "bootstrap_metrics.json")
    return metrics


class SnapshotKeeper(TrainerCallback):
    """Copies of the model's weights at the given optimizer steps, kept in memory (bootstrapped models are tiny)."""

    def __init__(self, model: Qwen2ForCausalLM, steps: Iterable[int]):
        self.model, self.steps = model, frozenset(steps)
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            copies: dict[int, torch.Tensor] = {}  # by storage, so that tied weights stay one tensor in the copy
            self.weights[state.global_step] = {
                name: copies.setdefault(tensor.data_ptr(), tensor.detach().clone())
                for name, tensor in self.model.state_dict().items()}
            log.info("snapshot of the weights at step %d kept", state.global_step)


def pretrain(model: Qwen2ForCausalLM, tokenizer: Any, rows: list[dict[str, Any]], optim: OptimConfig,
             prompt_cfg: PromptConfig, seed: int, out: Path,
             callbacks: Iterable[TrainerCallback] = ()) -> dict[str, Any]:
    """Fine-tune ``model`` in place on prompt -> formatted reference solution of each row (SFT).

    The trainer's ``checkpoints`` folder is a temporary sibling of ``out``, deleted afterwards (it stays empty:
    no checkpoints are saved).
    """
    from advdistill.training.tokens import tokenize_pairs
    from advdistill.training.trainer import train_model

    pairs = tokenize_pairs(tokenizer,
                           [render_prompt(tokenizer, build_messages(row, prompt_cfg.system_prompt)) for row in rows],
                           [format_response(row["solution"], row["answer"]) for row in rows],
                           optim.max_seq_length)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.trainer-", dir=out.parent) as checkpoints:
        metrics = train_model(model, tokenizer, "sft", pairs, TrainingConfig(optim=optim), Path(checkpoints),
                              seed, save_checkpoints=False, callbacks=callbacks)
    metrics["examples"] = len(pairs)
    return metrics
