"""Dataset adapters by name (the ``adapter`` key of a dataset in the config)."""

from __future__ import annotations

from typing import Any

from advdistill.datasets.base import (
    ROW_SCHEMA,
    BadRow,
    DatasetAdapter,
    DatasetError,
    PrepareReport,
    normalise_split,
)
from advdistill.datasets.synthetic import SyntheticArithmetic

ADAPTERS: dict[str, type[DatasetAdapter]] = {
    SyntheticArithmetic.name: SyntheticArithmetic,
}


def get_adapter(name: str, source: str, options: dict[str, Any] | None = None) -> DatasetAdapter:
    try:
        adapter_cls = ADAPTERS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset adapter '{name}' (known: {', '.join(sorted(ADAPTERS))})"
        ) from None
    return adapter_cls(source, options)


__all__ = ["ADAPTERS", "ROW_SCHEMA", "BadRow", "DatasetAdapter", "DatasetError", "PrepareReport",
           "get_adapter", "normalise_split"]
