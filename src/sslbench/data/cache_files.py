"""The decode-once cache on disk: where a cache lives, what its files hold, and opening one.

A split of a source, decoded at stored side S, lives in
``<cache_root>/<source.cache_key()>/<split>-<S>/`` (:func:`cache_dir`)::

    images.npy  uint8 (N, 3, S, S), C-contiguous, opened memory-mapped
    labels.npy  int64 (N,), -1 for unlabeled images
    sizes.npy   int32 (N, 2), original (width, height) of each image
    meta.json   source, split, count, stored side ``size`` and ``requested_size``, fingerprint,
                ``jpeg_draft``, classes, format version, skipped files (``skipped``,
                ``skipped_reasons``)

:func:`open_cache` opens such a folder as a :class:`CachedSplit` when it is complete and
current (format version, fingerprint and side match); the builder
(:func:`sslbench.data.cache.load_or_build`) writes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .sides import default_cache_root, stored_side
from .sources import Source

__all__ = [
    "FORMAT_VERSION",
    "CachedSplit",
    "cache_dir",
    "cache_fingerprint",
    "open_cache",
]

#: Bump when the on-disk layout or the decoding changes; older caches are then rebuilt.
FORMAT_VERSION = 1


@dataclass
class CachedSplit:
    """A decoded split: memory-mapped images plus per-image labels and original sizes."""

    images: np.ndarray  # uint8 (N, 3, S, S), memory-mapped read-only
    labels: np.ndarray  # int64 (N,)
    sizes: np.ndarray  # int32 (N, 2): original (width, height)
    meta: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    path: Path = Path()

    @property
    def aspect(self) -> np.ndarray:
        """float32 (N,): original width / height of each image."""
        return (self.sizes[:, 0] / self.sizes[:, 1]).astype(np.float32)

    @property
    def side(self) -> int:
        """Stored side S."""
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap would copy the whole array (e.g. to spawned DataLoader workers);
        # send the file name instead and map it again on the other side.
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = Path(self.images.filename)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], Path):
            state["images"] = np.load(state["images"], mmap_mode="r")
        self.__dict__.update(state)


def cache_dir(source: Source, split: str, size: int | None, cache_root: Path | None = None) -> Path:
    """Directory holding the cache of ``split`` of ``source`` at the stored side for ``size``."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    return root / source.cache_key() / f"{split}-{stored_side(source, size)}"


def cache_fingerprint(source_fingerprint: str, draft: bool) -> str:
    """The fingerprint stored in (and checked against) meta.json: the source's own for a
    full-size decode, as before drafts existed; a hash of it and ``"jpeg-draft"`` for a
    drafted one, whose pixels differ."""
    if not draft:
        return source_fingerprint
    return hashlib.sha256(f"{source_fingerprint}\0jpeg-draft".encode()).hexdigest()


def open_cache(path: Path, fingerprint: str, side: int) -> CachedSplit | None:
    """The cache in ``path`` if it is complete and current, else None."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if (
            meta.get("format_version") != FORMAT_VERSION
            or meta.get("fingerprint") != fingerprint
            or meta.get("size") != side
        ):
            return None
        images = np.load(path / "images.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        sizes = np.load(path / "sizes.npy")
    except (OSError, ValueError):  # missing/garbled files: treat as absent and rebuild
        return None
    n = meta.get("count")
    if images.shape != (n, 3, side, side) or labels.shape != (n,) or sizes.shape != (n, 2):
        return None
    return CachedSplit(images, labels, sizes, meta, list(meta.get("classes", [])), path)
