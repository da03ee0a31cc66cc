"""Path rules shared by planning and the stages (no heavy imports: planning runs on every Snakemake call).

Whether a configured source names a local path, and the file names the pipeline derives from configured
names with the room each needs on disk. A path component may have at most 255 bytes on the usual file
systems. A stage's output ``<name>`` has a provenance manifest ``<name>.manifest.json`` beside it, and every
file is first written to a temporary sibling (``.<name>.tmp-`` and 8 random characters, :mod:`advdistill.io`),
so a derived name fits only with both decorations; planning checks every derived name against them
(:func:`needed_bytes`), so a long name stops the run before its first job instead of failing in the report.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

MAX_COMPONENT_BYTES = 255
RANDOM_CHARACTERS = 8  # what tempfile.mkstemp/mkdtemp add after the prefix
MANIFEST_SUFFIX = ".manifest.json"

OBJECTIVES = ("advdistill", "sft")
"""Training objectives, the method first: a trained student is named ``<student>-<objective>``, and two of them
are compared as "advdistill vs sft"."""
BASE_SUFFIX = "base"
"""``<student>-base``: the untrained student, evaluated beside its trained runs."""


def looks_local(source: str) -> bool:
    """A path (existing, absolute, relative with ./ or ../, or a release-file suffix), not a hub id."""
    return source.endswith(LOCAL_SUFFIXES) or source.startswith(("/", "./", "../", "~")) or Path(source).exists()


def snapshot_folder(model_folder: str | Path, step: int) -> Path:
    """Where a bootstrapped model's folder keeps its weights at an earlier step (a ``source: snapshot`` student)."""
    return Path(model_folder) / "snapshots" / f"step-{step}"


def temporary_prefix(name: str) -> str:
    return f".{name}.tmp-"


TEMPORARY_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # what tempfile draws its random characters from


def is_temporary_of(name: str, candidate: str) -> bool:
    """``candidate`` is a temporary sibling of the output ``name`` as :mod:`advdistill.io` names them: its prefix
    and exactly :data:`RANDOM_CHARACTERS` characters of tempfile's alphabet, nothing else."""
    prefix = temporary_prefix(name)
    rest = candidate[len(prefix):]
    return (candidate.startswith(prefix) and len(rest) == RANDOM_CHARACTERS
            and all(c in TEMPORARY_CHARACTERS for c in rest))


def lock_file(path: str | Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it, held by the job that writes the output."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def sampling_parts_folder(out: str | Path) -> Path:
    """The resume folder of a sampling run (sample, and evaluate's responses) writing ``out``: its finished
    shards, ``.<name>.parts`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.parts")


def raw_responses(out: str | Path) -> Path:
    """Where evaluate keeps the unjudged responses of ``out`` (``<stem>.raw.parquet``) until it is written."""
    out = Path(out)
    return out.with_name(out.stem + ".raw.parquet")


def write_text_atomically(path: Path, text: str) -> Path:
    """``text`` into ``path`` through a temporary sibling, for the files planning writes (advdistill.io has the
    stages' writers, but imports polars, which planning does not need)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=temporary_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path


def needed_bytes(name: str) -> int:
    """Bytes of the longest component the pipeline writes for an output called ``name``: the temporary sibling
    of its manifest."""
    return len(temporary_prefix(name + MANIFEST_SUFFIX).encode()) + RANDOM_CHARACTERS


def advantages_plot(dataset: str) -> str:
    return f"advantages_{dataset}.png"


def correct_per_group_plot(dataset: str) -> str:
    return f"correct_per_group_{dataset}.png"


def loss_terms_plot(train_set: str, model: str) -> str:
    return f"loss_terms_{train_set}_{model}.png"


def training_curves_plot(train_set: str, model: str) -> str:
    """Training and validation loss and learning rate of a trained run; no longer than :func:`loss_terms_plot`,
    so the name check of that one covers it."""
    return f"curves_{train_set}_{model}.png"


def lengths_plot(testset: str) -> str:
    return f"lengths_{testset}.png"
