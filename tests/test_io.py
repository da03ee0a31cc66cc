"""Atomic artefact writes: the modes a plain open/mkdir gives, and a refusing disk as a one-line error."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from advdistill import io as advdistill_io
from advdistill.errors import InputError, OutputError
from advdistill.io import (
    ARTEFACT_MARKER,
    atomic_directory,
    atomic_write,
    check_resume_folder,
    claim_resume_folder,
    read_parquet,
    remove_stale_temporaries,
    write_json,
    write_parquet,
)
from advdistill.paths import is_temporary_of
from tests.helpers import files_under, run_cli_process

SYNTHETIC = ("prepare", "--dataset", "synthetic", "--source", "synthetic", "--split", "test",
             "--options", '{"n_test": 2000}')  # rows parquet of about 30 KB


@pytest.fixture()
def umask():
    """Set the process umask for one test, and restore it."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.failure_mode("artefacts unreadable by the group or others (mkstemp/mkdtemp create 0600/0700)",
                          sees="files 0666 & ~umask, folders 0777 & ~umask, as a plain open or mkdir gives",
                          kept="every artefact, with the usual mode")
@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                            (0o077, 0o600, 0o700)])
def test_artefacts_get_the_mode_the_umask_gives(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    write_json({"a": 1}, tmp_path / "deep" / "t.json")
    atomic_write(tmp_path / "t.txt", lambda tmp: tmp.write_text("x"))
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "weights.bin").write_bytes(b"0")
    written = {"t.parquet", "deep/t.json", "t.txt", "model/weights.bin", f"model/{ARTEFACT_MARKER}"}
    for name in written:
        assert (tmp_path / name).stat().st_mode & 0o777 == file_mode, name
    for name in ("deep", "model"):
        assert (tmp_path / name).stat().st_mode & 0o777 == dir_mode, name
    assert files_under(tmp_path) == written


def drop_root_privileges() -> tuple[str, ...]:
    """A command prefix under which file modes bind: none for a normal user; root loses its override."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: a read-only folder would not stop root")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


@pytest.mark.failure_mode("read-only output folder",
                          sees="one line 'cannot write <file>: Permission denied', exit 2, no traceback",
                          kept="the folder as it was: no output, no temporary file")
def test_read_only_output_folder_is_a_one_line_error(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    out.chmod(0o555)
    try:
        done = run_cli_process(*SYNTHETIC, "--out", out / "rows.parquet", cwd=tmp_path, prefix=drop_root_privileges())
    finally:
        out.chmod(0o755)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"advdistill prepare: error: cannot write {out / 'rows.parquet'}: Permission denied")
    assert files_under(tmp_path) == set()


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def small_tmpfs(folder) -> tuple[str, ...]:
    """A command prefix that mounts a 16 KiB tmpfs on ``folder`` in a mount namespace of its own (root only), runs
    the command and then lists what it left there on stdout (the mount is gone once the namespace ends)."""
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)],
                           capture_output=True) if os.geteuid() == 0 and shutil.which("unshare") else None
    if probe is None or probe.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount namespaces)")
    script = f'mount -t tmpfs -o size=16k tmpfs {folder} || exit 99; "$@"; code=$?; ls -A {folder}; exit $code'
    return ("unshare", "-m", "sh", "-c", script, "sh")


@pytest.mark.failure_mode("output disk full (or the file size limit reached) while writing",
                          sees="one line 'cannot write <file>: No space left on device' (or 'File too large'), "
                               "exit 2, no traceback",
                          kept="the folder as it was: no partial output, no temporary file")
@pytest.mark.parametrize("fault", ["full tmpfs", "file size limit"])
def test_full_disk_is_a_one_line_error(tmp_path, fault):
    out = tmp_path / "results"
    out.mkdir()
    if fault == "full tmpfs":
        done = run_cli_process(*SYNTHETIC, "--out", out / "rows.parquet", cwd=tmp_path, prefix=small_tmpfs(out))
        cause = "No space left on device"
    else:
        done = run_cli_process(*SYNTHETIC, "--out", out / "rows.parquet", cwd=tmp_path, preexec_fn=limit_file_size)
        cause = "File too large"
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"advdistill prepare: error: cannot write {out / 'rows.parquet'}: {cause}"
    assert done.stdout == "" and files_under(tmp_path) == set()


def test_a_full_disk_inside_an_atomic_directory_names_it(tmp_path):
    def full(*_):
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write .*model: No space left on device"):
        with atomic_directory(tmp_path / "model") as tmp:
            full(tmp)
    with pytest.raises(FileNotFoundError):  # an input the block reads is not the output's fault
        with atomic_directory(tmp_path / "model"):
            (tmp_path / "missing.txt").read_text()
    assert files_under(tmp_path) == set() and list(tmp_path.iterdir()) == []


@pytest.mark.failure_mode("input parquet of any stage reading through io.read_parquet: corrupt, truncated, a column "
                          "missing or of another type",
                          sees="InputError naming the file (and the column), one line from the CLI, exit 2",
                          kept="everything; nothing is written")
def test_read_parquet_names_the_file_and_the_column(tmp_path):
    good = tmp_path / "good.parquet"
    pl.DataFrame({"n": [1, 2], "s": ["a", "b"]}, schema={"n": pl.Int64, "s": pl.String}).write_parquet(good)
    assert read_parquet(good, {"n": pl.Int32, "s": pl.String})["n"].to_list() == [1, 2]  # any integer dtype
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(InputError, match=rf"^{truncated}: not a readable parquet file \(.+\)$"):
        read_parquet(truncated)
    with pytest.raises(InputError, match=rf"^{good}: no column\(s\) m \(found: n, s\)$"):
        read_parquet(good, {"m": pl.String})
    with pytest.raises(InputError, match=rf"^{good}: column 's' has type String, expected an integer$"):
        read_parquet(good, {"s": pl.Int32})


def user_folder(path: Path) -> Path:
    """A folder of the user's, as a precious file would sit in one."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    return path


