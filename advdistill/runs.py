"""One results folder per experiment: ``results/<run_name>/`` holds every output of a configuration, its logs,
benchmarks and report included, and ``run.json`` there records which config files produced it.

The record is what planning checks a configuration against (no heavy imports: planning runs on every Snakemake
call). A configuration that gives a run name already recorded for other config files, and differs from that
run's configuration, stops at planning instead of replacing its outputs; the same config files, edited, rerun
incrementally as ever. A run may build on another run's results up to scoring (``upstream_run``): it reads them,
never writes them, and only where that run's recorded configuration agrees on every key they depend on.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from advdistill.errors import ConfigError
from advdistill.paths import write_text_atomically

RESULTS = Path("results")
RECORD = "run.json"

# The keys the reused results (prepared data, tokenizer, bootstrapped models, samples, scores, evaluations of the
# teacher and base students) depend on; a student's objectives only decide what this run trains.
UPSTREAM_KEYS = ("seed", "datasets", "local_sources", "tokenizer", "teacher", "students", "prompt", "sampling",
                 "score", "evaluation")


def run_folder(name: str) -> Path:
    return RESULTS / name


def record_path(name: str) -> Path:
    return run_folder(name) / RECORD


def config_file_names(config_files: Iterable[str | os.PathLike]) -> list[str]:
    """Config files as the record keeps them: relative to the working directory where they lie inside it (a
    checkout can be moved), else absolute."""
    names = []
    for path in config_files:
        resolved = Path(path).resolve()
        try:
            names.append(resolved.relative_to(Path.cwd().resolve()).as_posix())
        except ValueError:
            names.append(resolved.as_posix())
    return names


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The config as JSON would give it back (tuples as lists), so that a fresh config and a record compare."""
    return json.loads(json.dumps(config, default=str))


def first_difference(ours: Any, theirs: Any, key: str = "") -> str | None:
    """The dotted key of the first value that differs between two configs (``None``: they agree)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for name in sorted(set(ours) | set(theirs)):
            found = first_difference(ours.get(name), theirs.get(name), f"{key}.{name}" if key else name)
            if found is not None:
                return found
        return None
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        for i, (mine, other) in enumerate(zip(ours, theirs)):
            found = first_difference(mine, other, f"{key}[{i}]")
            if found is not None:
                return found
        return None
    return None if ours == theirs else key


def read_record(name: str) -> dict[str, Any] | None:
    """A run's record, ``None`` where it has none; an unreadable one is named."""
    path = record_path(name)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable run record ({err}); move it away to start that run afresh") from err
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{path}: not a run record of this pipeline (no 'config'); move it away to start that run "
                          "afresh")
    return record


def check_run_folder(config: dict[str, Any], config_files: Iterable[str | os.PathLike]) -> None:
    """``results/<run_name>`` is a folder (or absent) and, where a run recorded it, this configuration's: recorded
    for the same config files, or for others that give the same configuration."""
    name = config["run_name"]
    folder = run_folder(name)
    for path in (RESULTS, folder):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"config run_name: {path} exists and is not a folder; the run's outputs go to {folder}: "
                              "move the file away" + (" or choose another run_name" if path == folder else ""))
    record = read_record(name)
    if record is None:
        return
    ours, theirs = config_file_names(config_files), record.get("config_files", [])
    difference = first_difference(comparable(config), record["config"])
    if ours != theirs and difference is not None:
        raise ConfigError(
            f"config run_name: '{name}' is the run of other config files ({', '.join(theirs) or 'none'}; "
            f"{record_path(name)}), and this configuration ({', '.join(ours) or 'none'}) differs from it in "
            f"{difference}: its jobs would replace that run's outputs. Give this configuration a run_name of its own, "
            f"or delete {folder} to replace that run")


JOB_RECORD_FOLDERS = {"benchmarks": "benchmark", "logs": "log"}
"""The folders of a run where Snakemake itself writes each job's record, and what it writes there."""


def check_job_records(name: str) -> None:
    """Everything under ``results/<name>/benchmarks`` and ``results/<name>/logs`` is a real folder or a regular file.

    Snakemake writes a job's benchmark with a plain ``open(path, "w")`` and a rule's log through the shell's
    redirection, both of which follow a symbolic link into the file it points to (and block on a FIFO, or write
    into a device): a link placed at a benchmark path would have this run's job overwrite the user's file. The jobs
    of advdistill check their own outputs; these paths are Snakemake's, so planning checks them before any job."""
    for folder, record in JOB_RECORD_FOLDERS.items():
        pending = [run_folder(name) / folder]
        while pending:
            path = pending.pop()
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            except OSError as err:
                raise ConfigError(f"config run_name: cannot read {path} ({err.strerror}), where this run's jobs write "
                                  f"their {record}s") from err
            if stat.S_ISDIR(mode):
                with os.scandir(path) as entries:
                    pending += [Path(entry.path) for entry in entries]
            elif not stat.S_ISREG(mode):
                what = (f"a symbolic link (to {os.readlink(path)})" if stat.S_ISLNK(mode) else
                        "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
                        "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
                raise ConfigError(f"config run_name: {path} is {what}; Snakemake writes a job's {record} there and "
                                  "would write into it or through it, into whatever it points to. Remove it and "
                                  "start the run again")


def upstream_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a configuration that the results an ``upstream_run`` lends depend on."""
    part = {key: config.get(key) for key in UPSTREAM_KEYS}
    part["students"] = [{key: value for key, value in student.items() if key != "objectives"}
                        for student in config.get("students") or []]
    return part


def check_upstream_run(config: dict[str, Any]) -> None:
    """The run named by ``upstream_run`` exists, is another run, and was made with the same keys its lent results
    depend on (its record's configuration)."""
    upstream = config.get("upstream_run")
    if upstream is None:
        return
    if upstream == config["run_name"]:
        raise ConfigError(f"config upstream_run: '{upstream}' is this run itself (run_name); name another run or "
                          "leave upstream_run out")
    record = read_record(upstream)
    if record is None:
        raise ConfigError(f"config upstream_run: '{upstream}' has no record {record_path(upstream)}; run that "
                          f"configuration first (its run_name is '{upstream}')")
    theirs = upstream_config(record["config"])
    difference = first_difference(comparable(upstream_config(config)), theirs)
    if difference is not None:
        raise ConfigError(
            f"config upstream_run: run '{upstream}' ({', '.join(record.get('config_files', [])) or 'no config files'}) "
            f"was made with another {difference}, so its results would not be this configuration's; make the two "
            "agree, or leave upstream_run out to produce them in this run")
    missing = sorted(set(config["experiments"]) - set(record["config"].get("experiments") or {}))
    if missing:
        raise ConfigError(f"config upstream_run: run '{upstream}' has no experiment {missing[0]} (experiments."
                          f"{missing[0]}), so no samples or scores of it to lend")


def write_record(config: dict[str, Any], config_files: Iterable[str | os.PathLike]) -> Path:
    """Record which config files and configuration a run was started with (atomically: a planning check reads
    it while another run may start)."""
    record = {"run_name": config["run_name"], "config_files": config_file_names(config_files),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": comparable(config)}
    return write_text_atomically(record_path(config["run_name"]), json.dumps(record, indent=2, sort_keys=True) + "\n")
