"""Atomic writes of the pipeline's artefacts (parquet, JSON, model folders) and resume folders.

Every artefact is first written next to its final path and then moved into place with
``os.replace``, so an interrupted job never leaves a half-written file that a later run would
mistake for a finished one. Long stages keep their partial work (sample shards, training
checkpoints) in a resume folder stamped with a fingerprint of everything that determines the
result, so a rerun after a config, input or code change starts over instead of resuming.
A folder written as a whole carries a marker naming the stage that wrote it, and only that stage replaces it; a
job holds each of its outputs with a lock for its whole life (:func:`hold_output`), so a second job on the same
output stops at once. The disk refusing bytes, in whatever library's error type (:func:`disk_refusal`), and a
damaged input JSON (:func:`read_json`) are one-line errors naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from advdistill.errors import InputError, OutputError
from advdistill.paths import MANIFEST_SUFFIX, is_temporary_of, lock_file, temporary_prefix

log = logging.getLogger(__name__)

# errno values that mean the disk refused the bytes, whichever code was writing
DISK_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
# What writers with I/O of their own raise instead of an OSError when the disk refuses: safetensors (Rust) a
# SafetensorError whose text carries the OS message ("IoError(Os { code: 28, kind: StorageFull, message: "No space
# left on device (os error 28)"), tokenizers an Exception with "(os error 28)", torch's zip writer a RuntimeError that
# names no cause at all ("PytorchStreamWriter failed writing file data/0: file write failed", "unexpected pos 576 vs
# 534" on a full tmpfs).
REFUSED_TEXTS = {os.strerror(code): os.strerror(code) for code in sorted(DISK_REFUSED)} | {
    "StorageFull": os.strerror(errno.ENOSPC), "QuotaExceeded": os.strerror(errno.EDQUOT),
    "FileTooLarge": os.strerror(errno.EFBIG), "ReadOnlyFilesystem": os.strerror(errno.EROFS)}
WRITER_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def disk_refusal(err: BaseException) -> str | None:
    """Why the disk refused a write, if ``err`` (or an error it was raised from) says so: an ``OSError`` with one of
    :data:`DISK_REFUSED`, or a library's own error type whose text names one (:data:`REFUSED_TEXTS`) or is a failed
    write that names no cause (:data:`WRITER_FAILURES`). ``None``: any other error, left as it is."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_REFUSED:
            return err.strerror or os.strerror(err.errno)
        text = str(err)
        for needle, reason in REFUSED_TEXTS.items():
            if needle in text:
                return reason
        if any(needle in text for needle in WRITER_FAILURES):
            line = next((part for part in text.splitlines() if any(n in part for n in WRITER_FAILURES)), text)
            return f"the write failed ({line.split('] ', 1)[-1].strip(' .')}); is the disk full?"
        err = err.__cause__ or err.__context__
    return None


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
    except Exception as err:  # a library writer's own error type for a refusing disk (disk_refusal)
        reason = disk_refusal(err)
        if reason is None:
            raise
        raise OutputError(f"cannot write {path}: {reason}") from err
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


JSON_OBJECT = "a JSON object"


def check_rows(frame: pl.DataFrame, path: Path, problems: Mapping[str, pl.Expr], shown: list[str]) -> None:
    """Stop at the first problem (description -> the rows that have it) any row of an input table has, naming the
    file, the count and the first rows (0-based) by their ``shown`` columns."""
    indexed = frame.with_row_index("row")
    for what, expr in problems.items():
        bad = indexed.filter(expr)
        if bad.height:
            first = "; ".join(f"row {r.pop('row')} (" + ", ".join(f"{k} {v!r}" for k, v in r.items()) + ")"
                              for r in bad.select("row", *shown).head(3).iter_rows(named=True))
            raise InputError(f"{path}: {bad.height} row(s) with {what}, first: {first}")


