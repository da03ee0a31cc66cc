"""Where raw records come from: a local copy of an official release file, or a hub dataset.

``source`` is a local path (``.jsonl``, ``.json`` or ``.parquet``, in the release's own field layout)
or a hub id loaded with :func:`datasets.load_dataset`. Anything that looks like a path is never sent
to the hub. A line of a JSONL file that is not valid UTF-8 or not valid JSON, or a record that gives a key twice,
becomes a :class:`MalformedRecord`, which :func:`~advdistill.datasets.base.normalise_split` skips and counts.
Every record comes :class:`Located`, so a skip names its line (JSONL) or record (``.json``, parquet, hub). Text
files are read as ``utf-8-sig``: a byte-order mark (as Windows editors write) is not part of the first record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advdistill.errors import AdvDistillError, DatasetError
from advdistill.io import read_parquet
from advdistill.paths import looks_local

FIELD_CHECK_RECORDS = 20


@dataclass(frozen=True)
class MalformedRecord:
    """A line or record that could not be read as a record; ``reason`` is counted as the skip reason."""

    reason: str


@dataclass(frozen=True)
class Located:
    """A raw record (or :class:`MalformedRecord`) and where it was read, for the skip report: ``train.jsonl line 7``
    (counted from 1, blank lines included) or ``train.json record 3`` (counted from 0)."""

    where: str
    record: Any


class RepeatedKey(ValueError):
    """A record gives a key twice: which value the release meant is unknown, so the line is skipped."""


class RepeatedKeyObject(dict):
    """An object of a ``.json`` file that gives ``key`` twice (last value kept): the record holding it is skipped."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str):
        super().__init__(pairs)
        self.key = key


def _repeated_key(pairs: list[tuple[str, Any]]) -> str | None:
    """The first key that ``pairs`` give a second time, if any."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if _repeated_key(pairs) is not None:
        raise RepeatedKey
    return dict(pairs)


def _marked_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A whole ``.json`` file is one document: an object that repeats a key is marked, not raised, so that only
    the record holding it is skipped."""
    key = _repeated_key(pairs)
    return dict(pairs) if key is None else RepeatedKeyObject(pairs, key)


def _holds_repeated_keys(value: Any) -> bool:
    """Whether ``value`` holds a :class:`RepeatedKeyObject` at any depth (walked without recursion: a record may be
    nested as deep as the JSON parser allows)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, RepeatedKeyObject):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_local(dataset: str, path: Path) -> Iterator[Located]:
    if not path.is_file():
        problem = "is a folder, not a release file" if path.is_dir() else "not found"
        raise DatasetError(f"dataset '{dataset}': local file {problem}: {path}")
    if path.suffix == ".parquet":
        for index, record in enumerate(read_parquet(path).to_dicts()):
            yield Located(f"{path.name} record {index}", record)
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_marked_repeats)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"dataset '{dataset}': {path} is not valid JSON ({err})") from err
        except RecursionError as err:  # one document: a record nested too deeply leaves nothing of the file
            raise DatasetError(f"dataset '{dataset}': {path} is nested too deeply to be read as JSON") from err
        except ValueError as err:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
            raise DatasetError(f"dataset '{dataset}': {path} cannot be read as JSON ({err})") from err
        if isinstance(data, RepeatedKeyObject):
            raise DatasetError(f"dataset '{dataset}': {path} gives key '{data.key}' twice at its top level")
        records = data.get("data") if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise DatasetError(f"dataset '{dataset}': {path} holds neither a list of records nor {{'data': [...]}}")
        for index, record in enumerate(records):
            yield Located(f"{path.name} record {index}",
                          MalformedRecord("repeated_key") if _holds_repeated_keys(record) else record)
    else:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield Located(f"{path.name} line {number}", _parsed_line(raw))


def _parsed_line(raw: bytes) -> Any:
    """One JSONL line as JSON, or a :class:`MalformedRecord` saying why it is none."""
    try:
        return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        return MalformedRecord("invalid_utf8")
    except json.JSONDecodeError:
        return MalformedRecord("malformed_json")
    except RepeatedKey:
        return MalformedRecord("repeated_key")
    except RecursionError:
        return MalformedRecord("too_deeply_nested")
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        return MalformedRecord("integer_too_long")


def read_hub(dataset: str, hub_id: str, config: str | None, split: str) -> Iterable[dict[str, Any]]:
    """The split from the hub, every hub call bounded in time (:mod:`advdistill.hub`); any failure is one line
    naming the id and how to work offline."""
    from advdistill.hub import OFFLINE_HINT, HubTimeout, first_line, hub_calls

    def describe(reason: str) -> str:
        return f"dataset '{dataset}': cannot load '{hub_id}' (split '{split}') from the hub: {reason}; {OFFLINE_HINT}"

    try:
        import datasets

        with hub_calls("advdistill prepare", describe):
            return datasets.load_dataset(hub_id, config, split=split)
    except AdvDistillError:  # a bound given in the environment that is no number of seconds
        raise
    except HubTimeout as err:
        raise DatasetError(describe(str(err))) from None
    except Exception as err:  # datasets/huggingface_hub raise many types for an unreachable or missing hub id
        raise DatasetError(describe(f"{type(err).__name__}: {first_line(err)}")) from None


def load_records(dataset: str, source: str, hub_config: str | None, hub_split: str,
                 required: Sequence[str]) -> Iterator[Located]:
    """Records of one split; fails before yielding if the first records lack a required field."""
    if looks_local(source):
        records = read_local(dataset, Path(source).expanduser())
    else:
        records = (Located(f"{source} ({hub_split}) record {index}", record)
                   for index, record in enumerate(read_hub(dataset, source, hub_config, hub_split)))
    head: list[Located] = []
    for located in records:
        head.append(located)
        if sum(isinstance(r.record, dict) for r in head) >= FIELD_CHECK_RECORDS:
            break
    valid = [r.record for r in head if isinstance(r.record, dict)]
    if valid:
        missing = [name for name in required if all(name not in r for r in valid)]
        if missing:
            raise DatasetError(f"dataset '{dataset}': {source} has no field(s) {', '.join(missing)} "
                               f"(found: {', '.join(sorted(valid[0]))})")
    yield from head
    yield from records
