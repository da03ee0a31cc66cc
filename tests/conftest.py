"""Shared fixtures: a tiny bootstrapped model folder and prepared synthetic rows (shared helpers: ``helpers.py``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from advdistill.datasets import get_adapter
from advdistill.datasets.base import normalise_split
from advdistill.io import write_parquet
from tests.helpers import save_untrained_model


def pytest_configure(config):
    """Build the cpp kernel extension, and keep its GEMM timings, in a folder of this run (the workflows' stages
    inherit it), not in the user's ~/.cache/advdistill_kernels: tests leave the machine as they found it. A cache
    given in ADVDISTILL_KERNELS_CACHE is used as it is."""
    if "ADVDISTILL_KERNELS_CACHE" not in os.environ:
        config.kernels_cache = tempfile.mkdtemp(prefix="advdistill-kernels-")
        os.environ["ADVDISTILL_KERNELS_CACHE"] = config.kernels_cache


def pytest_unconfigure(config):
    if cache := getattr(config, "kernels_cache", None):
        shutil.rmtree(cache, ignore_errors=True)
        os.environ.pop("ADVDISTILL_KERNELS_CACHE", None)


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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_rows) -> Path:
    return save_untrained_model(tmp_path_factory.mktemp("models") / "tiny", synthetic_rows[0], hidden_size=32)