@pytest.mark.failure_mode(
    "output folder path names a folder the user owns",
    sees="one line: exists and was not written by advdistill, refusing to replace it; exit 2",
    kept="the folder and everything in it; the stage does no work")
def test_a_folder_without_the_marker_is_never_replaced(tmp_path):
    foreign = user_folder(tmp_path / "mine")
    with pytest.raises(OutputError, match="not written by advdistill"):
        with atomic_directory(foreign) as tmp:
            (tmp / "model.bin").write_bytes(b"0")
    assert (foreign / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]

    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "v1").write_text("1")
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [ARTEFACT_MARKER, "v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model"]  # the old folder's set-aside copy is gone
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:
        (tmp / "v1").write_text("1")
    assert (tmp_path / "empty" / "v1").exists()


@pytest.mark.failure_mode(
    "resume folder path names a folder the user owns",
    sees="one line: not a resume folder of advdistill, refusing to delete it; exit 2",
    kept="the folder and everything in it")
def test_a_resume_folder_is_claimed_only_if_empty_or_stamped_by_a_run(tmp_path):
    foreign = user_folder(tmp_path / "mine")
    with pytest.raises(OutputError, match="not a resume folder of advdistill"):
        claim_resume_folder(foreign, "run-a")
    assert (foreign / "thesis.tex").exists()

    claim_resume_folder(tmp_path / "work", "run-a")
    (tmp_path / "work" / "shard-0").write_text("partial")
    claim_resume_folder(tmp_path / "work", "run-a")
    assert (tmp_path / "work" / "shard-0").exists()
    claim_resume_folder(tmp_path / "work", "run-b")
    assert not (tmp_path / "work" / "shard-0").exists()


def contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("marker", ['{"note": "mine"}', '"my notes"', '[1, 2]', '{"stage": "train", "fing',
                                    '{"stage": "train", "fingerprint": "fp", "note": "mine"}', '{"fingerprint": 3}'])
def test_a_folder_with_a_fingerprint_json_advdistill_did_not_write_is_never_claimed(tmp_path, marker):
    foreign = user_folder(tmp_path / "proj")
    (foreign / "data").mkdir()
    (foreign / "data" / "results.csv").write_bytes(b"a,b\n1,2\n")
    (foreign / "fingerprint.json").write_text(marker)
    before = contents(foreign)
    with pytest.raises(OutputError, match=rf"^--checkpoints {foreign} exists and is not a resume folder of advdistill "
                                          r"\(its fingerprint.json is not one advdistill writes\): refusing to delete"):
        check_resume_folder(foreign, "train", "--checkpoints")
    with pytest.raises(OutputError, match="not a resume folder of advdistill"):
        claim_resume_folder(foreign, "run-a", "train")
    assert contents(foreign) == before


