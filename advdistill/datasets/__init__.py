"""Dataset adapters by name (the ``adapter`` key of a dataset in the config)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from advdistill.datasets.base import (
    ROW_SCHEMA,
    BadRow,
    DatasetAdapter,
    DatasetError,
    PrepareReport,
    normalise_split,
)
from advdistill.datasets.release import RELEASE_ADAPTERS
from advdistill.datasets.synthetic import SyntheticArithmetic
from advdistill.io import write_json, write_parquet

log = logging.getLogger(__name__)

ADAPTERS: dict[str, type[DatasetAdapter]] = {
    adapter.name: adapter for adapter in (SyntheticArithmetic, *RELEASE_ADAPTERS)
}


def get_adapter(name: str, source: str, options: dict[str, Any] | None = None,
                dataset: str | None = None) -> DatasetAdapter:
    """Adapter ``name`` on ``source``; its options are checked here (:class:`ConfigError` naming
    ``datasets.<dataset>.options.<key>``), the source is read only when rows are asked for."""
    try:
        adapter_cls = ADAPTERS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset adapter '{name}' (known: {', '.join(sorted(ADAPTERS))})"
        ) from None
    return adapter_cls(source, options, dataset)


def prepare_split(adapter: str, source: str, split: str, options: dict[str, Any], out: Path,
            report_path: Path, name: str | None = None) -> pl.DataFrame:
    """Normalise one split to ``out`` (rows parquet) and write its skipped-rows report."""
    frame, report = normalise_split(get_adapter(adapter, source, options, name), split, name or adapter)
    write_parquet(frame, out)
    write_json(report.to_json(), report_path)
    log.info("%s/%s: kept %d of %d rows; skipped %s", report.dataset, split, report.rows_kept,
             report.rows_read, dict(report.skipped) or "none")
    return frame


__all__ = ["ADAPTERS", "ROW_SCHEMA", "BadRow", "DatasetAdapter", "DatasetError", "PrepareReport",
           "get_adapter", "normalise_split", "prepare_split"]
