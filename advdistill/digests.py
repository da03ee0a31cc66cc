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
from pathlib import Path

from advdistill.io import atomic_write

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
        self.entries = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            entries = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}  # no cache yet, or a damaged one: every digest is computed again
        return entries if isinstance(entries, dict) else {}

    def digest(self, path: str | os.PathLike) -> str:
        """The file's digest; one computed anew is written to the cache at once (atomically)."""
        resolved = Path(path).expanduser().resolve()
        stat = resolved.stat()
        key, stamp = str(resolved), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = self.entries.get(key)
        if isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp and "sha256" in entry:
            return entry["sha256"]
        self.entries[key] = {**stamp, "sha256": file_digest(resolved)}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.cache_path, lambda tmp: tmp.write_text(json.dumps(self.entries, indent=1)))
        return self.entries[key]["sha256"]
