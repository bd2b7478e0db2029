"""Views made in DataLoader workers (``data_path=workers``): augmentation beside compute.

By default a training step makes its views itself, in the main process, on the training
device: on a GPU that is the fast path, but on a CPU the augmentation and the model's step
then take turns on the same cores. Here DataLoader workers read each batch from the
memory-mapped cache and make its views while the main process computes the previous step.

A worker seeds each batch's views from (seed, rank, epoch, step) as the training step
would, so a CPU run gives the same views either way: the batches come from
:class:`StepBatchSampler`, the shuffled DataLoader's batches (the same seeded draws, in the
same order) tagged with their epoch and global step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from .dataset import IndexedImages

__all__ = ["StepBatch", "StepBatchSampler", "ViewsOfBatches", "pass_through"]

#: (images uint8 (B, 3, S, S), aspect (B,), rank, epoch, global step) -> the batch's views
MakeViews = Callable[[torch.Tensor, torch.Tensor, int, int, int], Any]


class StepBatch(list):
    """The dataset positions of one batch, with the epoch and global step it trains."""

    def __init__(self, positions: list[int], epoch: int, step: int) -> None:
        super().__init__(positions)
        self.epoch, self.step = epoch, step

    def __reduce__(self) -> tuple[Any, ...]:  # to the workers with its epoch and step
        return (StepBatch, (list(self), self.epoch, self.step))


class StepBatchSampler(Sampler[StepBatch]):
    """Full, shuffled batches of ``n`` positions, as a DataLoader with ``shuffle=True,
    drop_last=True`` and ``generator`` draws them in a training loop that stops after an
    epoch's batches (Lightning's): a new permutation at each epoch's first batch.

    A DataLoader whose sampler is asked past an epoch's last batch (its workers prefetch)
    draws one more permutation there; this sampler does not, so that views made in workers
    train on the same batches as the main-process DataLoader."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.epochs_started = 0

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[StepBatch]:
        epoch = self.epochs_started
        self.epochs_started += 1
        order = torch.randperm(self.n, generator=self.generator).tolist()
        for i in range(len(self)):
            positions = order[i * self.batch_size : (i + 1) * self.batch_size]
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
        images, aspect, _labels = self.images.__getitems__(list(batch))
        return self.make_views(images, aspect, self.rank, batch.epoch, batch.step)


def pass_through(batch: Any) -> Any:
    """DataLoader ``collate_fn`` for batches that arrive whole (the workers' views)."""
    return batch
