"""Per-GPU memory plan of a run, estimated at planning time from each model's architecture.

Snakemake imports this module while it plans the DAG (``workflow/rules/common.smk``), so it uses the
standard library, :mod:`advdistill.config` and, for hub ids only, ``huggingface_hub``'s cache lookup: no
torch, no transformers. For every GPU stage it estimates the peak memory of one GPU in GiB:

- ``sample``/``evaluate``: weights in the engine's dtype plus the KV cache, split over
  ``tensor_parallel_size``. vLLM reserves ``gpu_memory_utilization`` of the card up front and fills
  what the weights and its workspace leave with KV cache; the plan says how many sequences of
  ``max_model_len`` tokens fit at once, and the stage does not fit when not even one does.
- ``train``: weights, gradients and AdamW state by ``training.precision`` (sharded by
  ``training.processes`` under FSDP), the activations of one micro-batch (with or without gradient
  checkpointing, see :func:`layer_activation_bytes`), the fused loss's buffers and a fixed CUDA overhead.

Shapes come from the model's ``config.json`` (a local folder or the Hugging Face cache), from the
pipeline's own bootstrap settings, or from a built-in table of the Qwen2.5 family; a model with none
of these is planned as unknown rather than guessed. The estimates are deliberately simple sums, good to
a few GiB: ``scripts/check_memory_plan.py`` compares the training estimate with a measured peak.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from advdistill.config import (
    EngineConfig,
    EvaluationConfig,
    ModelShape,
    SamplingConfig,
    TokenizerConfig,
    TrainingConfig,
    from_dict,
)
from advdistill.devices import cpu_training_precision
from advdistill.errors import ConfigError, MemoryPlanError
from advdistill.model_folders import model_folder_problem
from advdistill.paths import looks_local
from advdistill.planning import building_run, trained_runs, variant_training, without_dataset

GIB = 1024**3

CUDA_OVERHEAD_GIB = 1.5
"""Per GPU and process, on top of the tensors: the CUDA context with its loaded kernels (0.5-1 GiB with
lazy module loading), cuBLAS workspaces and the caching allocator's fragmentation."""

ASSUMED_PROMPT_TOKENS = 1024
"""Prompt length assumed where the configuration does not bound it (HF generate, vLLM without
``max_model_len``): a GSM8K question with three few-shot turns, with room to spare."""

VLLM_MIN_BATCHED_TOKENS = 2048
"""On vLLM's CPU build (chunked prefill off, advdistill.sampling.vllm) the scheduler budget is
``max(max_model_len, 2048)`` tokens per step; its profiling forward at that size sets the activation workspace
it keeps out of the KV cache."""

VLLM_MAX_NUM_SEQS = 256
"""vLLM's default bound on sequences per step without chunked prefill: the sampler holds their logits."""

VLLM_GPU_BATCHED_TOKENS, VLLM_GPU_MAX_NUM_SEQS = 16384, 1024
"""On a GPU vLLM keeps chunked prefill, and its offline (``LLM``) defaults are a budget of 16,384 tokens and
1,024 sequences per step on H100/H200-class cards (8,192 and 256 on A100 and smaller: the plan takes the larger,
an upper bound); the profiling run at that size sets the workspace, whatever ``max_model_len`` is."""

LOSS_CHUNK_ELEMENTS = {"triton": 256 * 1024**2, "torch": 8 * 1024**2}
"""Default logits (``dlogits``) alive at once in the triton and torch fused loss (``kernels/README.md``)."""

CPP_LOGITS_BUDGET, CPP_MIN_TILE_TOKENS = 8 * 1024**2, 256
"""The cpp backend's default tile (advdistill_kernels.backends.cpp): as many tokens as 8M fp32 logits hold, at
least 256 (and at least the longest response with a contrastive term); ``chunk_size`` sets the tokens."""

DENSE_DECODERS = ("qwen2", "llama", "mistral")
"""``config.json`` model types whose layer is the one counted here: GQA attention, SwiGLU MLP, RMSNorm."""


