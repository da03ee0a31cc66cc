"""Sampling with Hugging Face ``generate`` (batched, left padding, seeded).

A prompt that leaves no room for ``max_new_tokens`` in the model's context (``max_position_embeddings``) is
skipped and counted, as in the vLLM backend: ``generate`` would run past the positions the model was built for
without a word."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from advdistill.prompts import end_of_turn_id
from advdistill.sampling.base import Completion, GenerationParams, SamplingBackend, prompts_that_fit


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model_and_tokenizer(model_path: str, dtype: str = "auto") -> tuple[Any, Any, str]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=resolve_dtype(dtype, device))
    return model.to(device).eval(), tokenizer, device


def stop_token_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a response: the generation config's EOS ids, the tokenizer's, and the chat
    template's end of turn (a base model's EOS is not what closes a ChatML answer)."""
    configured = generation_config.eos_token_id if generation_config is not None else None
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    ids.add(tokenizer.eos_token_id)
    turn_end = end_of_turn_id(tokenizer)
    if turn_end is not None:
        ids.add(turn_end)
    return ids


class HFBackend(SamplingBackend):
    def __init__(self, model_path: str, dtype: str = "auto"):
        self.model, self.tokenizer, self.device = load_model_and_tokenizer(model_path, dtype)
        self.stop_ids = stop_token_ids(self.model.generation_config, self.tokenizer)
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.skipped_too_long = 0

    def generate(self, prompts: list[str], params: GenerationParams, seed: int) -> list[list[Completion]]:
        """``n`` completions per prompt; none for a prompt too long for the model's context (see the module)."""
        token_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        fit = list(range(len(prompts)))
        if self.context is not None:
            fit = prompts_that_fit([len(ids) for ids in token_ids], self.context, params.max_new_tokens,
                                   "the model's context (max_position_embeddings)", "lower")
        self.skipped_too_long += len(prompts) - len(fit)
        groups: list[list[Completion]] = [[] for _ in prompts]
        if fit:
            for i, completions in zip(fit, self._generate([token_ids[i] for i in fit], params, seed)):
                groups[i] = completions
        return groups

    def _generate(self, token_ids: list[list[int]], params: GenerationParams,
                  seed: int) -> list[list[Completion]]:
        """``n`` completions for each prompt of ``token_ids`` (left-padded into one batch)."""
        encoded = self.tokenizer.pad({"input_ids": token_ids}, padding=True, return_tensors="pt").to(self.device)
        sampling = params.temperature > 0
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(
                **encoded,
                do_sample=sampling,
                temperature=params.temperature if sampling else None,
                top_p=params.top_p if sampling else None,
                top_k=0 if sampling else None,
                num_return_sequences=params.n,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=sorted(self.stop_ids),
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1]:].tolist()
        completions = [self._completion(ids, params.max_new_tokens) for ids in new_tokens]
        return [completions[i * params.n:(i + 1) * params.n] for i in range(len(token_ids))]

    def _completion(self, ids: list[int], max_new_tokens: int) -> Completion:
        end = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
        kept = ids if end is None else ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text=text, n_tokens=len(kept), truncated=end is None and len(ids) >= max_new_tokens)
