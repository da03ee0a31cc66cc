"""Check the memory plan's training estimate against a measured peak, on CPU.

Each case trains a small randomly initialised Qwen2 (hidden 512, 8 layers, GQA 8/2 heads, vocabulary
32000, tied embeddings) in fp32 for two optimizer steps of two micro-batches each, through the
pipeline's loss path: the decoder's last hidden states into ``advdistill.losses.group_loss`` (one group
of ``n`` sequences) or ``sft_loss``, with the fused loss's default backend (the C++ extension on CPU),
then AdamW. Two micro-batches per step make the gradients live during a forward pass, as under the
pipeline's gradient accumulation. Every sequence has ``max_seq_length`` tokens except the last, which is
padded by a few, so the attention mask is real (as in a group of responses of different lengths).

The measured figure is the growth of the process's peak resident memory (``ru_maxrss``) over its RSS
after imports and the extension's build, so it includes the weights; the plan's figure is its
``train`` estimate minus ``CUDA_OVERHEAD_GIB``. Each case runs in a fresh process, twice: with glibc's
default allocator settings, whose heap keeps freed blocks (as CUDA's caching allocator does, which the
CUDA overhead constant covers on a GPU), and with ``MALLOC_MMAP_THRESHOLD_=65536``, under which large
blocks go back to the system when freed, so that the peak is that of the live tensors.

    python scripts/check_memory_plan.py                       # every case, a table
    python scripts/check_memory_plan.py --case advdistill     # one case, JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from advdistill.config import LossConfig, OptimConfig, TrainingConfig
from advdistill.memory_plan import CUDA_OVERHEAD_GIB, GIB, architecture_from_config, training_estimate

SHAPE = {"model_type": "qwen2", "hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 2, "intermediate_size": 1408, "vocab_size": 32000, "tie_word_embeddings": True,
         "max_position_embeddings": 1024}
SEQ_LEN, GROUP, SFT_BATCH, PROMPT_TOKENS, PADDING = 512, 8, 4, 64, 16
CASES = {
    "advdistill": ("advdistill", False),
    "advdistill-checkpointing": ("advdistill", True),
    "sft": ("sft", False),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def settings(objective: str, checkpointing: bool) -> TrainingConfig:
    """``per_device_batch_size`` counts prompts: one group of ``GROUP`` sequences (AdvDistill), ``SFT_BATCH`` pairs."""
    batch = SFT_BATCH if objective == "sft" else 1
    return TrainingConfig(optim=OptimConfig(max_seq_length=SEQ_LEN, per_device_batch_size=batch),
                          loss=LossConfig(backend="auto"), precision="fp32", gradient_checkpointing=checkpointing)


def measure(objective: str, checkpointing: bool) -> dict:
    """Peak RSS growth (GiB) of two optimizer steps, each of two micro-batches."""
    import torch
    from advdistill_kernels.backends import cpp as cpp_backend
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from advdistill.losses import IGNORE_INDEX, group_loss, sft_loss

    torch.set_num_threads(2)
    cpp_backend.load_extension()
    cfg = settings(objective, checkpointing)
    baseline = rss_bytes()

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SHAPE))
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rows = GROUP if objective == "advdistill" else SFT_BATCH
    for _ in range(2):
        for _ in range(2):
            input_ids = torch.randint(0, SHAPE["vocab_size"], (rows, SEQ_LEN))
            attention_mask = torch.ones_like(input_ids)
            attention_mask[-1, -PADDING:] = 0
            labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
            labels[:, :PROMPT_TOKENS] = IGNORE_INDEX
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weight = model.get_output_embeddings().weight
            if objective == "advdistill":
                loss = group_loss(hidden, weight, labels, torch.randn(rows), torch.rand(rows) > 0.5, cfg.loss)
            else:
                loss = sft_loss(hidden, weight, labels, cfg.loss)
            (loss / 2).backward()
            del hidden, weight, loss
        optimizer.step()
        optimizer.zero_grad()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"measured_gib": (peak - baseline) / GIB}


def estimate(objective: str, checkpointing: bool) -> dict:
    arch = architecture_from_config(SHAPE)
    planned = training_estimate("check", objective, arch, "check_memory_plan.py", settings(objective, checkpointing),
                                GROUP, gpu_rules=False, gpu_mem_gb=None)
    return {"estimated_gib": planned.gib - CUDA_OVERHEAD_GIB, "parts": planned.parts,
            "parameters": arch.parameters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process and print JSON")
    args = parser.parse_args()
    if args.case:
        objective, checkpointing = CASES[args.case]
        print(json.dumps({**measure(objective, checkpointing), **estimate(objective, checkpointing)}))
        return
    print(f"Qwen2 {SHAPE}, fp32, {SEQ_LEN} tokens per sequence; GiB, error = estimate / measured - 1")
    print(f"{'case':<26}{'estimate':>9}{'glibc heap':>12}{'error':>8}{'live tensors':>14}{'error':>8}")
    for case in CASES:
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--case", case], check=True, env=env,
                                          capture_output=True, text=True).stdout.splitlines()[-1])
                for env in (os.environ, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})]
        planned = runs[0]["estimated_gib"]
        cells = "".join(f"{run['measured_gib']:>{width}.2f}{planned / run['measured_gib'] - 1:>+8.1%}"
                        for run, width in zip(runs, (12, 14)))
        print(f"{case:<26}{planned:>9.2f}{cells}")
        print(f"{'':<26}plan: {runs[0]['parts']}")


if __name__ == "__main__":
    main()
