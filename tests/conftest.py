"""Shared fixtures: a tiny bootstrapped model folder and prepared synthetic rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from advdistill.config import ModelShape, TokenizerConfig
from advdistill.datasets import get_adapter, normalise_split
from advdistill.io import write_parquet

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
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


def pytest_collection_modifyitems(items):
    """Run the SLURM cluster's tests last: while the Slurm packages it may install are there, every snakemake
    start without its SLURM_CONF waits ~10 s in the SLURM executor plugin's `scontrol show config` probe."""
    items.sort(key=lambda item: item.path.name == "test_slurm.py")


@pytest.fixture(scope="session")
def synthetic_rows():
    adapter = get_adapter("synthetic", "synthetic", {"seed": 7, "n_train": 64, "n_test": 16})
    train, _ = normalise_split(adapter, "train", "arith")
    test, _ = normalise_split(adapter, "test", "arith")
    return train, test


@pytest.fixture(scope="session")
def rows_file(tmp_path_factory, synthetic_rows):
    path = tmp_path_factory.mktemp("rows") / "train.parquet"
    write_parquet(synthetic_rows[0], path)
    return path


def save_untrained_model(path: Path, train_rows, hidden_size: int) -> Path:
    """An untrained one-layer Qwen2 (two heads) with the pipeline's tokenizer, saved like a hub model."""
    from advdistill.bootstrap import build_model, train_tokenizer

    tokenizer = train_tokenizer(train_rows.to_dicts(), TokenizerConfig(vocab_size=320))
    model = build_model(tokenizer, ModelShape(hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                                              num_key_value_heads=1, intermediate_size=2 * hidden_size), seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_rows) -> Path:
    return save_untrained_model(tmp_path_factory.mktemp("models") / "tiny", synthetic_rows[0], hidden_size=32)