def read_json(path: str | os.PathLike, fields: Mapping[str, tuple[Callable[[Any], bool], str]] | None = None) -> Any:
    """An input JSON file; a missing, unreadable or damaged one is an :class:`InputError` naming it. With
    ``fields`` (key -> (check, what it must be)) the file must hold a JSON object whose keys, where present, pass
    their check: a file of the wrong shape is named here instead of failing later where a value is used."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read it ({getattr(err, 'strerror', None) or err})") from err
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err}); was it cut off or edited?") from err
    if fields is not None:
        if not isinstance(value, dict):
            raise InputError(f"{path}: holds a JSON {_json_kind(value)}, expected {JSON_OBJECT}")
        for key, (check, what) in fields.items():
            if key in value and not check(value[key]):
                raise InputError(f"{path}: '{key}' is {_json_kind(value[key])} {json.dumps(value[key])[:60]}, "
                                 f"expected {what}")
    return value


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def optional_number(value: Any) -> bool:
    return value is None or is_number(value)


def list_of_objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(entry, dict) for entry in value)


def object_of_numbers(value: Any) -> bool:
    return isinstance(value, dict) and all(optional_number(v) for v in value.values())


ARTEFACT_MARKER = ".advdistill-artefact"
"""A file inside every folder this package writes as a whole, naming the stage (and its option) that wrote it:
only a folder that holds it may be replaced, and only by a job of that same stage and option."""
LEGACY_TRACKER_MARKER = "tracker files of one advdistill training run"
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "*.safetensors", "*.bin", "*.pt", "*.gguf")


def artefact_marker(stage: str | None, output: str = "--out") -> str:
    return json.dumps({"written_by": "advdistill", "stage": stage, "output": output}) + "\n"


def write_artefact_marker(folder: Path, stage: str | None, output: str = "--out") -> None:
    (folder / ARTEFACT_MARKER).write_text(artefact_marker(stage, output), encoding="utf-8")


def folder_writer(folder: Path) -> tuple[str, str] | None:
    """(stage, option) that wrote ``folder``, from its marker (which must exist).

    A marker of an older advdistill names no stage. Where its content still tells the kind, that kind is taken: the
    tracker folder's marker says so in words, and a folder without a model or tokenizer (``MODEL_FILES``) can only
    be a report. A model or tokenizer folder could be bootstrap-tokenizer's, bootstrap-model's, standin's or train's:
    ``None``, which no stage may replace (its owner deletes it by hand), since the costly work of one stage must
    never be replaced by another's."""
    try:
        text = (folder / ARTEFACT_MARKER).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    try:
        marker = json.loads(text)
    except ValueError:
        marker = None
    if isinstance(marker, dict) and isinstance(marker.get("stage"), str):
        return marker["stage"], str(marker.get("output") or "--out")
    if text.startswith(LEGACY_TRACKER_MARKER):
        return "train", "--tracker-dir"
    if any(next(folder.glob(pattern), None) is not None for pattern in MODEL_FILES):
        return None
    return "report", "--out-dir"


def _is_empty_folder(path: Path) -> bool:
    return not any(path.iterdir())


def check_replaceable(path: Path, stage: str | None = None, output: str = "--out") -> None:
    """An existing ``path`` may be replaced by the ``output`` folder of ``stage`` only if that same stage and
    option wrote it (the marker inside says so) or it is an empty folder: a stage never deletes what it cannot
    prove it wrote, nor the folder another stage wrote (``report --out-dir`` at a trained model). Every stage names
    itself; a caller that names no ``stage`` (a library user) may replace any folder advdistill wrote."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise OutputError(f"{output} {path} exists and is {describe_file(path)}, not a folder advdistill wrote: "
                          "refusing to replace it; move it away or choose another output path")
    if not (path / ARTEFACT_MARKER).is_file():
        if _is_empty_folder(path):
            return
        raise OutputError(f"{output} {path} exists and was not written by advdistill (no {ARTEFACT_MARKER} inside): "
                          "refusing to replace it; move it away or choose another output path")
    if stage is None:
        return
    writer = folder_writer(path)
    if writer is None:
        raise OutputError(f"{output} {path} holds a model or tokenizer written by an older advdistill that did not "
                          f"record which stage wrote it: refusing to replace it with the {output} of {stage}; delete "
                          "it yourself if it may go, or choose another output path")
    if writer != (stage, output):
        raise OutputError(f"{output} {path} was written by advdistill {writer[0]} ({writer[1]}), not as the {output} "
                          f"of {stage}: a stage replaces only folders of its own kind; move it away or choose another "
                          "output path")


def describe_file(path: Path) -> str:
    """What kind of file ``path`` is (not following a link), as an error message says it."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return f"a symbolic link (to {os.readlink(path)})"
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "a special file")


