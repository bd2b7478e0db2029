"""Training batches gathered by index from images held in memory, no DataLoader.

A DataLoader over the memory-mapped cache reads each batch on the host and copies it to
the GPU in the training step's way. When a run's training images fit on its device (every
cache of the study's -160 copies does, on any recent GPU), they are copied there once as
uint8 and each step's batch is one index gather on the device: no host work, no copy, no
synchronisation per step. When they do not fit but fit in host RAM, they are held in pinned
host memory and each batch is gathered into one of two pinned buffers and copied
asynchronously.

The batches are the DataLoader's exactly (both cut epoch e's permutation from
:func:`sslbench.data.order.epoch_order` into batches), so a run gives the same result either
way on the same device (``tests/data/test_held_batches.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .cache_files import CachedSplit
from .dataset import Batch
from .order import epoch_order

__all__ = ["PLACEMENTS", "HeldBatches", "choose_placement"]

#: Where a run's training images can be held: ``device`` (the training device's memory;
#: on a CPU, RAM), ``pinned`` (page-locked host RAM, copied to the GPU per batch).
PLACEMENTS = ("device", "pinned")

#: Share of the device's free memory the images may take (the rest is for the model).
DEVICE_SHARE = 0.25
#: Share of the host's available RAM pinned images may take.
PINNED_SHARE = 0.5


def _host_available_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):  # noqa: SIM115 - a short read
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def choose_placement(nbytes: int, device: torch.device) -> str | None:
    """Where ``nbytes`` of images should be held for training on ``device``: ``device``
    when they take at most :data:`DEVICE_SHARE` of its free memory, else ``pinned`` when
    they take at most :data:`PINNED_SHARE` of the available RAM, else None (use a
    DataLoader). On a CPU the images are already in (mapped) RAM: None."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    if nbytes <= DEVICE_SHARE * free:
        return "device"
    if nbytes <= PINNED_SHARE * _host_available_bytes():
        return "pinned"
    return None


class HeldBatches:
    """Shuffled, full batches of the items ``indices`` of a cached split, as the training
    DataLoader gives them (:class:`~sslbench.data.order.EpochBatchSampler`: epoch ``epoch``'s
    order, ``skip`` batches left out), gathered from images held in ``placement`` for
    ``device``.

    Iterating gives one epoch of ``(images uint8 (B, 3, S, S), aspect float32 (B,),
    labels int64 (B,))`` on ``device``. ``nbytes``: the memory the held images take.
    """

    def __init__(
        self,
        split: CachedSplit,
        indices: np.ndarray,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        placement: str = "device",
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement '{placement}'; valid: {', '.join(PLACEMENTS)}")
        self.device = torch.device(device)
        self.placement = placement
        self.batch_size = batch_size
        rows = np.asarray(indices, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # read the memmap in ascending order
        images = np.empty((len(rows), *split.images.shape[1:]), dtype=np.uint8)
        images[order] = split.images[rows[order]]
        pin = placement == "pinned" and self.device.type == "cuda"
        held = torch.from_numpy(images)
        self.images = held.pin_memory() if pin else held.to(self.device)
        self.aspect = torch.from_numpy(split.aspect[rows]).to(self.device)
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64)[rows]).to(
            self.device
        )
        self.nbytes = int(self.images.numel())
        self.seed = seed
        self.epoch = 0  # the epoch of the next iteration (sslbench.data.order)
        self.skip = 0  # batches of it already trained on (a resumed run)
        if pin:  # two page-locked buffers: one is filled while the other is being copied
            shape = (batch_size, *self.images.shape[1:])
            self._buffers = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in (0, 1)]
            self._copied: list[torch.cuda.Event | None] = [None, None]

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        # Lazily, at the first batch: an iterator made and never read draws nothing.
        order = epoch_order(len(self.labels), self.seed, self.epoch)
        self.epoch += 1
        # One copy of the epoch's order to the device; per step, slices of it: a per-step
        # copy of indices from pageable host memory would wait for the device.
        order_on_device = order.to(self.device)
        first, self.skip = self.skip, 0
        for step in range(first, len(self)):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            on_device = order_on_device[batch]
            yield (
                self._gather(order[batch], on_device, step),
                self.aspect[on_device],
                self.labels[on_device],
            )

    def _gather(self, positions: Tensor, on_device: Tensor, step: int) -> Tensor:
        if self.images.device == self.device:  # held on the device (or in RAM for a CPU)
            return self.images[on_device]
        slot = step % 2
        copied = self._copied[slot]
        if copied is not None:
            copied.synchronize()  # waits only if that buffer's copy is still running
        buffer = self._buffers[slot]
        torch.index_select(self.images, 0, positions, out=buffer)
        images = buffer.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._copied[slot] = event
        return images
