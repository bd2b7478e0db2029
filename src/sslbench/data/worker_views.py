"""Views made in DataLoader workers (``data_path=workers``): augmentation beside compute.

By default a training step makes its views itself, in the main process, on the training
device: on a GPU that is the fast path, but on a CPU the augmentation and the model's step
then take turns on the same cores. Here DataLoader workers read each batch from the
memory-mapped cache and make its views while the main process computes the previous step.

A worker seeds each batch's views from (seed, rank, epoch, step) as the training step
would, so a CPU run gives the same views either way: the batches come from
:class:`StepBatchSampler`, the shuffled DataLoader's batches (the same epoch orders, see
:mod:`sslbench.data.order`) tagged with their epoch and global step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from .dataset import IndexedImages
from .order import EpochBatchSampler

__all__ = ["StepBatch", "StepBatchSampler", "ViewsOfBatches", "pass_through"]

#: (images uint8 (B, 3, S, S), aspect (B,), rank, epoch, global step, labels (B,)) -> the
#: batch's views (the labels are passed on, for method=supervised only)
MakeViews = Callable[[torch.Tensor, torch.Tensor, int, int, int, torch.Tensor], Any]


class StepBatch(list):
    """The dataset positions of one batch, with the epoch and global step it trains."""

    def __init__(self, positions: list[int], epoch: int, step: int) -> None:
        super().__init__(positions)
        self.epoch, self.step = epoch, step

    def __reduce__(self) -> tuple[Any, ...]:  # to the workers with its epoch and step
        return (StepBatch, (list(self), self.epoch, self.step))


class StepBatchSampler(EpochBatchSampler):
    """The batches of :class:`~sslbench.data.order.EpochBatchSampler` (the main-process
    DataLoader's), each tagged with its epoch and global step for the worker's views."""

    def __iter__(self) -> Iterator[StepBatch]:  # type: ignore[override]
        epoch, first = self.epoch, self.skip
        for i, positions in enumerate(super().__iter__(), start=first):
            yield StepBatch(positions, epoch=epoch, step=epoch * len(self) + i)


class ViewsOfBatches(Dataset):
    """A batch of cached images, read and turned into views by ``make_views`` (in a worker)."""

    def __init__(self, images: IndexedImages, make_views: MakeViews, rank: int = 0) -> None:
        self.images, self.make_views, self.rank = images, make_views, rank

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        raise TypeError("ViewsOfBatches reads whole batches (__getitems__ with a StepBatch)")

    def __getitems__(self, batch: StepBatch) -> Any:
        images, aspect, labels = self.images.__getitems__(list(batch))
        return self.make_views(images, aspect, self.rank, batch.epoch, batch.step, labels)


def pass_through(batch: Any) -> Any:
    """DataLoader ``collate_fn`` for batches that arrive whole (the workers' views)."""
    return batch
