"""Atomic writes of the pipeline's artefacts (parquet, JSON, model folders) and resume folders.

Every artefact is first written next to its final path and then moved into place with
``os.replace``, so an interrupted job never leaves a half-written file that a later run would
mistake for a finished one. Long stages keep their partial work (sample shards, training
checkpoints) in a resume folder stamped with a fingerprint of everything that determines the
result, so a rerun after a config, input or code change starts over instead of resuming.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)


def _temporary_sibling(path: Path, is_dir: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    handle, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    os.close(handle)
    return Path(name)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write`` on a temporary sibling of ``path``, then move the result onto ``path``."""
    path = Path(path)
    tmp = _temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_parquet(df: pl.DataFrame, path: str | os.PathLike) -> None:
    atomic_write(path, df.write_parquet)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` once the block finishes without error."""
    path = Path(path)
    tmp = _temporary_sibling(path, is_dir=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def claim_resume_folder(path: str | os.PathLike, fingerprint: str) -> None:
    """Make ``path`` the resume folder of the run identified by ``fingerprint``: a folder left by a run
    with another (or no) fingerprint is deleted first, partial work of this same run is kept."""
    path = Path(path)
    marker = path / "fingerprint.json"
    if path.exists() and not (marker.exists() and read_json(marker) == fingerprint):
        log.info("discarding partial work of a different run in %s", path)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json(fingerprint, marker)
