"""Prompts too long for vLLM's ``max_model_len``: skipped and counted, never the end of the whole call. vLLM itself
is faked (a fake ``vllm`` module, engine and tokenizer), so these run without it; tests/test_vllm_backend.py runs
the same on the real engine."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass

import pytest

from advdistill.errors import ConfigError
from advdistill.sampling.base import Completion, GenerationParams, prompts_that_fit
from advdistill.sampling.vllm import VLLMBackend, request_seed

STOP = 0


def fit_in_eight(lengths: list[int], max_new_tokens: int) -> list[int]:
    return prompts_that_fit(lengths, 8, max_new_tokens, "vLLM's max_model_len", "raise max_model_len or lower")


def test_prompts_longer_than_the_room_left_by_the_responses_are_left_out(caplog):
    with caplog.at_level(logging.WARNING, logger="advdistill.sampling.base"):
        assert fit_in_eight([3, 5, 6, 10], max_new_tokens=3) == [0, 1]
    assert "skipping 2 of 4 prompts" in caplog.text and "8 - max_new_tokens 3 = 5 tokens" in caplog.text
    assert "prompt 2 (6 tokens), 3 (10 tokens)" in caplog.text


def test_prompts_that_all_fit_are_kept_in_silence(caplog):
    with caplog.at_level(logging.WARNING, logger="advdistill.sampling.base"):
        assert fit_in_eight([5, 1, 5], max_new_tokens=3) == [0, 1, 2]
    assert not caplog.text


@pytest.mark.parametrize("max_new_tokens", [8, 9])
def test_no_room_for_any_prompt_is_a_configuration_error(max_new_tokens):
    with pytest.raises(ConfigError, match=f"max_new_tokens {max_new_tokens} leaves no room .* max_model_len 8"):
        fit_in_eight([1], max_new_tokens=max_new_tokens)


class WordTokenizer:
    """One token per word: word ``wK`` is id ``K``; id 0 is the stop token."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [int(word[1:]) for word in text.split()]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(f"w{i}" for i in ids)


@dataclass
class Output:
    token_ids: list[int]
    finish_reason: str


class FakeEngine:
    """Answers each request with ``n`` completions: the prompt's last token, then the stop token."""

    def __init__(self):
        self.calls: list[tuple[list[dict], list]] = []

    def generate(self, requests, sampling, use_tqdm=True):
        self.calls.append((requests, sampling))
        return [types.SimpleNamespace(outputs=[Output([r["prompt_token_ids"][-1], STOP], "stop")] * s.n)
                for r, s in zip(requests, sampling)]


@pytest.fixture
def backend(monkeypatch):
    """A :class:`VLLMBackend` on the fake engine, ``max_model_len`` 8."""
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=types.SimpleNamespace))
    fake = VLLMBackend.__new__(VLLMBackend)
    fake.tokenizer, fake.llm, fake.max_model_len, fake.stop_ids, fake.skipped_too_long = (
        WordTokenizer(), FakeEngine(), 8, {STOP}, 0)
    return fake


def test_a_too_long_prompt_is_skipped_and_the_rest_of_the_call_is_sampled_as_without_it(backend):
    params = GenerationParams(n=2, temperature=0.9, top_p=1.0, max_new_tokens=4)
    prompts = ["w1 w2", "w1 w2 w3 w4 w5", "w7 w8 w9 w3"]  # room for 8 - 4 = 4 prompt tokens
    groups = backend.generate(prompts, params, seed=11)
    assert groups == [[Completion("w2", 1, False)] * 2, [], [Completion("w3", 1, False)] * 2]
    assert backend.skipped_too_long == 1
    (requests, sampling), = backend.llm.calls
    assert [r["prompt_token_ids"] for r in requests] == [[1, 2], [7, 8, 9, 3]]
    assert [s.seed for s in sampling] == [request_seed(11, 0), request_seed(11, 2)]  # seeds of their positions
    assert all(s.max_tokens == 4 and s.n == 2 for s in sampling)

    assert backend.generate(prompts[1:2] * 2, params, seed=11) == [[], []]  # nothing left: no engine call
    assert len(backend.llm.calls) == 1 and backend.skipped_too_long == 3
