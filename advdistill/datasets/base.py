"""The dataset adapter interface and the normalised row schema.

An adapter turns one raw record of a dataset's own layout into a normalised row
``{id, split, question, answer, kind, choices, solution}``. A record that cannot be normalised raises
:class:`BadRow`; :func:`normalise_split` skips it and counts the reason, so one broken line never
costs a whole dataset.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl

KINDS = ("numeric", "math", "multiple_choice")

ROW_SCHEMA = {
    "id": pl.String,
    "split": pl.String,
    "question": pl.String,
    "answer": pl.String,
    "kind": pl.String,
    "choices": pl.List(pl.String),
    "solution": pl.String,
}


class BadRow(ValueError):
    """A raw record that cannot be normalised; the message is the reason that gets counted."""


class DatasetError(RuntimeError):
    """A dataset as a whole cannot be loaded (missing file, wrong fields, no usable rows)."""


@dataclass
class PrepareReport:
    dataset: str
    split: str
    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "first_skipped_row_by_reason": self.examples,
        }


class DatasetAdapter(abc.ABC):
    """One dataset: where its records come from and how each becomes a normalised row."""

    name: str
    splits: tuple[str, ...]

    def __init__(self, source: str, options: dict[str, Any] | None = None):
        self.source = source
        self.options = dict(options or {})

    @abc.abstractmethod
    def records(self, split: str) -> Iterable[dict[str, Any]]:
        """Raw records of ``split`` in the dataset's own layout."""

    @abc.abstractmethod
    def normalise(self, record: dict[str, Any], index: int, split: str) -> dict[str, Any]:
        """One normalised row; raises :class:`BadRow` with a short reason."""

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DatasetError(
                f"dataset '{self.name}' has no split '{split}' (available: {', '.join(self.splits)})"
            )


def _validated(row: dict[str, Any]) -> dict[str, Any]:
    if not str(row.get("question") or "").strip():
        raise BadRow("empty_question")
    if not str(row.get("answer") or "").strip():
        raise BadRow("empty_answer")
    if row["kind"] not in KINDS:
        raise BadRow(f"unknown_kind:{row['kind']}")
    row.setdefault("choices", [])
    row.setdefault("solution", "")
    if row["kind"] == "multiple_choice" and len(row["choices"]) < 2:
        raise BadRow("too_few_choices")
    return row


def normalise_split(
    adapter: DatasetAdapter, split: str, dataset: str
) -> tuple[pl.DataFrame, PrepareReport]:
    """Normalise every record of ``split``; bad records are skipped and counted by reason."""
    adapter.check_split(split)
    report = PrepareReport(dataset=dataset, split=split, source=adapter.source)
    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    for index, record in enumerate(_records_or_error(adapter, split)):
        report.rows_read += 1
        try:
            if hasattr(record, "reason") and hasattr(record, "line"):  # a MalformedRecord from sources.py
                raise BadRow(record.reason)
            if not isinstance(record, dict):
                raise BadRow("not_a_record")
            row = _validated(adapter.normalise(record, index, split))
            if row["id"] in seen_ids:
                raise BadRow("duplicate_id")
        except BadRow as err:
            reason = str(err)
            report.skipped[reason] += 1
            report.examples.setdefault(reason, f"record {index}: {str(record)[:200]}")
            continue
        seen_ids.add(row["id"])
        rows.append({**row, "split": split})
    report.rows_kept = len(rows)
    if not rows:
        raise DatasetError(
            f"dataset '{dataset}' split '{split}' from '{adapter.source}' has no usable rows "
            f"({report.rows_read} read, skipped: {dict(report.skipped) or 'none'})"
        )
    frame = pl.DataFrame(rows, schema=ROW_SCHEMA)
    return frame, report


def _records_or_error(adapter: DatasetAdapter, split: str) -> Iterator[Any]:
    try:
        yield from adapter.records(split)
    except (DatasetError, BadRow):
        raise
    except FileNotFoundError as err:
        raise DatasetError(f"dataset '{adapter.name}': file not found: {err.filename}") from err
