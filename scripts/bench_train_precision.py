"""Step time of an AdvDistill training step on this CPU in fp32 and bf16-mixed, for choosing ``training.precision``.

A student with the architecture of a Qwen2.5 release (random weights; ``advdistill.memory_plan.QWEN25``) takes
forward, the fused AdvDistill loss, backward and an AdamW step on one group of random responses, as
:class:`~advdistill.training.student.StudentWithLoss` runs it under the Trainer: fp32 weights and optimizer state,
bf16-mixed under ``torch.autocast("cpu", torch.bfloat16)``. The two precisions alternate step by step after a
warm-up, from the same initial weights; the script prints each one's median step time and the last losses, so
that a step-time gain can be read beside how far the losses drift apart::

    python scripts/bench_train_precision.py --like Qwen/Qwen2.5-0.5B --responses 8 --tokens 128 --steps 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from advdistill.config import LossConfig
from advdistill.memory_plan import QWEN25
from advdistill.training.student import StudentWithLoss

PRECISIONS = ("fp32", "bf16-mixed")


def qwen_like(name: str, layers: int | None) -> Qwen2ForCausalLM:
    """A randomly initialised fp32 model of ``name``'s architecture (``layers`` decoder layers if given)."""
    shape = QWEN25[name]
    config = Qwen2Config(hidden_size=shape.hidden_size, num_hidden_layers=layers or shape.num_hidden_layers,
                         num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
                         intermediate_size=shape.intermediate_size, vocab_size=shape.vocab_size,
                         tie_word_embeddings=shape.tie_word_embeddings, max_position_embeddings=4096)
    return Qwen2ForCausalLM(config)


def group_batch(vocab_size: int, responses: int, tokens: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One group: ``responses`` rows of ``tokens`` random tokens, the first quarter a shared prompt (masked)."""
    prompt = torch.randint(vocab_size, (tokens // 4,), generator=generator)
    input_ids = torch.cat([prompt.expand(responses, -1),
                           torch.randint(vocab_size, (responses, tokens - tokens // 4), generator=generator)], dim=1)
    labels = input_ids.clone()
    labels[:, :tokens // 4] = -100
    correct = torch.arange(responses) % 2 == 0
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "advantages": torch.where(correct, 1.0, -1.0), "correct": correct,
            "group_index": torch.zeros(responses, dtype=torch.long)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", default="Qwen/Qwen2.5-0.5B", choices=sorted(QWEN25),
                        help="the Qwen2.5 release whose architecture the student has")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the release's)")
    parser.add_argument("--responses", type=int, default=8, help="responses of the group")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per response, prompt included")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per precision, after one warm-up each")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    base = qwen_like(args.like, args.layers)
    batch = group_batch(base.config.vocab_size, args.responses, args.tokens, generator)
    runs = {}
    for precision in PRECISIONS:
        model = StudentWithLoss(copy.deepcopy(base), "advdistill", LossConfig())
        runs[precision] = (model, torch.optim.AdamW(model.parameters(), lr=args.lr), [], [])

    def step(precision: str) -> None:
        model, optimizer, seconds, losses = runs[precision]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = model(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())

    for _ in range(args.steps + 1):
        for precision in PRECISIONS:
            step(precision)
    parameters = sum(p.numel() for p in base.parameters())
    print(f"{args.like}-shaped student ({parameters / 1e6:.0f}M parameters, {base.config.num_hidden_layers} layers), "
          f"one group of {args.responses} x {args.tokens} tokens, {torch.get_num_threads()} threads")
    print("| precision | step s (median of the timed steps) | losses |")
    print("|---|---|---|")
    for precision, (_, _, seconds, losses) in runs.items():
        print(f"| {precision} | {statistics.median(seconds[1:]):.2f} | {', '.join(f'{x:.4f}' for x in losses)} |")


if __name__ == "__main__":
    main()
