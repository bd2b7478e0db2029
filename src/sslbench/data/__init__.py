"""Data pipeline front half: sources -> decode-once uint8 cache -> indexed torch datasets."""

from .cache import CachedSplit, cache_dir, default_cache_root, load_or_build
from .dataset import IndexedImages, collate_batch
from .sources import SOURCES, FashionMNIST, ImageFolder, Source, get_source, read_idx
from .subset import stratified_subset

__all__ = [
    "SOURCES",
    "CachedSplit",
    "FashionMNIST",
    "ImageFolder",
    "IndexedImages",
    "Source",
    "cache_dir",
    "collate_batch",
    "default_cache_root",
    "get_source",
    "load_or_build",
    "read_idx",
    "stratified_subset",
]
