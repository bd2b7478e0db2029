"""Data pipeline front half: sources -> decode-once uint8 cache -> indexed torch datasets."""

from .cache import (
    CachedSplit,
    cache_dir,
    default_cache_root,
    default_side,
    load_or_build,
    requested_side,
)
from .catalog import CATALOG, get_source
from .dataset import IndexedImages, collate_batch
from .sources import FashionMNIST, ImageFolder, Source, read_idx
from .subset import stratified_subset, subset_fingerprint

__all__ = [
    "CATALOG",
    "CachedSplit",
    "FashionMNIST",
    "ImageFolder",
    "IndexedImages",
    "Source",
    "cache_dir",
    "collate_batch",
    "default_cache_root",
    "default_side",
    "get_source",
    "load_or_build",
    "read_idx",
    "requested_side",
    "stratified_subset",
    "subset_fingerprint",
]
