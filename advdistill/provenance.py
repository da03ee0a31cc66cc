"""Provenance manifests: what produced an artefact (settings hash, code version, image, seed, time).

Each CLI stage writes ``<output>.manifest.json`` beside its main output; the report lists them. A stage run in
an Apptainer image records the image's path and its sha256: the path names a file that can be rebuilt or
replaced under the same name, the digest names its contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from advdistill import __version__
from advdistill.io import manifest_path, write_json

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


def container_image() -> str | None:
    """The image a stage runs in: Apptainer (or Singularity) sets this in every container it starts."""
    return os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")


def digest_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "advdistill-image-digests"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def image_digest(image: str) -> str | None:
    """sha256 of an image file, or None where it is no file here (a sandbox folder, a path not bound into the
    container). Images weigh gigabytes and every stage asks, so a digest is cached in the temporary folder,
    keyed by the file's real path, size and modification time: a rebuilt image gets a new key."""
    path = Path(image)
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    key = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    cached = digest_cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()}.sha256"
    try:
        value = cached.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    except OSError:
        pass
    value = file_sha256(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}")
        partial.write_text(value + "\n")
        partial.replace(cached)
    except OSError:
        pass  # no writable temporary folder: the digest is still right, only not cached
    return value


def stage_manifest(stage: str, settings: dict[str, Any], seed: int | None, started: float,
                   inputs: list[str]) -> dict[str, Any]:
    image = container_image()
    return {
        "stage": stage,
        "settings_sha256": fingerprint(settings),
        "settings": settings,
        "package_version": __version__,
        "git_commit": git_commit(),
        "container": image,
        "container_sha256": image_digest(image) if image else None,
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
