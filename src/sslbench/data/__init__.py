"""Data pipeline front half: sources -> decode-once uint8 cache -> indexed torch datasets.

The names below are imported on first use (PEP 562): the command line checks a dataset's
path and size through ``sslbench.data.sources`` and ``.catalog`` before torch is imported,
and importing this package must not pull torch in through ``.dataset``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "CachedSplit": "cache_files",
    "cache_dir": "cache_files",
    "load_or_build": "cache",
    "default_cache_root": "sides",
    "default_side": "sides",
    "requested_side": "sides",
    "CATALOG": "catalog",
    "get_source": "catalog",
    "IndexedImages": "dataset",
    "collate_batch": "dataset",
    "FashionMNIST": "sources",
    "ImageFolder": "sources",
    "Source": "sources",
    "read_idx": "sources",
    "few_shot_subset": "subset",
    "stratified_subset": "subset",
    "subset_fingerprint": "subset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