@dataclass(frozen=True)
class Architecture:
    """The sizes of a dense decoder that determine its memory (names as in ``config.json``)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int
    qkv_bias: bool = True
    max_position_embeddings: int | None = None

    @property
    def layer_parameters(self) -> int:
        d, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        attention = d * q + 2 * d * kv + q * d + ((q + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * d * self.intermediate_size + 2 * d

    @property
    def embedding_parameters(self) -> int:
        """Input embedding plus the LM head when it is not tied to it."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def parameters(self) -> int:
        return self.num_hidden_layers * self.layer_parameters + self.embedding_parameters + self.hidden_size


def _qwen25(d: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int, tied: bool,
            context: int) -> Architecture:
    return Architecture(d, layers, heads, kv_heads, intermediate, vocab, tied, d // heads, True, context)


QWEN25 = {
    "Qwen/Qwen2.5-0.5B": _qwen25(896, 24, 14, 2, 4864, 151936, True, 32768),
    "Qwen/Qwen2.5-1.5B": _qwen25(1536, 28, 12, 2, 8960, 151936, True, 131072),
    "Qwen/Qwen2.5-3B": _qwen25(2048, 36, 16, 2, 11008, 151936, True, 32768),
    "Qwen/Qwen2.5-7B": _qwen25(3584, 28, 28, 4, 18944, 152064, False, 131072),
    "Qwen/Qwen2.5-14B": _qwen25(5120, 48, 40, 8, 13824, 152064, False, 131072),
    "Qwen/Qwen2.5-32B": _qwen25(5120, 64, 40, 8, 27648, 152064, False, 131072),
    "Qwen/Qwen2.5-72B": _qwen25(8192, 80, 64, 8, 29568, 152064, False, 131072),
}
"""Architecture of the Qwen2.5 base models (their ``config.json``); the ``-Instruct`` models share it."""


def architecture_from_config(config: dict[str, Any]) -> Architecture:
    """The :class:`Architecture` of a ``config.json``; ValueError for a model type not counted here."""
    model_type = config.get("model_type")
    if model_type not in DENSE_DECODERS:
        raise ValueError(f"model_type '{model_type}' is not a dense decoder the plan counts "
                         f"({', '.join(DENSE_DECODERS)})")
    heads = config["num_attention_heads"]
    return Architecture(
        hidden_size=config["hidden_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        intermediate_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        qkv_bias=bool(config.get("attention_bias", model_type == "qwen2")),
        max_position_embeddings=config.get("max_position_embeddings"),
    )


def _cached_config(repo_id: str) -> str | None:
    """Path of ``config.json`` of a hub model in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache  # lazy: about 0.1 s, and only for hub ids

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return found if isinstance(found, str) else None


def find_architecture(source: str) -> tuple[Architecture | None, str]:
    """The architecture of a model folder or hub id and where it came from, or None and why it is unknown: a
    local folder that is broken (:func:`~advdistill.model_folders.model_folder_problem`) or missing is named as
    such, not looked up as a hub id."""
    folder_config = Path(source) / "config.json"
    config_path = str(folder_config) if folder_config.is_file() else None
    origin = f"config.json in {source}"
    if config_path is None and (Path(source).exists() or looks_local(source)):
        return None, f"model folder {source} {model_folder_problem(Path(source))}"
    if config_path is None:
        config_path, origin = _cached_config(source), "config.json in the Hugging Face cache"
    if config_path is not None:
        try:
            return architecture_from_config(json.loads(Path(config_path).read_text())), origin
        except (ValueError, KeyError) as err:
            return None, f"{config_path}: {err}"
    table_name = source.removesuffix("-Instruct")
    if table_name in QWEN25:
        return QWEN25[table_name], "built-in Qwen2.5 table"
    return None, f"no config.json for '{source}' (not a local folder, not in the Hugging Face cache)"


def bootstrap_architecture(bootstrap: dict[str, Any], tokenizer: dict[str, Any]) -> Architecture:
    """A model the pipeline builds itself (``advdistill.bootstrap.build_model``): tied Qwen2 of the given shape.

    ``tokenizer`` is the config's ``tokenizer`` section as written, with the ``dataset`` its rule reads (the
    dataclass holds only what the tokenizer stage takes, see :func:`advdistill.planning.without_dataset`)."""
    shape = from_dict(ModelShape, bootstrap.get("shape"), "bootstrap.shape")
    vocab_size = from_dict(TokenizerConfig, without_dataset(tokenizer), "tokenizer").vocab_size
    return Architecture(shape.hidden_size, shape.num_hidden_layers, shape.num_attention_heads,
                        shape.num_key_value_heads, shape.intermediate_size, vocab_size, True,
                        shape.hidden_size // shape.num_attention_heads, True, shape.max_position_embeddings)


@dataclass
class Estimate:
    """Peak memory of one GPU of one stage and model; ``gib`` is None when the shape is unknown.

    ``budget_gib`` is what ``gib`` must stay within (the card, or vLLM's reserved share of it) and
    ``fits`` the comparison; both are None without ``resources.gpu_mem_gb``.
    """

    stage: str
    model: str
    gpus: int
    origin: str
    gib: float | None = None
    parts: dict[str, float] = field(default_factory=dict)
    budget_gib: float | None = None
    fits: bool | None = None
    note: str = ""
    fix: str = ""


def _gib(parts: dict[str, float]) -> dict[str, float]:
    return {name: round(value / GIB, 2) for name, value in parts.items()}


def _dtype_bytes(dtype: str, gpu_rules: bool) -> int:
    """``auto`` is bf16/fp16 on a GPU (vLLM and the HF backend both pick a 16-bit type there), fp32 on a CPU."""
    if dtype == "auto":
        return 2 if gpu_rules else 4
    return 4 if dtype == "float32" else 2


def _forward_workspace(arch: Architecture, tokens: int, tp: int, element_bytes: int) -> float:
    """Largest transient tensors of one layer's forward over ``tokens``: gate and up projections, q/k/v,
    residual and normalised input."""
    d, hd = arch.hidden_size, arch.head_dim
    split = 2 * arch.intermediate_size + (arch.num_attention_heads + 2 * arch.num_key_value_heads) * hd
    return tokens * (split / tp + 2 * d) * element_bytes


def inference_estimate(stage: str, model: str, arch: Architecture, origin: str, engine: EngineConfig,
                       sequences: int, gpu_rules: bool, gpu_mem_gb: float | None) -> Estimate:
    """One ``sample``/``evaluate`` job: ``sequences`` = sequences generated per call (prompts x n).

    HF ``generate`` allocates the KV cache of every sequence of the call (prompt + new tokens) and runs the
    prefill of all of them at once; vLLM allocates what its reservation leaves, so its ``gib`` is the least
    it can run with (one sequence of ``max_model_len``) and the note tells how many fit at once.
    """
    vllm = engine.backend == "vllm"
    tp = engine.tensor_parallel_size if vllm else 1
    element = _dtype_bytes(engine.dtype, gpu_rules)
    kv_heads = max(1, arch.num_key_value_heads // tp)  # vLLM replicates KV heads when tp exceeds them
    kv_per_token = 2 * arch.num_hidden_layers * kv_heads * arch.head_dim * element
    if vllm:
        seq_len = engine.max_model_len or arch.max_position_embeddings or ASSUMED_PROMPT_TOKENS + engine.max_new_tokens
        if gpu_rules:
            prefill_tokens, sampler_sequences = VLLM_GPU_BATCHED_TOKENS, min(sequences, VLLM_GPU_MAX_NUM_SEQS)
        else:
            prefill_tokens = max(seq_len, VLLM_MIN_BATCHED_TOKENS)
            sampler_sequences = min(sequences, VLLM_MAX_NUM_SEQS)
    else:
        seq_len = ASSUMED_PROMPT_TOKENS + engine.max_new_tokens
        prefill_tokens, sampler_sequences = sequences * ASSUMED_PROMPT_TOKENS, sequences
    parts = {
        "weights": arch.parameters * element / tp,
        "kv_cache": kv_per_token * seq_len * (1 if vllm else sequences),
        # fp32 logits of one decoding step and their probabilities
        "workspace": _forward_workspace(arch, prefill_tokens, tp, element) + sampler_sequences * arch.vocab_size * 8,
        "cuda_overhead": CUDA_OVERHEAD_GIB * GIB,
    }
    section = "sampling" if stage == "sample" else "evaluation"
    estimate = Estimate(stage, model, tp if gpu_rules else 0, origin, round(sum(parts.values()) / GIB, 2), _gib(parts))
    if vllm:
        whole_call = (sum(parts.values()) + parts["kv_cache"] * (sequences - 1)) / GIB
        estimate.note = (f"vLLM, {sequences} sequences of <= {seq_len} tokens per call "
                         f"({whole_call:.0f} GiB all at once)")
        estimate.fix = (f"raise {section}.tensor_parallel_size (GPUs per job) or {section}.gpu_memory_utilization, "
                        f"or lower {section}.max_model_len")
    else:
        estimate.note = (f"HF generate, {sequences} sequences of {ASSUMED_PROMPT_TOKENS} + "
                         f"{engine.max_new_tokens} tokens")
        estimate.fix = (f"lower {section}.batch_size, or use {section}.backend: vllm "
                        f"(with {section}.tensor_parallel_size for large models)")
    if gpu_mem_gb is not None:
        estimate.budget_gib = round(gpu_mem_gb * (engine.gpu_memory_utilization if vllm else 1.0), 2)
        estimate.fits = estimate.gib <= estimate.budget_gib
        if vllm:
            kv_budget = estimate.budget_gib * GIB - (sum(parts.values()) - parts["kv_cache"])
            fitting = max(0, math.floor(kv_budget / parts["kv_cache"]))
            estimate.note += (f"; {engine.gpu_memory_utilization:g} x {gpu_mem_gb:g} GiB leaves "
                              f"{max(kv_budget, 0) / GIB:.1f} GiB of KV cache: {fitting} at once")
    return estimate


def layer_activation_bytes(arch: Architecture, precision: str) -> int:
    """Bytes one decoder layer keeps for backward, per token, when nothing is recomputed.

    Counted as in Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models", §4.1: every tensor an op saves for its backward), for the Hugging Face Qwen2/Llama layer:
    pre-norm GQA attention through SDPA/flash (no ``s^2`` score or dropout terms, attention dropout is
    0) and a SwiGLU MLP. With ``d`` hidden, ``q = heads x head_dim``, ``I`` intermediate size, ``a``
    the activation bytes (2 under bf16, 4 in fp32):

    - two RMSNorms, each its fp32 input (the upcast residual stream) and its normalised output
      (``d`` in the residual dtype): ``2 (4 + r) d`` with ``r`` = 2 for bf16-pure, else 4;
    - inputs of the q/k/v and the gate/up projections: ``2 d a``;
    - attention: q, k and v (k and v repeated to all heads, as HF's SDPA path does under a padding
      mask) and the output, which o_proj reads in place: ``4 q a``;
    - MLP: gate (SiLU input), SiLU output, up (both saved by the product) and the product (down_proj
      input): ``4 I a``.

    Korthikanti's ``34 s b h`` for a GPT layer (with ``a = 2``, dropout masks and a 4h MLP) is the same
    count for a different layer. The fp32 count matches, tensor by tensor, what
    ``torch.autograd.graph.saved_tensors_hooks`` sees in transformers' Qwen2 layer on CPU.
    """
    d, q, inter = arch.hidden_size, arch.num_attention_heads * arch.head_dim, arch.intermediate_size
    act = 4 if precision == "fp32" else 2
    norm_out = 2 if precision == "bf16-pure" else 4
    return 2 * (4 + norm_out) * d + act * (2 * d + 4 * q + 4 * inter)


def _loss_chunk_bytes(training: TrainingConfig, arch: Architecture, tokens: int, compute: int,
                      gpu_rules: bool) -> int:
    """The fused loss's chunk of logits: ``dlogits`` in the compute dtype (triton), one fp32 tile of tokens (cpp),
    or fp32 logits, probabilities and ``dlogits`` (torch); ``auto`` is triton on a GPU, cpp on a CPU."""
    backend = training.loss.backend if training.loss.backend != "auto" else ("triton" if gpu_rules else "cpp")
    chunk_size = training.loss.chunk_size
    if backend == "cpp":
        tile_tokens = chunk_size or max(CPP_MIN_TILE_TOKENS, CPP_LOGITS_BUDGET // arch.vocab_size)
        return min(tile_tokens, tokens) * arch.vocab_size * 4
    elements = min(chunk_size * arch.vocab_size if chunk_size else LOSS_CHUNK_ELEMENTS[backend],
                   tokens * arch.vocab_size)
    return elements * (compute if backend == "triton" else 12)


def _resolved_precision(precision: str, gpu_rules: bool, hidden_size: int) -> str:
    """``auto`` as the trainer resolves it, assuming a GPU run's cards support bf16 and a CPU run's CPU is this one."""
    if precision == "auto":
        return "bf16-mixed" if gpu_rules else cpu_training_precision(hidden_size)
    return precision


def training_estimate(model: str, objective: str, arch: Architecture, origin: str, training: TrainingConfig,
                      n_samples: int, gpu_rules: bool, gpu_mem_gb: float | None) -> Estimate:
    """One ``train`` job, per GPU: model states, one micro-batch's activations and the fused loss.

    Bytes per parameter: fp32 = 4 weights + 4 gradients + 8 AdamW moments; bf16-mixed = the same fp32
    states plus the bf16 copies autocast makes of the decoder weights (kept for backward); bf16-pure =
    2 + 2 + 4. FSDP divides the states by ``processes`` and adds the gathered 16-bit working copy (and
    its gradient) of the embeddings/LM head and of two decoder layers (one prefetched); DDP with more
    than one process adds its gradient buckets (a copy of the gradients). A micro-batch is
    ``per_device_batch_size`` prompts: that many groups of ``n_samples`` sequences (AdvDistill, all in one fused
    loss call) or that many sequences (SFT), all counted at ``max_seq_length`` tokens. The fused loss holds the
    flattened hidden states, their compute-dtype copy and gradient, the LM head's fp32 gradient (plus 16-bit
    copies of it and, under autocast, of the head) and one chunk of logits. The optimizer step needs one
    parameter-sized temporary, but no activations.
    """
    precision = _resolved_precision(training.precision, gpu_rules, arch.hidden_size)
    processes, fsdp = training.processes, training.fsdp
    shards = processes if fsdp else 1
    n_params, head = arch.parameters, arch.vocab_size * arch.hidden_size
    decoder_params = arch.num_hidden_layers * arch.layer_parameters
    compute = 4 if precision == "fp32" else 2
    weight_bytes, grad_bytes, adam_bytes = (2, 2, 4) if precision == "bf16-pure" else (4, 4, 8)
    parts = {
        "weights": n_params * weight_bytes / shards,
        "gradients": n_params * grad_bytes / shards,
        "adamw": n_params * adam_bytes / shards,
    }
    if fsdp:
        parts["fsdp_gathered"] = 2 * compute * (arch.embedding_parameters + 2 * arch.layer_parameters)
    elif precision == "bf16-mixed":
        parts["autocast_copies"] = 2 * decoder_params
    if processes > 1 and not fsdp:
        parts["ddp_buckets"] = n_params * grad_bytes
    groups = training.optim.per_device_batch_size
    sequences = groups * n_samples if objective == "advdistill" else groups
    tokens = sequences * training.optim.max_seq_length
    residual = 2 if precision == "bf16-pure" else 4
    full_layer = layer_activation_bytes(arch, precision) * tokens
    backward_workspace = 3 * tokens * arch.intermediate_size * compute  # MLP gradients of the layer in backward
    final_norm = 2 * (4 + residual) * arch.hidden_size * tokens
    if training.gradient_checkpointing:
        # each layer keeps its input; one layer at a time is recomputed in backward
        activations = arch.num_hidden_layers * tokens * arch.hidden_size * residual + full_layer
    else:
        activations = arch.num_hidden_layers * full_layer
    parts["activations"] = activations + backward_workspace + final_norm
    autocast = precision == "bf16-mixed"
    hidden_copies = tokens * arch.hidden_size * (residual + 2 * compute + (2 if autocast else 0))
    head_gradient = head * (4 + (2 if precision != "fp32" else 0) + (2 if autocast else 0))
    parts["fused_loss"] = hidden_copies + head_gradient + _loss_chunk_bytes(training, arch, tokens, compute, gpu_rules)
    # the step's temporary replaces the activations, so only the part by which it is larger counts
    step_excess = n_params * weight_bytes / shards - parts["activations"] - parts["fused_loss"]
    if step_excess > 0:
        parts["optimizer_step"] = step_excess
    parts["cuda_overhead"] = CUDA_OVERHEAD_GIB * GIB
    checkpointing = "with" if training.gradient_checkpointing else "without"
    parallel = f"FSDP over {processes}" if fsdp else (f"DDP over {processes}" if processes > 1 else "1 process")
    estimate = Estimate(
        "train", model, processes if gpu_rules else 0, origin, round(sum(parts.values()) / GIB, 2), _gib(parts),
        note=(f"{precision}, {parallel}, {checkpointing} gradient checkpointing, micro-batch "
              + (f"{groups} group(s) x {n_samples} = " if objective == "advdistill" else "")
              + f"{sequences} x {training.optim.max_seq_length} tokens"))
    fixes = [] if training.gradient_checkpointing else ["set training.gradient_checkpointing: true"]
    fixes.append("raise training.processes" + ("" if fsdp else " with training.fsdp: true"))
    fixes.append("lower training.optim.max_seq_length"
                 + (" or training.optim.per_device_batch_size" if groups > 1 or objective == "sft" else ""))
    estimate.fix = ", ".join(fixes[:-1]) + " or " + fixes[-1]
    if gpu_mem_gb is not None:
        estimate.budget_gib = float(gpu_mem_gb)
        estimate.fits = estimate.gib <= estimate.budget_gib
    return estimate


def plan_memory(config: dict[str, Any], sources: dict[str, str]) -> list[Estimate]:
    """Estimates of every GPU stage of a validated pipeline ``config``; ``sources`` maps each model name
    (teacher and students) to the folder or hub id it is loaded from."""
    resources = config.get("resources") or {}
    gpu_rules, gpu_mem_gb = bool(resources.get("gpu_rules")), resources.get("gpu_mem_gb")
    sampling = from_dict(SamplingConfig, config["sampling"], "sampling")
    evaluation = from_dict(EvaluationConfig, config["evaluation"], "evaluation")

    def architecture(model: dict[str, Any]) -> tuple[Architecture | None, str]:
        run = building_run(config, model)
        if run is not None:
            return bootstrap_architecture(run[1], config.get("tokenizer") or {}), "bootstrap settings"
        return find_architecture(sources[model["name"]])

    def unknown(stage: str, name: str, gpus: int, reason: str) -> Estimate:
        return Estimate(stage, name, gpus if gpu_rules else 0, "unknown", note=f"not checked: {reason}")

    teacher, students = config["teacher"], config.get("students", [])
    shapes = {m["name"]: architecture(m) for m in [teacher, *students]}
    estimates = []
    arch, origin = shapes[teacher["name"]]
    sample_gpus = sampling.tensor_parallel_size if sampling.backend == "vllm" else 1
    estimates.append(inference_estimate("sample", teacher["name"], arch, origin, sampling,
                                        sampling.batch_size * sampling.n_samples, gpu_rules, gpu_mem_gb)
                     if arch else unknown("sample", teacher["name"], sample_gpus, origin))
    planned = set()
    for run in trained_runs(config):  # seeds do not change memory: one estimate per objective and variant
        if (run.student, run.objective, run.variant) in planned:
            continue
        planned.add((run.student, run.objective, run.variant))
        arch, origin = shapes[run.student]
        training = from_dict(TrainingConfig, variant_training(config, run.variant), "training")
        estimates.append(training_estimate(run.name_without_seed, run.objective, arch, origin, training,
                                           sampling.n_samples, gpu_rules, gpu_mem_gb)
                         if arch else unknown("train", run.name_without_seed, training.processes, origin))
    evaluate_gpus = evaluation.tensor_parallel_size if evaluation.backend == "vllm" else 1
    for name, (arch, origin) in shapes.items():
        label = name if name == teacher["name"] else f"{name} (base and trained)"
        estimates.append(inference_estimate("evaluate", label, arch, origin, evaluation,
                                            evaluation.batch_size * evaluation.n_samples, gpu_rules, gpu_mem_gb)
                         if arch else unknown("evaluate", label, evaluate_gpus, origin))
    return estimates


def stage_gpus(config: dict[str, Any], stage: str) -> int:
    """GPUs one job of ``stage`` uses: vLLM's tensor parallelism for sample/evaluate (train: see the train rule,
    which asks for each run's training.processes)."""
    engine = (from_dict(SamplingConfig, config["sampling"], "sampling") if stage == "sample"
              else from_dict(EvaluationConfig, config["evaluation"], "evaluation"))
    return engine.tensor_parallel_size if engine.backend == "vllm" else 1


def check_gpu_requests(config: dict[str, Any], limit: int, source: str) -> None:
    """Every GPU job of a workstation run asks for at most the ``limit`` GPUs it may use at once (``source`` says
    where that limit comes from): Snakemake would lower a larger request to the limit without a word, and the job
    would then share GPUs or fail in its launcher. Sampling is checked only where this run samples (no
    ``upstream_run``)."""
    requests = [] if config.get("upstream_run") else [("sampling.tensor_parallel_size", stage_gpus(config, "sample"))]
    requests.append(("evaluation.tensor_parallel_size", stage_gpus(config, "evaluate")))
    requests.append(("training.processes", config["training"].get("processes", 1)))
    for name, spec in (config.get("variants") or {}).items():
        if "processes" in (spec.get("training") or {}):
            requests.append((f"variants.{name}.training.processes", spec["training"]["processes"]))
    for key, gpus in requests:
        if gpus > limit:
            raise ConfigError(f"config {key}: {gpus} GPUs for one job, but {source} allow(s) {limit} at once; "
                              f"lower {key}, or run on a machine with more GPUs")


def plan_rows(estimates: list[Estimate]) -> list[dict[str, Any]]:
    """The plan as JSON-ready rows (the report's ``memory_plan.json``)."""
    return [asdict(e) for e in estimates]


def format_plan(estimates: list[Estimate]) -> str:
    """A fixed-width table: stage, model, GiB per GPU, GPUs, fits, where the shape came from, note."""
    header = ("stage", "model", "GiB/GPU", "GPUs", "fits", "shape", "note")
    rows = [(e.stage, e.model, "unknown" if e.gib is None else f"{e.gib:.1f}", str(e.gpus),
             "?" if e.fits is None else (f"yes (<= {e.budget_gib:g})" if e.fits else f"NO (> {e.budget_gib:g})"),
             e.origin, e.note)
            for e in estimates]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
             for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def check_plan(estimates: list[Estimate], gpu_mem_gb: float) -> None:
    """Raise :class:`MemoryPlanError` naming every stage whose estimate exceeds its budget, with the fix."""
    failing = [e for e in estimates if e.fits is False]
    if failing:
        lines = [f"{e.stage} of {e.model}: about {e.gib:.1f} GiB per GPU, more than {e.budget_gib:g} GiB; {e.fix}"
                 for e in failing]
        raise MemoryPlanError(f"memory plan: {len(failing)} stage(s) do not fit resources.gpu_mem_gb = "
                              f"{gpu_mem_gb:g} GiB:\n  " + "\n  ".join(lines))
