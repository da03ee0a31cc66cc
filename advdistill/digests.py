"""Content digests of local input files, cached by path, size and modification time.

Snakemake reruns a job when an input is newer than its outputs; a file replaced by one with an older
modification time (``cp -p``, ``tar -x``, a synced folder) would be missed. The prepare rule also takes the
digest of its source file as a parameter, so a changed content reruns it. The cache keeps planning fast: a
file is read again only when its size or modification time differ from the cached entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DigestCache:
    """SHA-256 digests of files, kept in the JSON file ``cache_path`` between planning runs."""

    def __init__(self, cache_path: Path):
        self.cache_path = cache_path
        self.entries = load_cache(cache_path)

    def digest(self, path: str | os.PathLike) -> str:
        """The file's digest; one computed anew is written to the cache at once."""
        resolved = Path(path).expanduser().resolve()
        stat = resolved.stat()
        key, stamp = str(resolved), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = self.entries.get(key)
        if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and "sha256" in entry:
            return entry["sha256"]
        self.entries[key] = {**stamp, "sha256": file_digest(resolved)}
        save_cache(self.cache_path, self.entries)
        return self.entries[key]["sha256"]


def load_cache(path: Path) -> dict:
    """A planning cache file's object; empty where there is none yet or it is damaged (all is computed again)."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def save_cache(path: Path, obj: object) -> None:
    """Replace a planning cache file at once (a killed planning leaves the old one); a folder that cannot be
    written (a read-only checkout) only costs the cache. Not :mod:`advdistill.io`: it imports polars, which would
    cost every Snakemake call a quarter of a second."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(obj, out, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
