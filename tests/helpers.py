"""Helpers that several test modules share: the repository's paths, a copy of the workflow for a Snakemake run of
its own, the CLI run in-process or as its own process, and a tiny untrained model saved like a hub model.
Fixtures built on them are in ``conftest.py``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from advdistill import cli, rehearsal
from advdistill.config import ModelShape, TokenizerConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The paper configurations; config/paper/offline.example.yaml beside them is an overrides file, not one of them.
PAPER_CONFIGS = sorted(path for path in (REPO / "config" / "paper").glob("*.yaml")
                       if not path.name.endswith(".example.yaml"))
WORKFLOW_FILES = ("Snakefile", "workflow", "profiles", "advdistill", "kernels", ".test", "containers", "config")


def copy_workflow(workdir: Path) -> Path:
    """A copy of the workflow, package sources and configs in ``workdir``, for a snakemake run of its own (jobs
    run the installed package; the copy's sources feed the code-version parameters)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy2(source, workdir / name)
    return workdir


# Every rule that asks for two threads gets one, as in a rehearsal (test models are tiny too).
ONE_THREAD = rehearsal.ONE_THREAD


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "--cores", "2", *ONE_THREAD, *args], cwd=workdir, capture_output=True,
                          text=True, timeout=900)


def assert_clean_stop(result: subprocess.CompletedProcess) -> str:
    """Planning stopped before any job, with the message alone: no traceback, no job planned."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output and 'File "' not in output and "Exception" not in output, output[-3000:]
    assert "Job stats" not in output
    return output


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``advdistill *argv`` in this process: exit status and stderr."""
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def run_cli_process(*argv: str, cwd: Path, prefix: tuple[str, ...] = (), **kwargs) -> subprocess.CompletedProcess:
    """``advdistill *argv`` as its own process (``prefix`` e.g. drops privileges), from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "advdistill.cli", *map(str, argv)], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env=env, **kwargs)


@contextmanager
def loaded_script(path: Path) -> Iterator[ModuleType]:
    """A script (not a package module) imported as a module, registered in ``sys.modules`` while in use (its
    dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def file_stamps(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time: equal stamps, not one file written."""
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def save_untrained_model(path: Path, train_rows, hidden_size: int) -> Path:
    """An untrained one-layer Qwen2 (two heads) with the pipeline's tokenizer, saved like a hub model."""
    from advdistill.bootstrap import build_model, train_tokenizer

    tokenizer = train_tokenizer(train_rows.to_dicts(), TokenizerConfig(vocab_size=320))
    model = build_model(tokenizer, ModelShape(hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                                              num_key_value_heads=1, intermediate_size=2 * hidden_size), seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
