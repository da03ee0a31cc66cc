"""Response generation: the backends by name (:func:`get_backend`; the interface in :mod:`.base`, one module per
backend) and resumable sharded sampling (:mod:`.shards`), shared by the ``sample`` and ``evaluate`` stages."""

from __future__ import annotations

from advdistill.config import EngineConfig
from advdistill.errors import ConfigError
from advdistill.sampling.base import SamplingBackend


def get_backend(cfg: EngineConfig, model_path: str) -> SamplingBackend:
    """The backend named by ``cfg.backend``, with its engine options from ``cfg``."""
    if cfg.backend == "hf":
        from advdistill.sampling.hf import HFBackend

        return HFBackend(model_path, cfg.dtype)
    if cfg.backend == "vllm":
        from advdistill.sampling.vllm import VLLMBackend

        return VLLMBackend(model_path, cfg.dtype, tensor_parallel_size=cfg.tensor_parallel_size,
                           gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len)
    raise ConfigError(f"sampling.backend: unknown backend '{cfg.backend}' (known: hf, vllm)")
