"""A run's training batches, by ``data_path``: a DataLoader over the memory-mapped cache,
the images held on the device (or pinned), or views made in DataLoader workers.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from sslbench.data import IndexedImages, collate_batch
from sslbench.data.held import HeldBatches, choose_placement
from sslbench.data.order import EpochBatchSampler, Resumable
from sslbench.data.splits import RunData
from sslbench.data.worker_views import StepBatchSampler, ViewsOfBatches, pass_through
from sslbench.methods import SSLMethod


def train_batches(
    cfg: DictConfig, data: RunData, world_size: int, accelerator: str, model: SSLMethod
) -> DataLoader | HeldBatches:
    """The run's training batches, by ``data_path``: a DataLoader over the memory-mapped
    cache, the training images held on the device (or pinned) and gathered per batch, or
    views made in DataLoader workers (``workers``); ``auto`` holds them on a single GPU
    when they fit. The batches are the same every way."""
    path = str(cfg.get("data_path", "auto"))
    if path == "dataloader":
        return train_loader(cfg, data, world_size)
    if world_size > 1 and path != "auto":
        raise ValueError(
            f"data_path={path} feeds one device; with devices={world_size} use "
            f"data_path=dataloader (or auto)"
        )
    if path == "workers":
        return views_in_workers(cfg, data, model)
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    if path == "auto":
        side = data.pretrain.images.shape[1:]
        nbytes = len(data.pretrain_indices) * int(np.prod(side))
        placement = choose_placement(nbytes, device) if world_size == 1 else None
        if placement is None:
            return train_loader(cfg, data, world_size)
    else:
        placement = path
    return HeldBatches(
        data.pretrain, data.pretrain_indices, _per_device_batch(cfg, data, world_size),
        seed=cfg.seed, device=device, placement=placement,
    )  # fmt: skip


def train_loader(cfg: DictConfig, data: RunData, world_size: int) -> DataLoader:
    """Shuffled batches of uint8 images from the memory-mapped cache: epoch e's order drawn
    from (seed, e) (:mod:`sslbench.data.order`) on one device; on several, the
    DistributedSampler that Lightning puts in place of ``shuffle=True``'s."""
    per_device = _per_device_batch(cfg, data, world_size)
    images = IndexedImages(data.pretrain, data.pretrain_indices)
    generator = torch.Generator().manual_seed(cfg.seed)  # the workers' base seeds
    common = {"collate_fn": collate_batch, "num_workers": cfg.num_workers,
              "persistent_workers": cfg.num_workers > 0, "generator": generator}  # fmt: skip
    if world_size > 1:
        # drop_last: a contrastive batch of 1 has no negatives, BatchNorm fails on it
        return DataLoader(images, batch_size=per_device, shuffle=True, drop_last=True, **common)
    batches = EpochBatchSampler(len(images), per_device, cfg.seed)
    return DataLoader(images, batch_sampler=batches, **common)


def views_in_workers(cfg: DictConfig, data: RunData, model: SSLMethod) -> DataLoader:
    """The run's batches read and made into views by ``num_workers`` (at least one)
    DataLoader workers, while the main process computes: the DataLoader's batches, the
    training step's views (on a CPU)."""
    per_device = _per_device_batch(cfg, data, 1)
    return DataLoader(
        ViewsOfBatches(IndexedImages(data.pretrain, data.pretrain_indices), model.view_maker),
        batch_sampler=StepBatchSampler(len(data.pretrain_indices), per_device, cfg.seed),
        collate_fn=pass_through,
        num_workers=max(1, cfg.num_workers),
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),  # the workers' base seeds
    )


def _per_device_batch(cfg: DictConfig, data: RunData, world_size: int) -> int:
    per_device = cfg.batch_size // world_size
    if per_device < 2 or len(data.pretrain_indices) < cfg.batch_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} needs at least that many training images "
            f"(have {len(data.pretrain_indices)}) and 2 per device; lower batch_size"
        )
    return per_device


def resumable_source(batches: DataLoader | HeldBatches) -> Resumable | None:
    """The object that decides the order of the run's batches (sslbench.data.order), or
    None when Lightning's DistributedSampler does."""
    if isinstance(batches, HeldBatches):
        return batches
    sampler = batches.batch_sampler
    return sampler if isinstance(sampler, EpochBatchSampler) else None


def data_path_of(batches: DataLoader | HeldBatches) -> str:
    """How training batches reached the model: dataloader, device, pinned or workers."""
    if isinstance(batches, HeldBatches):
        return batches.placement
    return "workers" if isinstance(batches.dataset, ViewsOfBatches) else "dataloader"