@pytest.mark.parametrize("marker", ['"' + "0123456789abcdef" * 4 + '"',  # an older advdistill's bare fingerprint
                                    '{"fingerprint": "run-a", "stage": null}'])
def test_a_resume_folder_of_an_older_advdistill_or_a_library_caller_is_still_claimed(tmp_path, marker):
    work = tmp_path / "work"
    work.mkdir()
    (work / "fingerprint.json").write_text(marker)
    (work / "shard-0").write_text("partial")
    claim_resume_folder(work, "run-b", "train")
    assert sorted(p.name for p in work.iterdir()) == ["fingerprint.json"]


def test_a_replaced_folder_is_complete_even_if_deleting_the_old_one_fails(tmp_path, monkeypatch, caplog):
    model = tmp_path / "model"
    with atomic_directory(model, "train") as tmp:
        (tmp / "config.json").write_text("old")
        (tmp / "weights.bin").write_text("old")

    def cut_off(folder, *args, **kwargs):
        """A deletion that stops half-way, as a killed job's would."""
        (Path(folder) / "config.json").unlink()
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(advdistill_io.shutil, "rmtree", cut_off)
    with atomic_directory(model, "train") as tmp:
        (tmp / "config.json").write_text("new")
        (tmp / "weights.bin").write_text("new")
    monkeypatch.undo()
    written = contents(model)
    assert written.pop(ARTEFACT_MARKER) and written == {"config.json": b"new", "weights.bin": b"new"}
    [aside] = [p for p in tmp_path.iterdir() if p != model]
    assert is_temporary_of("model", aside.name) and sorted(contents(aside)) == [ARTEFACT_MARKER, "weights.bin"]
    assert "could not be deleted (Input/output error)" in caplog.text
    assert remove_stale_temporaries(model) == [aside] and sorted(tmp_path.iterdir()) == [model]


def test_a_failed_swap_leaves_the_old_folder_in_place(tmp_path, monkeypatch):
    model = tmp_path / "model"
    with atomic_directory(model, "train") as tmp:
        (tmp / "weights.bin").write_text("old")
    before = contents(model)
    replace = os.replace

    def refuse_new_folder(source, target):
        if Path(target) == model and (Path(source) / "weights.bin").read_text() == "new":
            raise OSError(16, "Device or resource busy")
        replace(source, target)

    monkeypatch.setattr(advdistill_io.os, "replace", refuse_new_folder)
    with pytest.raises(OutputError, match=rf"^cannot write {model}: Device or resource busy$"):
        with atomic_directory(model, "train") as tmp:
            (tmp / "weights.bin").write_text("new")
    assert contents(model) == before and sorted(tmp_path.iterdir()) == [model]


@pytest.mark.failure_mode(
    "advdistill train --checkpoints/--out/--tracker-dir pointed at the user's folders",
    sees="one line naming the folder, exit 2, before any training",
    kept="the folders untouched")
def test_train_cli_pointed_at_foreign_folders_stops_before_deleting(tmp_path, tiny_model_dir, rows_file):
    scored = tmp_path / "scored.parquet"
    pl.DataFrame({"prompt_id": ["p"], "sample_idx": [0], "response": ["r"], "advantage": [1.0], "correct": [True],
                  "kept": [True]}).write_parquet(scored)
    for flag in ("--checkpoints", "--out", "--tracker-dir"):
        foreign = user_folder(tmp_path / flag.strip("-"))
        other_flag, other = ("--checkpoints", tmp_path / "ck") if flag == "--out" else ("--out", tmp_path / "model")
        done = subprocess.run([sys.executable, "-m", "advdistill.cli", "train", "--model", str(tiny_model_dir),
                               "--rows", str(rows_file), "--scored", str(scored), "--objective", "sft",
                               flag, str(foreign), other_flag, str(other)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert str(foreign) in done.stderr and "Traceback" not in done.stderr
        assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
