"""Torch dataset over a cached split, reading whole batches from the memmap at once.

Per-item ``__getitem__`` costs one Python call and one small read per image; ``__getitems__``
(used by ``DataLoader`` when present) reads a batch with a single fancy index in sorted order,
which is several times faster and keeps disk reads sequential.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .cache_files import CachedSplit

__all__ = ["Batch", "IndexedImages", "collate_batch"]

#: (images uint8 (B, 3, S, S), aspect float32 (B,), labels int64 (B,))
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class IndexedImages(Dataset):
    """The items ``indices`` (default: all) of a cached split.

    Items are ``(image uint8 (3, S, S), aspect float32 scalar, label int64 scalar)``; aspect is
    the original width / height, for aspect-aware crops of the squashed images. DataLoaders must
    use ``collate_fn=collate_batch``: torch's default collate cannot take the ready-made batches
    of ``__getitems__``.
    """

    def __init__(self, split: CachedSplit, indices: Sequence[int] | np.ndarray | None = None):
        self.split = split
        n = len(split.labels)
        self.indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices)
        self.indices = self.indices.astype(np.int64, copy=False).reshape(-1)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n):
            raise IndexError(f"indices out of range for a split of {n} images")
        self.aspect = split.aspect  # small per-image arrays stay in RAM
        self.labels = np.asarray(split.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        image = torch.from_numpy(np.array(self.split.images[j]))  # copy out of the read-only map
        return image, torch.tensor(self.aspect[j]), torch.tensor(self.labels[j])

    def __getitems__(self, indices: list[int]) -> Batch:
        rows = self.indices[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        images = np.empty((len(rows), *self.split.images.shape[1:]), dtype=np.uint8)
        images[order] = self.split.images[rows[order]]  # ascending reads, then requested order
        return (
            torch.from_numpy(images),
            torch.from_numpy(self.aspect[rows]),
            torch.from_numpy(self.labels[rows]),
        )


def collate_batch(batch: Batch | list[Any]) -> Any:
    """DataLoader ``collate_fn``: pass a batch from ``__getitems__`` through unchanged.

    A list of single items (datasets without ``__getitems__``) is stacked with torch's default.
    """
    if isinstance(batch, tuple) and len(batch) == 3 and isinstance(batch[0], torch.Tensor):
        return batch
    return default_collate(batch)
