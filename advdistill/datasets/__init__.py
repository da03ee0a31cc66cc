"""Dataset adapters by name (the ``adapter`` key of a dataset in the config); one adapter module each, the
interface and the normalised row schema in :mod:`advdistill.datasets.base`."""

from __future__ import annotations

from typing import Any

from advdistill.datasets.base import DatasetAdapter
from advdistill.datasets.release import RELEASE_ADAPTERS
from advdistill.datasets.synthetic import SyntheticArithmetic
from advdistill.errors import DatasetError

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
