"""Paper-size training steps on a CUDA GPU, measured against the memory plan.

For when a GPU machine is available (nothing is downloaded: the students are randomly initialised with
the real Qwen2.5 shapes of ``advdistill.memory_plan.QWEN25``). Each case runs ``--steps`` optimizer steps
of the pipeline's own training module (:class:`advdistill.training.student.StudentWithLoss`, the fused loss
on its ``auto`` backend, AdamW, bf16-mixed precision: fp32 master weights, bf16 autocast) and prints, per case,
the peak memory CUDA's allocator held (``max_memory_reserved``) and the tensors' peak
(``max_memory_allocated``) beside the plan's estimate, and the seconds per optimizer step.

    python scripts/gpu_training_check.py                      # 1.5B AdvDistill with/without checkpointing, 3B SFT
    python scripts/gpu_training_check.py --json out.json

The two-process equivalence tests (NCCL instead of gloo) run on a machine with two GPUs with
``python -m pytest tests/test_train_scaling.py``; see ``scripts/gpu_training_check.sh``.
"""

from __future__ import annotations

import argparse
import json
import time

from advdistill.config import OptimConfig, TrainingConfig
from advdistill.memory_plan import GIB, QWEN25, training_estimate

CASES = {  # name: (hub id whose shape is used, objective, gradient checkpointing)
    "1.5b-advdistill": ("Qwen/Qwen2.5-1.5B", "advdistill", False),
    "1.5b-advdistill-checkpointing": ("Qwen/Qwen2.5-1.5B", "advdistill", True),
    "3b-sft-checkpointing": ("Qwen/Qwen2.5-3B", "sft", True),
}
GROUP, SEQ_LEN, PROMPT_TOKENS = 8, 2048, 256


def run_case(hub_id: str, objective: str, checkpointing: bool, steps: int, accumulation: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from advdistill.losses import IGNORE_INDEX
    from advdistill.training.student import StudentWithLoss

    arch = QWEN25[hub_id]
    cfg = TrainingConfig(optim=OptimConfig(max_seq_length=SEQ_LEN, per_device_batch_size=1,
                                           gradient_accumulation_steps=accumulation),
                         precision="bf16-mixed", gradient_checkpointing=checkpointing)
    planned = training_estimate(hub_id, objective, arch, "built-in Qwen2.5 table", cfg, GROUP, gpu_rules=True,
                                gpu_mem_gb=None)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=arch.hidden_size, num_hidden_layers=arch.num_hidden_layers,
                         num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_key_value_heads,
                         intermediate_size=arch.intermediate_size, vocab_size=arch.vocab_size,
                         tie_word_embeddings=arch.tie_word_embeddings, max_position_embeddings=32768,
                         use_cache=False)
    student = Qwen2ForCausalLM(config).to("cuda", torch.float32)
    if checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()
    module = StudentWithLoss(student, objective, cfg.loss)
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-6)
    rows = GROUP if objective == "advdistill" else 1
    timings = []
    for _ in range(steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(accumulation):
            input_ids = torch.randint(0, arch.vocab_size, (rows, SEQ_LEN), device="cuda")
            labels = input_ids.clone()
            labels[:, :PROMPT_TOKENS] = IGNORE_INDEX
            batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
            if objective == "advdistill":
                batch["advantages"] = torch.randn(rows, device="cuda")
                batch["correct"] = torch.arange(rows, device="cuda") % 3 == 0
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = module(**batch)
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    result = {"case": f"{hub_id} {objective}", "checkpointing": checkpointing, "planned_gib": round(planned.gib, 2),
              "reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
              "allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
              "seconds_per_step": round(sorted(timings)[len(timings) // 2], 3), "micro_batches": accumulation}
    del module, student, optimizer
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="default: every case")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_training_check: no CUDA device")
    rows = []
    for name in args.case or list(CASES):
        try:
            rows.append(run_case(*CASES[name], args.steps, args.accumulation))
        except torch.OutOfMemoryError as err:
            rows.append({"case": name, "error": f"out of memory: {str(err).splitlines()[0]}"})
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    print(f"device: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / GIB:.1f} GiB")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
