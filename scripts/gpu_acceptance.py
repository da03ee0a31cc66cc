"""The GPU acceptance run: one command that checks the whole GPU path on a bare, air-gapped CUDA node.

    make gpu-wheelhouse        # where a package index is reachable: the wheels the node lacks, in .gpu-wheelhouse/
    make gpu-acceptance        # on the GPU node (OUT=folder for the results; default gpu-acceptance-results/)
    python3 scripts/gpu_acceptance.py run --rehearse     # the same stages on a CPU, at stand-in sizes

The node is expected to hold Python 3.12 with torch, triton, transformers and accelerate (and what they need)
and no package index. ``run`` installs the wheelhouse with ``pip install --no-index --no-deps --target`` into a
fresh folder, puts it, the repository and ``kernels/`` on ``PYTHONPATH``, and uses the torch, triton and
transformers it finds. Then, each stage in its own process with its own time limit (a failing or timed-out
stage is recorded and the next one runs; the whole run stays within ``--budget`` seconds):

``environment``  nvidia-smi, the versions of everything the run imports, the device
``kernels``      tests/kernels on CUDA (``torch`` and ``triton`` backends against the float64 reference, every
                 dtype, shape and loss reading) and the cubin compile test with the node's triton
``benchmark``    the paper-size fused-loss benchmark (bf16, N = 8 x 2,048, d = 1,536, V = 151,936): every
                 provider, with time, peak memory, the ratio to the cuBLAS GEMM limit and the error against
                 float64; ``benchmark-compiled`` adds ``torch.compile(naive)`` (its compile time kept apart)
``training``     a randomly initialised Qwen2.5-1.5B-shaped student, bf16-mixed, the HF Trainer with the Triton
                 loss: optimizer steps on one full 8 x 2,048 group per objective, with and without gradient
                 checkpointing; step time and peak memory against ``memory_plan``; the projected GPU-hours of
                 ``config/paper/gsm8k.yaml`` beside the paper's Table 3
``evaluate``     ``advdistill evaluate`` (HF backend) of a stand-in model on CUDA through the real CLI

Results: at most 8 files in ``--out``: ``summary.md`` (the table), ``summary.json`` (every figure),
``bench_paper.csv`` and ``bench_paper_compiled.csv``, and ``logs.tar.gz`` (every stage's log, the pytest
report, nvidia-smi).

``--rehearse`` (no CUDA needed; ``tests/test_gpu_acceptance.py`` runs it) goes through the same stages with
stand-in sizes on the CPU, the packages the node lacks made unimportable: the kernel stage finds no CUDA
cases and compiles two kernels, the benchmark runs the ``tiny`` size (without ``torch.compile``), training
a two-layer Qwen2 with the ``torch`` loss, evaluate on the CPU; each stage that passes says that CUDA was
not there. Without ``--rehearse`` and without CUDA, the run stops after the
environment stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WHEELHOUSE = REPO / ".gpu-wheelhouse"
WHEELHOUSE_MAX_MIB = 60
OUT_FILE_LIMIT = 8

WHEELS = (
    "polars==2.1.0", "polars-runtime-32==2.1.0",
    "math-verify==0.9.0", "latex2sympy2_extended==1.11.0", "antlr4-python3-runtime==4.13.2",
    "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==2026.9.1",
    "liger-kernel==0.8.5", "cut-cross-entropy==25.1.1",
)
"""What the run imports that the node lacks, pinned (the versions the project's own environment resolves)."""

ABSENT_ON_NODE = ("snakemake", "vllm", "datasets")
"""Imported by the project somewhere, but neither on the node nor in the wheelhouse: a rehearsal makes them fail to
import (``sys.modules[name] = None`` in a ``sitecustomize``), so that a stage that needs one fails here first."""

NODE_PACKAGES = frozenset({
    "torch", "triton", "transformers", "accelerate", "tokenizers", "safetensors", "huggingface-hub", "numpy",
    "packaging", "pyyaml", "regex", "requests", "tqdm", "filelock", "fsspec", "jinja2", "sympy", "mpmath",
    "networkx", "typing-extensions", "attrs", "psutil", "pytest", "matplotlib", "pyarrow", "hf-xet", "ninja",
})
"""Packages the node's image already has (its package list) that the wheels above may require."""

PLATFORM_ARGS = ("--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                 "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                 "--platform", "manylinux2014_x86_64")


# ----------------------------------------------------------------------------------------------- wheelhouse

def wheel_requirements(wheel: Path) -> list[str]:
    """The names a wheel requires on CPython 3.12, Linux x86-64 (extras left out)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "implementation_name": "cpython", "extra": ""}
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    names = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        if requirement.marker is None or requirement.marker.evaluate(environment):
            names.append(canonical(requirement.name))
    return names


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def wheel_name(wheel: Path) -> str:
    return canonical(wheel.name.split("-")[0])


def missing_requirements(wheels: list[Path]) -> dict[str, list[str]]:
    """Per wheel, what it requires that neither the wheelhouse nor the node has."""
    present = {wheel_name(w) for w in wheels} | NODE_PACKAGES
    gaps = {w.name: [r for r in wheel_requirements(w) if r not in present] for w in wheels}
    return {name: gap for name, gap in gaps.items() if gap}


def build_wheelhouse(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *PLATFORM_ARGS, "--dest",
               str(folder), *WHEELS]
    if subprocess.run(command).returncode != 0:
        print(f"gpu-wheelhouse: pip download failed: {' '.join(command)}", file=sys.stderr)
        return 1
    wanted = {canonical(spec.split("==")[0]) for spec in WHEELS}
    wheels = sorted(folder.glob("*.whl"))
    strays = [w.name for w in wheels if wheel_name(w) not in wanted]
    if strays:
        print(f"gpu-wheelhouse: {folder} holds wheels this run does not want: {strays}; remove them", file=sys.stderr)
        return 1
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:8.2f} MiB  in all, {len(wheels)} wheels in {folder}")
    gaps = missing_requirements(wheels)
    if gaps:
        print(f"gpu-wheelhouse: requirements neither here nor on the node: {gaps}", file=sys.stderr)
        return 1
    if total > WHEELHOUSE_MAX_MIB * 2**20:
        print(f"gpu-wheelhouse: {total / 2**20:.1f} MiB is over the {WHEELHOUSE_MAX_MIB} MiB limit", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------- the stages

@dataclass
class Stage:
    name: str
    limit_s: int
    command: list[str]
    status: str = "not run"
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)


def stage_plan(python: str, work: Path, site: Path, rehearse: bool) -> list[Stage]:
    """The stages with their commands: the paper sizes on CUDA, or (``rehearse``) stand-in sizes on the CPU."""
    script = str(Path(__file__).resolve())
    kernels = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", f"--junitxml={work / 'junit.xml'}",
               "tests/kernels/test_fused_loss.py", "tests/kernels/test_triton_compile.py", "-k",
               "cuda or (compiles and sm90 and bf16)" if rehearse else "cuda or compiles"]

    def bench(csv_name: str, providers: list[str]) -> list[str]:
        sizes = (["--sizes", "tiny", "--device", "cpu", "--rounds", "1", "--no-memory"] if rehearse else
                 ["--sizes", "paper", "--device", "cuda", "--dtypes", "bfloat16", "--rounds", "3"])
        return [python, "kernels/benchmarks/bench_fused_loss.py", *sizes, "--csv", str(work / csv_name),
                "--providers", *providers]

    limit = "limit_torch_mm" if rehearse else "limit"
    fused = ["torch", "torch_lce"] if rehearse else ["torch", "triton", "torch_lce", "cce", "liger"]
    compiled = [] if rehearse else ["naive_compiled"]  # torch.compile on a CPU would cost CI half a minute
    worker = [python, script, "worker", "--work", str(work), "--site", str(site)] + (
        ["--rehearse"] if rehearse else [])
    return [
        Stage("environment", 30, worker + ["environment"]),
        Stage("kernels", 90, kernels),
        Stage("benchmark", 150, bench("bench_paper.csv", [limit, "naive", *fused])),
        Stage("benchmark-compiled", 60, bench("bench_paper_compiled.csv", [limit, *compiled])),
        Stage("training", 120, worker + ["training"]),
        Stage("evaluate", 60, worker + ["evaluate"]),
    ]


def run_command(command: list[str], env: dict, log, timeout: float) -> int | None:
    """Exit status, or None when it ran past ``timeout`` (its whole process group is killed)."""
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        return process.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        return None


def install_wheelhouse(wheelhouse: Path, site: Path, log) -> str:
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not wheels:
        return f"failed: no wheels in {wheelhouse} (run make gpu-wheelhouse where an index is reachable)"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--target", str(site), *map(str, wheels)]
    status = run_command(command, dict(os.environ), log, 120)
    return "passed" if status == 0 else f"failed (pip exit {status})"


def stage_environment(site: Path, work: Path, rehearse: bool) -> dict:
    paths = [str(site), str(REPO), str(REPO / "kernels"), os.environ.get("PYTHONPATH", "")]
    if rehearse:
        blocker = work.parent / "node-imports"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(
            "# scripts/gpu_acceptance.py --rehearse: what the GPU node lacks does not import here either\n"
            f"import sys\nsys.modules.update(dict.fromkeys({ABSENT_ON_NODE!r}))\n")
        paths.insert(0, str(blocker))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), PYTHONUNBUFFERED="1",
                HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRITON_CACHE_DIR=str(work / "triton-cache"),
                TORCHINDUCTOR_CACHE_DIR=str(work / "inductor-cache"), MPLCONFIGDIR=str(work / "matplotlib"))


def run_stages(stages: list[Stage], env: dict, work: Path, budget_s: float, started: float, rehearse: bool) -> None:
    """Runs the stages in order; after ``environment``, the rest only where CUDA is visible or in a rehearsal."""
    cuda = None
    for stage in stages:
        left = budget_s - (time.monotonic() - started)
        if left < 5:
            stage.status = "not run: the run's time budget is spent"
            continue
        if cuda is False and not rehearse:
            stage.status = "not run: no CUDA device visible (--rehearse runs the stages on the CPU)"
            continue
        limit = min(stage.limit_s, left)
        begun = time.monotonic()
        with (work / f"{stage.name}.log").open("w") as log:
            exit_status = run_command(stage.command, env, log, limit)
        stage.seconds = round(time.monotonic() - begun, 1)
        stage.figures = stage_figures(stage.name, work)
        if stage.name == "environment":
            cuda = stage.figures.get("cuda")
        stage.status = stage_status(exit_status, limit, cuda, rehearse)
        print(f"gpu-acceptance: {stage.name}: {stage.status} ({stage.seconds} s)", flush=True)


def stage_status(exit_status: int | None, limit: float, cuda: bool | None, rehearse: bool) -> str:
    if exit_status is None:
        return f"timed out after {limit:.0f} s"
    if exit_status != 0:
        return f"failed (exit {exit_status})"
    if cuda:
        return "passed"
    return "no CUDA: rehearsed on the CPU" if rehearse else "passed, but no CUDA device is visible"


# ----------------------------------------------------------------------------------------------- figures

def stage_figures(name: str, work: Path) -> dict:
    """The figures a stage left in ``work``, for the summary."""
    if name == "kernels" and (work / "junit.xml").exists():
        suite = ElementTree.parse(work / "junit.xml").getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    table = work / {"benchmark": "bench_paper.csv", "benchmark-compiled": "bench_paper_compiled.csv"}.get(name, "-")
    if table.is_file():
        import csv

        with table.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["mode"] == "full"]
        keys = ("ms_median", "full_over_limit", "peak_mb", "loss", "loss_abs_err", "grad_weight_rel_err", "error")
        return {row["provider"]: {key: row[key] for key in keys if row.get(key)} for row in rows}
    worker_result = work / f"{name}.json"
    return json.loads(worker_result.read_text()) if worker_result.exists() else {}


def summary_markdown(stages: list[Stage], total_s: float, rehearse: bool) -> str:
    environment = next((s.figures for s in stages if s.name == "environment"), {})
    lines = [f"# GPU acceptance{' (CPU rehearsal)' if rehearse else ''}", "",
             f"- device: {environment.get('device', 'unknown')}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in environment.get('versions', {}).items())}",
             f"- wall time: {total_s:.0f} s", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds} |" for s in stages]
    for stage in stages:
        if stage.name.startswith("benchmark") and stage.figures:
            lines += ["", f"## {stage.name}", "", "| provider | full ms | x limit | peak MB | loss | loss err | "
                      "dW rel err | error |", "|---|---|---|---|---|---|---|---|"]
            for provider, row in stage.figures.items():
                cells = [row.get(k, "") for k in ("ms_median", "full_over_limit", "peak_mb", "loss", "loss_abs_err",
                                                  "grad_weight_rel_err", "error")]
                lines.append(f"| {provider} | " + " | ".join(cells) + " |")
    training = next((s.figures for s in stages if s.name == "training"), {})
    if training.get("cases"):
        lines += ["", "## training", "", "| case | s/step | tokens/s | peak allocated GiB | reserved GiB | "
                  "planned GiB | error |", "|---|---|---|---|---|---|---|"]
        for case in training["cases"]:
            lines.append(f"| {case['case']} | {case.get('seconds_per_step', '')} | {case.get('tokens_per_s', '')} | "
                         f"{case.get('allocated_gib', '')} | {case.get('reserved_gib', '')} | "
                         f"{case.get('planned_gib', '')} | {case.get('error', '')} |")
        for line in training.get("projection", []):
            lines.append(f"- {line}")
    for name in ("kernels", "evaluate"):
        figures = next((s.figures for s in stages if s.name == name), {})
        if figures:
            lines += ["", f"## {name}", "", "```", json.dumps(figures, indent=1), "```"]
    return "\n".join(lines) + "\n"


def pack_results(stages: list[Stage], work: Path, out: Path, total_s: float, rehearse: bool) -> list[Path]:
    """summary.md, summary.json, the benchmark tables and logs.tar.gz in ``out`` (at most 8 files)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary_markdown(stages, total_s, rehearse))
    (out / "summary.json").write_text(json.dumps({"rehearse": rehearse, "wall_s": round(total_s, 1),
                                                  "stages": [asdict(s) for s in stages]}, indent=1))
    for table in ("bench_paper.csv", "bench_paper_compiled.csv"):
        if (work / table).exists():
            shutil.copy(work / table, out / table)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as archive:
        for path in sorted(work.iterdir()):
            if path.is_file():
                archive.add(path, arcname=path.name)
    files = sorted(p for p in out.iterdir() if p.is_file())
    if len(files) > OUT_FILE_LIMIT:
        raise RuntimeError(f"{out} holds {len(files)} files, more than the {OUT_FILE_LIMIT} that come back")
    return files


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        print(f"gpu-acceptance: {out} is not empty; give an empty or new --out", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as scratch:
        work = Path(scratch) / "work"
        work.mkdir()
        site = Path(scratch) / "site"
        with (work / "install.log").open("w") as log:
            install = install_wheelhouse(args.wheelhouse, site, log)
        stages = [Stage("install", 120, [], status=install, seconds=round(time.monotonic() - started, 1))]
        print(f"gpu-acceptance: install: {install} ({stages[0].seconds} s)", flush=True)
        env = stage_environment(site, work, args.rehearse)
        plan = stage_plan(sys.executable, work, site, args.rehearse)
        if install == "passed":
            run_stages(plan, env, work, args.budget, started, args.rehearse)
        stages += plan
        total = time.monotonic() - started
        files = pack_results(stages, work, out, total, args.rehearse)
    print((out / "summary.md").read_text())
    print(f"gpu-acceptance: {len(files)} files in {out}: {', '.join(p.name for p in files)}")
    failed = [s.name for s in stages if s.status.startswith(("failed", "timed out"))]
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------- workers

def environment_worker(work: Path, site: Path, rehearse: bool) -> int:
    import importlib.metadata as metadata

    import torch

    smi = shutil.which("nvidia-smi")
    smi_text = subprocess.run([smi], capture_output=True, text=True).stdout if smi else "nvidia-smi not found\n"
    (work / "nvidia-smi.txt").write_text(smi_text)
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "triton", "transformers", "accelerate", *(spec.split("==")[0] for spec in WHEELS)):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    import advdistill_kernels  # noqa: F401

    import advdistill.cli  # noqa: F401 - the run's own imports resolve from the wheelhouse and the node

    wheelhouse = {dist.metadata["Name"]: dist.version for dist in metadata.distributions(path=[str(site)])}
    figures = {"versions": versions, "wheelhouse_installed": wheelhouse, "torch_cuda": torch.version.cuda,
               "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        figures["device"] = (f"{properties.name}, sm_{properties.major}{properties.minor}, "
                             f"{properties.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible")
    else:
        figures["device"] = "no CUDA device visible"
    (work / "environment.json").write_text(json.dumps(figures, indent=1))
    missing = [name for name, version in versions.items() if version == "missing"]
    if missing:
        print(f"missing packages: {missing}", file=sys.stderr)
    # a rehearsal's stand-in wheelhouse need not bring the optional baselines (the benchmark skips them)
    return 1 if missing and not rehearse else 0


