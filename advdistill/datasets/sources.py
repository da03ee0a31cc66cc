"""Where raw records come from: a local copy of an official release file, or a hub dataset.

``source`` is a local path (``.jsonl``, ``.json`` or ``.parquet``, in the release's own field layout)
or a hub id loaded with :func:`datasets.load_dataset`. Anything that looks like a path is never sent
to the hub. A line of a JSONL file that is not valid UTF-8 or not valid JSON becomes a
:class:`MalformedRecord`, which :func:`~advdistill.datasets.base.normalise_split` skips and counts. Text
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
    """A line that could not be read as a record; ``reason`` is counted as the skip reason."""

    reason: str
    line: int


class RepeatedKey(ValueError):
    """A record gives a key twice: which value the release meant is unknown, so the line is skipped."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) < len(pairs):
        raise RepeatedKey
    return dict(pairs)


def read_local(dataset: str, path: Path) -> Iterator[dict[str, Any] | MalformedRecord]:
    if not path.is_file():
        problem = "is a folder, not a release file" if path.is_dir() else "not found"
        raise DatasetError(f"dataset '{dataset}': local file {problem}: {path}")
    if path.suffix == ".parquet":
        yield from read_parquet(path).to_dicts()
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"dataset '{dataset}': {path} is not valid JSON ({err})") from err
        records = data.get("data") if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise DatasetError(f"dataset '{dataset}': {path} holds neither a list of records nor {{'data': [...]}}")
        yield from records
    else:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    yield json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_unique_keys)
                except UnicodeDecodeError:
                    yield MalformedRecord("invalid_utf8", number)
                except json.JSONDecodeError:
                    yield MalformedRecord("malformed_json", number)
                except RepeatedKey:
                    yield MalformedRecord("repeated_key", number)
                except RecursionError:
                    yield MalformedRecord("too_deeply_nested", number)
                except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
                    yield MalformedRecord("integer_too_long", number)


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
                 required: Sequence[str]) -> Iterator[dict[str, Any] | MalformedRecord]:
    """Records of one split; fails before yielding if the first records lack a required field."""
    records = read_local(dataset, Path(source).expanduser()) if looks_local(source) else iter(read_hub(
        dataset, source, hub_config, hub_split))
    head: list[Any] = []
    for record in records:
        head.append(record)
        if sum(isinstance(r, dict) for r in head) >= FIELD_CHECK_RECORDS:
            break
    valid = [r for r in head if isinstance(r, dict)]
    if valid:
        missing = [name for name in required if all(name not in r for r in valid)]
        if missing:
            raise DatasetError(f"dataset '{dataset}': {source} has no field(s) {', '.join(missing)} "
                               f"(found: {', '.join(sorted(valid[0]))})")
    yield from head
    yield from records