def check_output_file(path: Path, option: str) -> None:
    """A file output is absent or a regular file: a FIFO, device or socket would be replaced by a regular file
    (``--summary /dev/null`` run as root replaces the system's), and a symbolic link by a file of ours."""
    if not os.path.lexists(path):
        return
    if stat.S_ISREG(os.lstat(path).st_mode):
        return
    raise OutputError(f"{option} {path} exists and is {describe_file(path)}: a stage writes only regular files of its "
                      "own; move it away or choose another output path")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, stage: str | None = None, output: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` once the block finishes without error.

    The folder gets the artefact marker naming ``stage`` and its ``output`` option; an existing ``path`` that is not
    that stage's folder (:func:`check_replaceable`) stops the stage before any work. A disk that refuses the bytes,
    whatever library was writing (:func:`disk_refusal`), is an :class:`OutputError` naming ``path``, and the
    temporary folder is removed: nothing half-written stays.
    """
    path = Path(path)
    check_replaceable(path, stage, output)
    tmp = _temporary_sibling(path, is_dir=True)
    try:
        try:
            yield tmp
        except Exception as err:  # the block may also read inputs: only a refusing disk is the output's fault
            reason = disk_refusal(err)
            if reason is not None:
                raise OutputError(f"cannot write {path}: {reason}") from err
            raise
        try:
            write_artefact_marker(tmp, stage, output)
            check_replaceable(path, stage, output)
            _move_into_place(tmp, path)
        except OSError as err:
            raise _output_error(path, err) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _move_into_place(folder: Path, path: Path) -> None:
    """Move ``folder`` onto ``path``. An old folder at ``path`` is first renamed aside to a temporary sibling and
    deleted only once ``folder`` is in place: a job killed meanwhile leaves the whole old folder or the whole new one
    at ``path`` (or neither), never a half-deleted one that still holds its marker and looks complete. A sibling left
    behind is removed by the next job of that output (:func:`remove_stale_temporaries`)."""
    if not os.path.lexists(path):
        os.replace(folder, path)
        return
    old = _temporary_sibling(path, is_dir=True)  # reserves the name: a folder renamed onto an empty one replaces it
    try:
        os.replace(path, old)
    except OSError:
        old.rmdir()
        raise
    try:
        os.replace(folder, path)
    except OSError:
        os.replace(old, path)  # the stage failed: its output stays as it was
        raise
    try:
        shutil.rmtree(old)
    except OSError as err:  # the new folder is complete: failing the stage now would only cost its work
        log.warning("%s is written, but its old folder, renamed to %s, could not be deleted (%s); the next job of "
                    "that output removes it", path, old, err.strerror or err)


RESUME_MARKER = "fingerprint.json"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
"""A sha256 digest in hex: the whole resume marker of an older advdistill, and a cached image digest."""


def resume_owner(path: Path) -> tuple[str | None, str | None]:
    """(stage, fingerprint) of a resume folder's marker; the stage is None in a marker of an older advdistill (a
    bare fingerprint, :data:`SHA256_HEX`) or of a caller that named none. Both are None for a marker that
    advdistill did not write (damaged, or another tool's ``fingerprint.json``): nothing proves the folder ours."""
    try:
        marker = read_json(path / RESUME_MARKER)
    except InputError:
        return None, None
    if isinstance(marker, str) and SHA256_HEX.fullmatch(marker):
        return None, marker
    if (isinstance(marker, dict) and marker.keys() == {"stage", "fingerprint"}
            and isinstance(marker["stage"], (str, type(None))) and isinstance(marker["fingerprint"], str)):
        return marker["stage"], marker["fingerprint"]
    return None, None


def check_resume_folder(path: Path, stage: str | None = None, option: str = "resume folder") -> None:
    """``path`` may serve as a resume folder of ``stage``: absent, empty, or stamped with a run's fingerprint by that
    stage. A marker that names no stage (an older advdistill's) is taken as any stage's: a resume folder only ever
    holds partial work, which its own stage discards too when the fingerprint differs (it includes the code)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise OutputError(f"{option} {path} exists and is {describe_file(path)}, not a resume folder of advdistill: "
                          "refusing to delete it; move it away or choose another folder")
    if not (path / RESUME_MARKER).is_file():
        if _is_empty_folder(path):
            return
        raise OutputError(f"{option} {path} exists and is not a resume folder of advdistill (no {RESUME_MARKER} "
                          "inside): refusing to delete it; move it away or choose another folder")
    owner, fingerprint = resume_owner(path)
    if fingerprint is None:
        raise OutputError(f"{option} {path} exists and is not a resume folder of advdistill (its {RESUME_MARKER} is "
                          "not one advdistill writes): refusing to delete it; move it away or choose another folder")
    if stage is not None and owner is not None and owner != stage:
        raise OutputError(f"{option} {path} is a resume folder of advdistill {owner}, not of {stage}: refusing to "
                          "delete its partial work; choose another folder")


def claim_resume_folder(path: str | os.PathLike, fingerprint: str, stage: str | None = None) -> None:
    """Make ``path`` the resume folder of the run identified by ``fingerprint`` (of ``stage``): partial work of this
    same run is kept, a folder left by another run (another fingerprint) is deleted first, a non-empty folder
    without a fingerprint this package wrote (none, or a damaged or foreign ``fingerprint.json``), or another
    stage's, stops the stage untouched. Temporary files a killed job left inside (``.<name>.tmp-*``) are removed."""
    path = Path(path)
    marker = path / RESUME_MARKER
    check_resume_folder(path, stage)
    try:
        if marker.is_file() and resume_owner(path)[1] != fingerprint:
            log.info("discarding partial work of a different run in %s", path)
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        for entry in path.iterdir():
            name, dot, _ = entry.name[1:].rpartition(".tmp-")
            if entry.name.startswith(".") and dot and is_temporary_of(name, entry.name):
                _remove(entry)
    except OSError as err:
        raise _output_error(path, err) from err
    write_json({"stage": stage, "fingerprint": fingerprint}, marker)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` (``.<name>.tmp-`` and tempfile's random characters) that a killed
    job left: files of :func:`atomic_write`, folders of :func:`atomic_directory`. Only names of exactly that pattern
    go; call it only while holding the output (:func:`hold_output`), so that no live job's temporary is among them."""
    path = Path(path)
    removed = []
    try:
        entries = list(path.parent.iterdir()) if path.parent.is_dir() else []
        for entry in entries:
            if is_temporary_of(path.name, entry.name):
                log.info("removing %s, left by a job that was killed while writing %s", entry, path)
                _remove(entry)
                removed.append(entry)
    except OSError as err:
        raise _output_error(path, err) from err
    return removed


def _lock_holder(handle: int) -> str:
    try:
        text = os.pread(handle, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return f"another job ({text})" if text else "another job"


@contextlib.contextmanager
def hold_output(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``path`` for this job: an exclusive ``flock`` on its lock file ``.<name>.lock`` beside it, for as long as
    the block runs. A second job writing the same output (or resume folder) stops at once with an
    :class:`OutputError` naming it and the job that holds it, instead of mixing its work with the first's. The kernel
    drops the lock when the process ends, however it ends (SIGKILL included); the lock file is removed on the way
    out (a killed job leaves it, and the next job takes it over).

    On a file system without ``flock`` (some network mounts) the output is written unheld, with a warning.
    """
    path = Path(path)
    lock = lock_file(path)
    handle = _locked_handle(path, lock)
    if handle is None:
        yield path
        return
    try:
        with contextlib.suppress(OSError):  # who holds it, for the message of a second job; a full disk may refuse
            os.ftruncate(handle, 0)
            os.pwrite(handle, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(handle)


def _locked_handle(path: Path, lock: Path) -> int | None:
    """An open handle of ``lock`` holding its exclusive flock (None: the file system has no locks)."""
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OutputError(f"{lock}, the lock file of {path}, is a symbolic link: refusing to follow it; "
                                  "move it away") from err
            raise _output_error(path, err) from err
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise OutputError(f"{lock}, the lock file of {path}, is {describe_file(lock)}: move it away")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise OutputError(f"{path} is held by {_lock_holder(handle)}, which is writing it: two jobs on one "
                                  "output would mix their work; wait for that job to end or choose another output "
                                  "path") from err
            except OSError as err:  # a file system without locks
                log.warning("cannot lock %s (%s): writing %s without protection from a second job", lock,
                            err.strerror, path)
                os.close(handle)
                return None
            try:  # the job that held it may have removed the file before we locked it: then lock the new one
                if os.path.samestat(os.fstat(handle), os.stat(lock, follow_symlinks=False)):
                    return handle
            except FileNotFoundError:
                pass
            os.close(handle)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(handle)
            raise


def manifest_path(output: Path) -> Path:
    """Where a stage's provenance manifest of ``output`` lives: ``<output>.manifest.json`` beside it."""
    return output.with_name(output.name + MANIFEST_SUFFIX)


MANIFEST_KEYS = frozenset({"stage", "settings_sha256", "settings", "package_version", "git_commit", "container", "host",
                           "seed", "inputs", "started_unix", "wall_seconds"})
"""The keys of every provenance manifest advdistill has written (:func:`advdistill.provenance.stage_manifest`; later
versions add more)."""
OWN_JSON_LIMIT = 64 << 20
"""More than any JSON file a stage derives from its output (a merge's manifest holds its parts' too)."""


def json_keys(path: Path) -> set[str] | None:
    """The keys of the JSON object in ``path``; None where it holds none: not JSON, not an object, unreadable, or
    larger than :data:`OWN_JSON_LIMIT` (not read whole)."""
    try:
        with path.open("rb") as handle:
            text = handle.read(OWN_JSON_LIMIT + 1)
        value = json.loads(text) if len(text) <= OWN_JSON_LIMIT else None
    except (OSError, ValueError, RecursionError):
        return None
    return set(value) if isinstance(value, dict) else None


def parquet_columns(path: Path) -> list[str] | None:
    """The column names of the parquet file ``path``, from its footer alone; None where it is no readable parquet."""
    try:
        return list(pl.read_parquet_schema(path))
    except (OSError, pl.exceptions.PolarsError):
        return None