GSM8K_TRAIN_ROWS = 7473
"""Rows of openai/gsm8k's train split, the prompts config/paper/gsm8k.yaml samples and trains on."""
PAPER_TABLE_3_HOURS = {"advdistill": 15.0, "sft": 3.0}
"""Table 3's GSM-8K column (its totals over the three datasets: AdvDistill 43.5 h, SFT 9.5 h)."""


SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "tie_word_embeddings")


def training_shape(rehearse: bool):
    """(architecture, responses per group, tokens per response, prompt tokens) of the training stage."""
    from advdistill.memory_plan import QWEN25, Architecture

    if rehearse:
        return Architecture(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=128, vocab_size=512, tie_word_embeddings=True, head_dim=16), 8, 64, 8
    return QWEN25["Qwen/Qwen2.5-1.5B"], 8, 2048, 256


def training_case(arch, objective: str, checkpointing: bool, responses: int, length: int, prompt: int,
                  steps: int, work: Path) -> dict:
    """Optimizer steps of the pipeline's HF Trainer on one full group per micro-batch (SFT: the group's
    ``responses`` sequences as one batch of pairs), timed after a first warm-up step."""
    from types import SimpleNamespace

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback

    from advdistill.config import LossConfig, OptimConfig, TrainingConfig
    from advdistill.losses import IGNORE_INDEX
    from advdistill.memory_plan import GIB, training_estimate
    from advdistill.training.groups import Group
    from advdistill.training.tokens import TokenizedPair
    from advdistill.training.trainer import build_trainer

    cuda = torch.cuda.is_available()
    cfg = TrainingConfig(
        # logging (and the loss-term telemetry it brings) only at the warm-up step and the end, outside the timing
        optim=OptimConfig(max_seq_length=length, per_device_batch_size=responses if objective == "sft" else 1,
                          gradient_accumulation_steps=1, max_steps=steps + 1, warmup_ratio=0.0,
                          logging_steps=steps + 1),
        loss=LossConfig(backend="triton" if cuda else "torch"), precision="bf16-mixed" if cuda else "fp32",
        gradient_checkpointing=checkpointing)
    shape = {name: getattr(arch, name) for name in SHAPE_FIELDS}
    planned = training_estimate("Qwen2.5-1.5B shape", objective, arch, "built-in table", cfg, responses,
                                gpu_rules=cuda, gpu_mem_gb=None)
    generator = torch.Generator().manual_seed(0)

    def pair() -> TokenizedPair:
        ids = torch.randint(1, shape["vocab_size"], (length,), generator=generator).tolist()
        return TokenizedPair(ids, [IGNORE_INDEX] * prompt + ids[prompt:], truncated=False)

    if objective == "advdistill":
        items = [Group(f"g{step}", [pair() for _ in range(responses)], torch.randn(responses, generator=generator)
                       .tolist(), [i % 3 == 0 for i in range(responses)]) for step in range(steps + 1)]
    else:
        items = [pair() for _ in range(responses * (steps + 1))]
    config = Qwen2Config(**shape, max_position_embeddings=32768, use_cache=False)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        student = Qwen2ForCausalLM(config)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds, self.begun = [], 0.0

        def on_step_begin(self, *unused, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.begun = time.perf_counter()

        def on_step_end(self, *unused, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.begun)

    clock = StepClock()
    trainer = build_trainer(student, SimpleNamespace(pad_token_id=0), objective, items, cfg,
                            work / f"checkpoints-{objective}", seed=0, save_checkpoints=False)
    trainer.add_callback(clock)
    trained = trainer.train()
    timed = sorted(clock.seconds[1:])
    step_s = timed[len(timed) // 2]
    result = {"case": f"{objective}, {'with' if checkpointing else 'without'} checkpointing",
              "objective": objective, "checkpointing": checkpointing, "planned_gib": round(planned.gib, 2),
              "seconds_per_step": round(step_s, 3), "tokens_per_s": round(responses * length / step_s),
              "loss_backend": cfg.loss.backend, "precision": cfg.precision, "train_loss": trained.training_loss}
    if cuda:
        result.update(allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                      reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2))
    del trainer, student
    if cuda:
        torch.cuda.empty_cache()
    return result


def projected_hours(cases: list[dict], responses: int, length: int) -> list[str]:
    """GPU-hours of config/paper/gsm8k.yaml's two 1.5B trainings at the measured step times, beside Table 3."""
    from advdistill.config import OptimConfig

    optim = OptimConfig()
    groups = round(GSM8K_TRAIN_ROWS * 0.95)
    lines = []
    for objective, sequences in (("advdistill", responses), ("sft", 1)):
        timed = [c for c in cases if c.get("objective") == objective and c.get("checkpointing")
                 and "seconds_per_step" in c]
        if not timed:
            continue
        tokens = optim.epochs * groups * sequences * length
        hours = tokens / timed[0]["tokens_per_s"] / 3600
        lines.append(f"{objective}: {hours:.1f} GPU-hours for {optim.epochs:g} epochs over {groups} groups "
                     f"({sequences} x {length} tokens each, every response at full length: an upper bound) at "
                     f"{timed[0]['tokens_per_s']} tokens/s with checkpointing; the paper's Table 3: "
                     f"{PAPER_TABLE_3_HOURS[objective]} h")
    return lines


def training_worker(work: Path, site: Path, rehearse: bool) -> int:
    import torch

    arch, responses, length, prompt = training_shape(rehearse)
    steps = 2 if rehearse else 3
    cases = []
    for objective in ("advdistill", "sft"):
        for checkpointing in (False, True):
            try:
                cases.append(training_case(arch, objective, checkpointing, responses, length, prompt, steps, work))
            except torch.OutOfMemoryError as error:
                cases.append({"case": f"{objective}, checkpointing {checkpointing}",
                              "error": f"out of memory: {str(error).splitlines()[0]}"})
                torch.cuda.empty_cache()
            print(json.dumps(cases[-1]), flush=True)
    result = {"shape": {name: getattr(arch, name) for name in SHAPE_FIELDS}, "group": f"{responses} x {length}",
              "cases": cases, "projection": projected_hours(cases, responses, length)}
    (work / "training.json").write_text(json.dumps(result, indent=1))
    return 1 if any("error" in case for case in cases) else 0


def evaluate_worker(work: Path, site: Path, rehearse: bool) -> int:
    """prepare -> standin -> evaluate through ``python -m advdistill.cli``, on CUDA unless rehearsing."""
    import torch

    cuda = torch.cuda.is_available()
    folder = work / "evaluate"
    cli = [sys.executable, "-m", "advdistill.cli"]
    settings = {"backend": "hf", "max_new_tokens": 32, "batch_size": 32, "dtype": "bfloat16" if cuda else "float32",
                "max_prompts": 32}
    steps = [
        *(["prepare", "--dataset", "synthetic", "--source", "synthetic", "--split", split, "--name", "arith",
           "--options", json.dumps({"seed": 7, "n_train": 64, "n_test": 32}), "--out", str(folder / f"{split}.parquet")]
          for split in ("train", "test")),
        ["standin", "--like", "Qwen/Qwen2.5-1.5B", "--rows", str(folder / "train.parquet"), "--out",
         str(folder / "model")],
        ["evaluate", "--model", str(folder / "model"), "--rows", str(folder / "test.parquet"), "--settings",
         json.dumps(settings), "--device", "cuda" if cuda else "auto", "--out", str(folder / "responses.parquet"),
         "--metrics", str(folder / "metrics.json")],
    ]
    started = time.perf_counter()
    for step in steps:
        completed = subprocess.run(cli + step, capture_output=True, text=True)
        sys.stdout.write(completed.stdout + completed.stderr)
        if completed.returncode != 0:
            print(f"advdistill {step[0]} failed (exit {completed.returncode})", file=sys.stderr)
            return 1
    metrics = json.loads((folder / "metrics.json").read_text())
    result = {"device": "cuda" if cuda else "cpu", "dtype": settings["dtype"], "prompts": metrics["n"],
              "accuracy": metrics["accuracy"], "seconds": round(time.perf_counter() - started, 1)}
    (work / "evaluate.json").write_text(json.dumps(result, indent=1))
    return 0


WORKERS = {"environment": environment_worker, "training": training_worker, "evaluate": evaluate_worker}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wheelhouse = sub.add_parser("wheelhouse", help="download the wheels the GPU node lacks (needs a package index)")
    wheelhouse.add_argument("--dir", type=Path, default=DEFAULT_WHEELHOUSE)
    runner = sub.add_parser("run", help="the acceptance run (on the GPU node; --rehearse on a CPU)")
    runner.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    runner.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "gpu-acceptance-results"))
    runner.add_argument("--budget", type=float, default=470, help="seconds for the whole run (stages stop early)")
    runner.add_argument("--rehearse", action="store_true", help="stand-in sizes on the CPU")
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("name", choices=sorted(WORKERS))
    worker.add_argument("--work", type=Path, required=True)
    worker.add_argument("--site", type=Path, required=True, help="where the wheelhouse was installed")
    worker.add_argument("--rehearse", action="store_true")
    args = parser.parse_args()
    if args.command == "wheelhouse":
        return build_wheelhouse(args.dir)
    if args.command == "run":
        return run(args)
    return WORKERS[args.name](args.work, args.site, args.rehearse)


if __name__ == "__main__":
    sys.exit(main())
