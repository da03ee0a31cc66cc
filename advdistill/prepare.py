"""The ``prepare`` stage: one split of a dataset, normalised by its adapter (:mod:`advdistill.datasets`) into
rows parquet, with a report of the records it skipped and why."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from advdistill.datasets import get_adapter
from advdistill.datasets.base import normalise_split
from advdistill.io import write_json, write_parquet

log = logging.getLogger(__name__)


def prepare_split(adapter: str, source: str, split: str, options: dict[str, Any], out: Path,
                  report_path: Path, name: str | None = None) -> pl.DataFrame:
    """Normalise one split to ``out`` (rows parquet) and write its skipped-rows report; the log gives each skip
    reason in one line, with its count and where its first record was read."""
    frame, report = normalise_split(get_adapter(adapter, source, options, name), split, name or adapter)
    write_parquet(frame, out)
    write_json(report.to_json(), report_path)
    log.info("%s/%s: kept %d of %d rows from %s", report.dataset, split, report.rows_kept, report.rows_read,
             report.source)
    for reason, count in sorted(report.skipped.items()):
        log.info("%s/%s: skipped %d as %s, first at %s", report.dataset, split, count, reason,
                 report.examples[reason].where)
    return frame
