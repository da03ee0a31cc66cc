"""Provenance manifests: what produced an artefact (settings hash, code version, image, seed, time, environment,
the model it loaded).

Each CLI stage writes ``<output>.manifest.json`` beside its main output; the report lists them. A stage run in
an Apptainer image records the image's path and its sha256: the path names a file that can be rebuilt or
replaced under the same name, the digest names its contents. The environment is the job's: package versions,
CUDA runtime and driver, CPU and GPU models. A stage that loads a model records the folder it loaded and the
sha256 of its ``config.json`` (which also marks a stand-in, :data:`STAND_IN_KEY`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from advdistill import __version__
from advdistill.io import SHA256_HEX, manifest_path, write_json
from advdistill.paths import write_text_atomically

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_SUFFIXES = {".py", ".cpp"}
PACKAGES = ("torch", "transformers", "accelerate", "vllm", "triton", "advdistill")
CPUINFO = Path("/proc/cpuinfo")
STAND_IN_KEY = "advdistill_stand_in_for"
"""The ``config.json`` key of a stand-in model (:mod:`advdistill.standin`): the hub id it stands in for. A model
trained from a stand-in inherits it with the rest of its config, so its results are marked as well."""


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
    """sha256 of this package's and the loss kernels' source files: the code a stage's result depends on. The
    kernels are found, not imported: a stage that never runs them (sampling) neither loads them nor, in its rule's
    code digest (:mod:`advdistill.code_deps`), depends on them."""
    digest = hashlib.sha256()
    for root in (PACKAGE_DIR, Path(importlib.util.find_spec("advdistill_kernels").origin).resolve().parent):
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


def digest_cache_dir() -> Path | None:
    """The user's own folder of image digests: ``$XDG_CACHE_HOME/advdistill/image-digests``, else
    ``~/.cache/advdistill/image-digests`` (``None`` where no home folder is known). In an Apptainer container the
    home folder is the host's, bound by default."""
    if os.path.isabs(os.environ.get("XDG_CACHE_HOME", "")):
        root = Path(os.environ["XDG_CACHE_HOME"])
    else:
        try:
            root = Path.home() / ".cache"
        except RuntimeError:
            return None
    return root / "advdistill" / "image-digests"


def private_cache_dir() -> Path | None:
    """:func:`digest_cache_dir`, created with mode 0700 where missing, if it is a real folder of this user that no
    one else may write into (``None`` otherwise): a digest planted there by another user would forge a stage's
    provenance."""
    folder = digest_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return None
    return folder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def image_digest(image: str) -> str | None:
    """sha256 of an image file, or None where it is no file here (a sandbox folder, a path not bound into the
    container). Images weigh gigabytes and every stage asks, so a digest is cached in the user's own cache folder
    (:func:`private_cache_dir`), keyed by the file's real path, size and modification time: a rebuilt image gets a
    new key. A digest is written to a new file of a random name and moved into place, so no link at a name the cache
    uses is ever written through."""
    path = Path(image)
    try:
        info = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    folder = private_cache_dir()
    if folder is None:
        return file_sha256(path)
    key = f"{path.resolve()}\0{info.st_size}\0{info.st_mtime_ns}"
    cached = folder / f"{hashlib.sha256(key.encode()).hexdigest()}.sha256"
    try:
        value = cached.read_text().strip()
        if SHA256_HEX.fullmatch(value):
            return value
    except OSError:
        pass
    value = file_sha256(path)
    try:
        write_text_atomically(cached, value + "\n")
    except OSError:
        pass  # a full or read-only cache: the digest is still right, only not cached
    return value


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (None if absent), read from its metadata: nothing is
    imported, so asking for vllm costs nothing."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cuda_driver() -> str | None:
    """The NVIDIA driver version, as ``nvidia-smi`` reports it."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    versions = result.stdout.split()  # one line per GPU, all alike
    return versions[0] if versions else None


def gpu_environment() -> dict[str, Any]:
    """CUDA runtime and driver and the visible GPUs, asked of torch only where the stage imported it: a stage that
    did not used no GPU, and importing torch would cost it seconds."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"cuda_runtime": None, "cuda_driver": None, "gpus": []}
    available = torch.cuda.is_available()
    return {"cuda_runtime": torch.version.cuda, "cuda_driver": cuda_driver() if available else None,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else []}


def environment() -> dict[str, Any]:
    """The software and machine of this job."""
    return {"python": platform.python_version(), "packages": {name: package_version(name) for name in PACKAGES},
            **gpu_environment(), "cpu": cpu_model(), "os": platform.platform()}


def model_record(source: str) -> dict[str, Any]:
    """The model a stage loaded from ``source`` (a folder, or a hub id and its snapshot in the local hub cache if
    it is there): the folder, the sha256 of its ``config.json`` and, for a stand-in, the hub id it stands in for."""
    path = Path(source)
    if path.is_dir():
        folder: Path | None = path.resolve()
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, "config.json")
        except ValueError:  # not a valid hub id
            cached = None
        folder = Path(cached).parent if isinstance(cached, str) else None
    config_sha256, stands_in_for = None, None
    if folder is not None and (folder / "config.json").is_file():
        config_sha256 = file_sha256(folder / "config.json")
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            config = None
        stands_in_for = config.get(STAND_IN_KEY) if isinstance(config, dict) else None
    return {"source": source, "folder": None if folder is None else str(folder), "config_sha256": config_sha256,
            "stands_in_for": stands_in_for}


def stage_manifest(stage: str, settings: dict[str, Any], seed: int | None, started: float,
                   inputs: list[str], model: str | None = None,
                   parts: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The manifest of a stage's job; ``model`` the model it loaded (``--model``), ``parts`` the manifests of the
    parts a merge joined, by part path (the jobs that did the work, e.g. on GPUs)."""
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
        "environment": environment(),
        "model": None if model is None else model_record(model),
        "seed": seed,
        "inputs": inputs,
        "started_unix": round(started, 3),
        "wall_seconds": round(time.time() - started, 3),
        **({"parts": parts} if parts is not None else {}),
    }


def write_manifest(output: Path, manifest: dict[str, Any]) -> Path:
    path = manifest_path(output)
    write_json(manifest, path)
    return path
