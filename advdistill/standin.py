"""Stand-ins for the paper's hub models: tiny Qwen2 checkpoints saved the way the Qwen2.5 releases are.

A dress rehearsal of a paper configuration (``tests/test_rehearsal.py``, ``config/paper/README.md``)
maps ``Qwen/Qwen2.5-7B``, ``-3B`` and ``-1.5B`` to these folders through ``local_sources`` and runs
the whole DAG on a CPU. What the releases have and the stand-ins copy: ``Qwen2ForCausalLM`` with
bfloat16 safetensors and ``dtype: bfloat16`` in ``config.json``; untied embeddings for 7B, tied for
1.5B and 3B; a ChatML chat template that adds a default system turn; ``<|endoftext|>`` as EOS and pad
token and as EOS/BOS of the model and generation configs (base models, not the Instruct ones). What
they do not copy: size and vocabulary (a byte-level BPE trained on the rows, :mod:`advdistill.bootstrap`).
``config.json`` also names the hub id under ``advdistill_stand_in_for``, which the stage manifests record and
the report shows in a banner: a stand-in's results say nothing about the real model.

Score keeps only groups with a correct response, so a teacher stand-in is pretrained on the reference
solutions of the first training rows, which the rehearsal then samples; a row without a worked
solution (MMLU-PRO) is taught a one-sentence one that names its answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from advdistill.bootstrap import build_model, pretrain, read_solution_rows, train_tokenizer
from advdistill.config import ModelShape, OptimConfig, PromptConfig, TokenizerConfig
from advdistill.errors import ConfigError, InputError
from advdistill.io import atomic_directory, write_json
from advdistill.provenance import STAND_IN_KEY

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# ChatML as the Qwen2.5 releases render it: a default system turn unless the messages start with one.
CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
TOKENIZER = TokenizerConfig(vocab_size=1024, min_frequency=2)
# Pretraining that makes the teacher reproduce a handful of solutions at T=0.9 within seconds on a CPU.
TEACHER_OPTIM = OptimConfig(learning_rate=3e-3, weight_decay=0.0, max_steps=60, warmup_ratio=0.05,
                            lr_scheduler="constant_with_warmup", per_device_batch_size=8,
                            gradient_accumulation_steps=1, max_seq_length=1024, logging_steps=1000)


@dataclass(frozen=True)
class StandIn:
    shape: ModelShape
    tie_word_embeddings: bool


# Heads and layers shrunk, but each release's embedding tying kept (it decides which weight is the LM head).
STANDINS = {
    "Qwen/Qwen2.5-7B": StandIn(ModelShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=192,
                                          max_position_embeddings=32768), tie_word_embeddings=False),
    "Qwen/Qwen2.5-3B": StandIn(ModelShape(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=96,
                                          max_position_embeddings=32768), tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B": StandIn(ModelShape(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64,
                                            max_position_embeddings=32768), tie_word_embeddings=True),
}


def standin_tokenizer(rows: list[dict[str, Any]]) -> PreTrainedTokenizerFast:
    """The bootstrap BPE trained on ``rows``, with the Qwen2.5 base releases' special tokens and template."""
    tokenizer = train_tokenizer(rows, TOKENIZER)
    tokenizer.eos_token = END_OF_TEXT
    tokenizer.pad_token = END_OF_TEXT
    tokenizer.padding_side = "right"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def with_solutions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a worked solution; one without gets a sentence naming its answer."""
    return [{**row, "solution": row.get("solution") or f"The answer is {row['answer']}."} for row in rows]


def build_standin(like: str, tokenizer: PreTrainedTokenizerFast, pretrain_rows: list[dict[str, Any]],
                  prompt_cfg: PromptConfig, seed: int, out: Path) -> dict[str, Any]:
    """Write the stand-in for hub id ``like`` to ``out``, pretrained on ``pretrain_rows`` if there are any."""
    if like not in STANDINS:
        raise ConfigError(f"--like: no stand-in for '{like}' (known: {', '.join(STANDINS)})")
    spec = STANDINS[like]
    model = build_model(tokenizer, spec.shape, seed, tie_word_embeddings=spec.tie_word_embeddings)
    # the releases' config.json and generation_config.json: <|endoftext|> as BOS and EOS, greedy, no pad id
    model.config.bos_token_id = model.generation_config.bos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = None
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 2048
    setattr(model.config, STAND_IN_KEY, like)  # marks its results in every manifest and the report
    metrics: dict[str, Any] = {"stands_in_for": like, "examples": 0}
    if pretrain_rows:
        metrics.update(pretrain(model, tokenizer, with_solutions(pretrain_rows), TEACHER_OPTIM, prompt_cfg, seed, out))
    model.to(torch.bfloat16)
    with atomic_directory(out, "standin") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json({**metrics, "parameters": sum(p.numel() for p in model.parameters())}, tmp / "standin.json")
    log.info("stand-in for %s written to %s (%d pretraining rows)", like, out, metrics["examples"])
    return metrics


def run_standin(like: str, rows_path: Path, pretrain_rows: int, prompt_cfg: PromptConfig, seed: int,
                out: Path) -> dict[str, Any]:
    """The CLI's stand-in: tokenizer from every row of ``rows_path``, pretraining on its first ``pretrain_rows``.
    Rows without a reference solution are fine (:func:`with_solutions`), a table without rows is not."""
    rows = read_solution_rows(rows_path).to_dicts()
    if not rows:
        raise InputError(f"{rows_path}: no row to train the tokenizer on")
    return build_standin(like, standin_tokenizer(rows), rows[:pretrain_rows], prompt_cfg, seed, out)
