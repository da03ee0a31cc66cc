"""Provenance manifests: what produced an artefact (settings hash, code version, image, seed, time).

Each CLI stage writes ``<output>.manifest.json`` beside its main output; the report lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from advdistill import __version__
from advdistill.io import write_json

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_SUFFIXES = {".py", ".cpp"}


def fingerprint(payload: dict[str, Any]) -> str:
    """sha256 of ``payload`` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def path_identity(path: str) -> list:
    """Identity of an input file or folder (names, sizes, modification times), or the hub id it names."""
    root = Path(path)
    if not root.exists():
        return [path]
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    return [[f.relative_to(root).as_posix() if f != root else f.name, f.stat().st_size, f.stat().st_mtime_ns]
            for f in files]


def source_digest() -> str:
    """sha256 of this package's and the loss kernels' source files: the code a stage's result depends on."""
    import advdistill_kernels

    digest = hashlib.sha256()
    for root in (PACKAGE_DIR, Path(advdistill_kernels.__file__).resolve().parent):
        for source in sorted(f for f in root.rglob("*") if f.suffix in SOURCE_SUFFIXES):
            digest.update(source.relative_to(root.parent).as_posix().encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the checkout the package runs from, if it is one (an installed wheel is not)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True,
                                timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def stage_manifest(stage: str, settings: dict[str, Any], seed: int | None, started: float,
                   inputs: list[str]) -> dict[str, Any]:
    return {
        "stage": stage,
        "settings_sha256": fingerprint(settings),
        "settings": settings,
        "package_version": __version__,
        "git_commit": git_commit(),
        "container": os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"),
        "host": platform.node(),
        "seed": seed,
        "inputs": inputs,
        "started_unix": round(started, 3),
        "wall_seconds": round(time.time() - started, 3),
    }


def write_manifest(output: Path, manifest: dict[str, Any]) -> Path:
    path = manifest_path(output)
    write_json(manifest, path)
    return path
