"""Atomic writes of the pipeline's artefacts (parquet, JSON, model folders) and resume folders.

Every artefact is first written next to its final path and then moved into place with
``os.replace``, so an interrupted job never leaves a half-written file that a later run would
mistake for a finished one. Long stages keep their partial work (sample shards, training
checkpoints) in a resume folder stamped with a fingerprint of everything that determines the
result, so a rerun after a config, input or code change starts over instead of resuming.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from advdistill.errors import InputError, OutputError
from advdistill.paths import MANIFEST_SUFFIX, temporary_prefix

log = logging.getLogger(__name__)

# errno values that mean the disk refused the bytes, whichever code was writing
DISK_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _umask() -> int:
    """The process umask (Python can read it only by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _output_error(path: Path, err: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {err.strerror or err}")


def _temporary_sibling(path: Path, is_dir: bool = False) -> Path:
    """A new file or folder beside ``path``, with the mode a plain ``open``/``mkdir`` would give it (mkstemp and
    mkdtemp create 0600/0700, which other users of a shared results folder could not read)."""
    prefix = temporary_prefix(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        else:
            handle, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
            os.close(handle)
            tmp = Path(name)
        tmp.chmod((0o777 if is_dir else 0o666) & ~_umask())
    except OSError as err:
        raise _output_error(path, err) from err
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write`` on a temporary sibling of ``path``, then move the result onto ``path``.

    ``write`` only writes the sibling, so any ``OSError`` it raises is the output refusing (read-only, full disk)
    and becomes an :class:`OutputError` naming ``path``."""
    path = Path(path)
    tmp = _temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise _output_error(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_parquet(df: pl.DataFrame, path: str | os.PathLike) -> None:
    """Serialise in memory first: polars reports a failed disk write as a parquet error ("Invalid thrift: transport
    error", "File out of specification"), whereas Python's own write raises the ``OSError`` that names the cause."""
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def read_parquet(path: str | os.PathLike, columns: Mapping[str, pl.DataType] | None = None) -> pl.DataFrame:
    """Read an input table; ``columns`` (name -> dtype) must be present with that dtype (any integer dtype stands
    for an integer one). Errors name the file and the column."""
    path = Path(path)
    try:
        frame = pl.read_parquet(path)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except (OSError, pl.exceptions.PolarsError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable parquet file ({first_line})") from err
    columns = columns or {}
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise InputError(f"{path}: no column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})")
    for name, expected in columns.items():
        actual = frame.schema[name]
        if not (actual == expected or (expected.is_integer() and actual.is_integer())):
            wanted = "an integer" if expected.is_integer() else str(expected)
            raise InputError(f"{path}: column '{name}' has type {actual}, expected {wanted}")
    return frame


def write_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"))


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


ARTEFACT_MARKER = ".advdistill-artefact"
"""A file inside every folder this package writes: only a folder that holds it may be replaced."""


def _may_delete(path: Path, marker: str) -> bool:
    """Nothing is there, an empty folder, or a real folder (not a link) holding this package's ``marker``."""
    if not path.exists() and not path.is_symlink():
        return True
    return path.is_dir() and not path.is_symlink() and ((path / marker).is_file() or not any(path.iterdir()))


def check_replaceable(path: Path) -> None:
    """An existing ``path`` may be replaced only if this package wrote it (its marker is inside) or it is an
    empty folder: a stage never deletes what it cannot prove it wrote."""
    if _may_delete(path, ARTEFACT_MARKER):
        return
    raise OutputError(f"{path} exists and was not written by advdistill (no {ARTEFACT_MARKER} inside): refusing to "
                      "replace it; move it away or choose another output path")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` once the block finishes without error.

    The folder gets the artefact marker; an existing ``path`` without it stops the stage before any work.
    """
    path = Path(path)
    check_replaceable(path)
    tmp = _temporary_sibling(path, is_dir=True)
    try:
        try:
            yield tmp
        except OSError as err:  # the block may also read inputs: only a refusing disk is the output's fault
            if err.errno in DISK_REFUSED:
                raise _output_error(path, err) from err
            raise
        try:
            (tmp / ARTEFACT_MARKER).write_text("written by advdistill; the pipeline may replace this folder\n")
            check_replaceable(path)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except OSError as err:
            raise _output_error(path, err) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


RESUME_MARKER = "fingerprint.json"


def check_resume_folder(path: Path) -> None:
    """``path`` may serve as a resume folder: absent, empty, or stamped with a run's fingerprint."""
    if _may_delete(path, RESUME_MARKER):
        return
    raise OutputError(f"{path} exists and is not a resume folder of advdistill (no {RESUME_MARKER} inside): "
                      "refusing to delete it; move it away or choose another folder")


def claim_resume_folder(path: str | os.PathLike, fingerprint: str) -> None:
    """Make ``path`` the resume folder of the run identified by ``fingerprint``: partial work of this same run
    is kept, a folder left by another run (another fingerprint) is deleted first, and a non-empty folder
    without a fingerprint, which this package did not make, stops the stage untouched."""
    path = Path(path)
    marker = path / RESUME_MARKER
    check_resume_folder(path)
    try:
        if marker.is_file() and read_json(marker) != fingerprint:
            log.info("discarding partial work of a different run in %s", path)
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _output_error(path, err) from err
    write_json(fingerprint, marker)


def manifest_path(output: Path) -> Path:
    """Where a stage's provenance manifest of ``output`` lives: ``<output>.manifest.json`` beside it."""
    return output.with_name(output.name + MANIFEST_SUFFIX)
