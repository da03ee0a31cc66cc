"""The dataset adapter interface and the normalised row schema.

An adapter turns one raw record of a dataset's own layout into a normalised row
``{id, split, question, answer, kind, choices, solution}``. A record that cannot be normalised raises
:class:`~advdistill.errors.BadRow`; :func:`normalise_split` skips it and counts the reason, so one broken line never
costs a whole dataset. Value types are checked in one place, :func:`normalise_split`: each adapter declares
the types of the record fields it reads (``field_types``), a value of another type skips the record as
``bad_type_<field>``, and a normalised row must match the row schema, so no row can break the rows table.
Adapter options are declared the same way (``option_types``); an unknown or mistyped option is a
:class:`ConfigError` when the adapter is built.
"""

from __future__ import annotations

import abc
import typing
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from advdistill.datasets.sources import Located, MalformedRecord
from advdistill.errors import BadRow, ConfigError, DatasetError, InputError
from advdistill.io import read_parquet
from advdistill.schema import is_encodable

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
ROW_TYPES = {"id": str, "question": str, "answer": str, "kind": str, "choices": list[str], "solution": str}
PROMPT_COLUMNS = {name: ROW_SCHEMA[name] for name in ("id", "question", "answer", "kind", "choices")}
"""What sampling, training and evaluation read of a rows table (to render prompts and judge answers)."""


def read_rows(path: Path, columns: dict[str, pl.DataType] = PROMPT_COLUMNS) -> pl.DataFrame:
    """A prepared rows table as the later stages read it: ``columns`` (at least the prompt columns) with their
    types, none of id, question, answer and kind null or blank (a null question would be rendered as the text
    'None', a blank answer judges every response wrong), every kind one of :data:`KINDS`, the choices of every
    multiple_choice row neither null nor empty (its prompt lists them), and no id twice. A bad value is named with
    its column and first row, before a stage spends hours on rows that can only end as '0 groups kept'."""
    rows = read_parquet(path, columns)
    for column in ("id", "question", "answer", "kind"):
        for problem, bad in (("null", pl.col(column).is_null()),
                             ("blank", pl.col(column).str.strip_chars().str.len_chars() == 0)):
            _refuse_rows(path, rows, column, problem, bad)
    unknown = rows.filter(~pl.col("kind").is_in(KINDS))
    if unknown.height:
        raise InputError(f"{path}: column 'kind' holds {unknown['kind'][0]!r} in {unknown.height} row(s), first id "
                         f"{unknown['id'][0]!r}; a kind is one of {', '.join(KINDS)} (was it written by advdistill "
                         "prepare?)")
    multiple_choice = pl.col("kind") == "multiple_choice"
    for problem, bad in (("null", pl.col("choices").is_null()), ("empty", pl.col("choices").list.len() == 0)):
        _refuse_rows(path, rows, "choices", problem, bad & multiple_choice, "multiple_choice row(s)")
    repeated = rows.filter(pl.col("id").is_duplicated())["id"].unique(maintain_order=True)
    if repeated.len():
        raise InputError(f"{path}: {repeated.len()} id(s) given to more than one row, first '{repeated[0]}': each "
                         "prompt's samples and answers are keyed by its id (was it written by advdistill prepare?)")
    return rows


def _refuse_rows(path: Path, rows: pl.DataFrame, column: str, problem: str, bad: pl.Expr,
                 what: str = "row(s)") -> None:
    """An :class:`InputError` naming ``column``, ``problem``, how many of the rows (``what``) have it and the first
    one, if ``bad`` holds in any."""
    found = rows.with_row_index("row").filter(bad)
    if found.height:
        first = f"row {found['row'][0]}" if column == "id" else f"id {found['id'][0]!r}"
        raise InputError(f"{path}: column '{column}' is {problem} in {found.height} {what}, first {first}: was it "
                         "written by advdistill prepare?")


def matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` is of type ``expected``: a type, ``None`` (null), a tuple of these, or ``list[T]`` /
    ``dict[K, V]`` (checked item by item). A ``bool`` is not taken for a number."""
    if isinstance(expected, tuple):
        return any(matches(value, e) for e in expected)
    if expected is None:
        return value is None
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is list:
        return isinstance(value, list) and all(matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    return isinstance(value, expected) and (expected is bool or not isinstance(value, bool))


def describe(expected: Any) -> str:
    """``expected`` of :func:`matches` in words, e.g. ``list[str] or null``."""
    if isinstance(expected, tuple):
        return " or ".join(describe(e) for e in expected)
    if expected is None:
        return "null"
    return str(expected) if typing.get_origin(expected) else expected.__name__


@dataclass(frozen=True)
class SkipExample:
    """The first record skipped for a reason: where it was read (``train.jsonl line 7``) and its first 200
    characters."""

    where: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass
class PrepareReport:
    dataset: str
    split: str
    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, SkipExample] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "first_skipped_row_by_reason": {reason: str(example) for reason, example in self.examples.items()},
        }


class DatasetAdapter(abc.ABC):
    """One dataset: where its records come from and how each becomes a normalised row."""

    name: str
    splits: tuple[str, ...]
    option_types: dict[str, Any] = {}  # option -> accepted type (see matches); any other option is an error
    field_types: dict[str, Any] = {}  # record field read -> accepted type; another type skips as bad_type_<field>

    def __init__(self, source: str, options: dict[str, Any] | None = None, dataset: str | None = None):
        """``dataset`` is the config key of the dataset, for error messages (default: the adapter name)."""
        self.source = source
        self.dataset = dataset or self.name
        self.options = dict(options or {})
        for key, value in self.options.items():
            if key not in self.option_types:
                raise self.option_error(key, f"unknown option of the '{self.name}' adapter (known: "
                                             f"{', '.join(sorted(self.option_types)) or 'none'})")
            if not matches(value, self.option_types[key]):
                raise self.option_error(key, f"expected {describe(self.option_types[key])}, got {value!r}")

    def option_error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"datasets.{self.dataset}.options.{key}: {problem}")

    @abc.abstractmethod
    def records(self, split: str) -> Iterable[dict[str, Any] | Located]:
        """Raw records of ``split`` in the dataset's own layout. A record may come :class:`Located`, so that a skip
        names the file and line it was read from; a bare record is named by its position."""

    @abc.abstractmethod
    def normalise(self, record: dict[str, Any], index: int, split: str) -> dict[str, Any]:
        """One normalised row; raises :class:`BadRow` with a short reason."""

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DatasetError(
                f"dataset '{self.name}' has no split '{split}' (available: {', '.join(self.splits)})"
            )


def _checked_types(adapter: DatasetAdapter, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` if every declared field is absent, null or of its declared type."""
    for name, expected in adapter.field_types.items():
        value = record.get(name)
        if value is not None and not matches(value, expected):
            raise BadRow(f"bad_type_{name}")
    return record


def _validated(row: dict[str, Any]) -> dict[str, Any]:
    for column in ("question", "answer"):
        value = row.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise BadRow(f"empty_{column}")
    row.setdefault("choices", [])
    row.setdefault("solution", "")
    for column, expected in ROW_TYPES.items():
        if not matches(row.get(column), expected):
            raise BadRow(f"bad_type_{column}")
    for column in ROW_TYPES:
        texts = row[column] if isinstance(row[column], list) else [row[column]]
        if not all(is_encodable(text) for text in texts):
            raise BadRow(f"unencodable_{column}")
    if row["kind"] not in KINDS:
        raise BadRow(f"unknown_kind:{row['kind']}")
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
    for index, item in enumerate(_records_or_error(adapter, split)):
        where, record = (item.where, item.record) if isinstance(item, Located) else (f"record {index}", item)
        report.rows_read += 1
        try:
            if isinstance(record, MalformedRecord):
                raise BadRow(record.reason)
            if not isinstance(record, dict):
                raise BadRow("not_a_record")
            row = _validated(adapter.normalise(_checked_types(adapter, record), index, split))
            if row["id"] in seen_ids:
                raise BadRow("duplicate_id")
        except BadRow as err:
            reason = str(err)
            report.skipped[reason] += 1
            report.examples.setdefault(reason, SkipExample(where, str(record)[:200]))
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
