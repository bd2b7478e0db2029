"""The order of a run's training batches: epoch ``e`` is a permutation drawn from a generator
seeded with (seed, e), the same for every data path, and any epoch's order is known
without drawing the ones before it.

That is what lets a stopped run continue exactly (:class:`sslbench.run.resume.DataOrder`): it
sets the epoch to draw and how many of its batches were already trained on (``skip``);
views are seeded with (seed, rank, epoch, step), so the resumed run sees the same batches
and the same views as a run that never stopped. Each batch source here
(:class:`EpochBatchSampler`, :class:`~sslbench.data.held.HeldBatches`,
:class:`~sslbench.data.worker_views.StepBatchSampler`) has ``epoch`` (of its next
iteration, then advanced by one) and ``skip`` (left out of its next iteration, then 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import Sampler

from sslbench.transforms.pipeline import stream_seed

__all__ = ["ORDER_STREAM", "EpochBatchSampler", "Resumable", "epoch_order"]

#: The stream id of the order's seeds, (seed, ORDER_STREAM, epoch): apart from the views'
#: streams (seed, rank, epoch, step).
ORDER_STREAM = -1


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Epoch ``epoch``'s permutation of ``n`` items (int64 (n,))."""
    generator = torch.Generator().manual_seed(stream_seed(seed, ORDER_STREAM, epoch))
    return torch.randperm(n, generator=generator)


class Resumable(Protocol):
    """A batch source whose next iteration can be set to any epoch, minus its first batches."""

    epoch: int
    skip: int

    def __len__(self) -> int: ...


class EpochBatchSampler(Sampler[list[int]]):
    """Full, shuffled batches of positions ``0..n-1``: epoch ``epoch``'s order cut into
    ``batch_size`` pieces, the incomplete last one dropped (a contrastive batch of one has no
    negatives, and BatchNorm fails on it)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch = 0
        self.skip = 0

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.seed, self.epoch).tolist()
        self.epoch += 1
        first, self.skip = self.skip, 0
        for i in range(first, len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]
