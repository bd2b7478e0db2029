"""One row of ``sslbench bench``, measured: a fresh model fed the row's way (sslbench's data
path, lightly's per-image transforms in workers, or views already on the device), and the
clock that times its blocks of optimiser steps after the warm-up.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from sslbench.data.held import HeldBatches
from sslbench.data.splits import RunData
from sslbench.host import (
    child_pids,
    children_peak_memory_bytes,
    peak_memory_bytes,
    reset_peak_memory,
)
from sslbench.methods import SSLMethod, Views
from sslbench.run.batches import data_path_of, train_batches, train_loader
from sslbench.run.build import build_method, build_trainer, fit
from sslbench.tools.bench_result import BenchRow, BenchSettings
from sslbench.tools.lightly_views import PILViews, collate_views, lightly_transform


# -- the machine's load ------------------------------------------------------------------------
def load_average() -> float | None:
    """The machine's 1-minute load average (runnable and waiting threads, every process's),
    or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# -- timing ------------------------------------------------------------------------------------
class StepClock(pl.Callback):
    """The wall time of ``repeats`` consecutive blocks of ``steps`` optimiser steps after the
    first ``warmup`` (and the workers' peak memory at the end, while they still run).

    ``timer`` reads the clock (seconds); on a GPU it is read after a device synchronisation.
    """

    def __init__(self, warmup: int, steps: int, caught: list | None = None, repeats: int = 1,
                 timer: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.warmup, self.steps, self.repeats = warmup, steps, repeats
        self.timer = timer
        self.marks: list[float] = []  # the clock at the start of each block, and at the end
        self.worker_peak = 0
        self.children_before = child_pids()  # the row's workers are the children started since
        # On a GPU: the warnings recorded during the fit; torch's sync debug mode turns each
        # host-device synchronisation of the timed steps into one.
        self.caught = caught
        self.syncs_before = 0
        self.clock_syncs = 0  # those of the clock itself, between blocks: not the step's
        self.host_syncs: int | None = None

    @property
    def seconds(self) -> list[float] | None:
        """Each block's wall time, once every block has run; None before."""
        if len(self.marks) < self.repeats + 1:
            return None
        return [end - start for start, end in zip(self.marks, self.marks[1:], strict=False)]

    def _now(self, module: pl.LightningModule) -> float:
        if module.device.type == "cuda":
            before = self._syncs()
            torch.cuda.synchronize()
            self.clock_syncs += self._syncs() - before
        return self.timer()

    def _syncs(self) -> int:
        """Host-device synchronisations recorded since the first block began."""
        if self.caught is None:
            return 0
        return sum("synchroniz" in str(w.message) for w in self.caught[self.syncs_before :])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        done = trainer.global_step - self.warmup  # optimiser steps since the warm-up
        if done < 0 or done % self.steps or done // self.steps != len(self.marks):
            return  # not a block's boundary (or one already marked: a step that did not step)
        last = done == self.repeats * self.steps
        if not self.marks and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            if self.caught is not None:
                self.syncs_before = len(self.caught)
                torch.cuda.set_sync_debug_mode("warn")
        if last and self.caught is not None and pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            self.host_syncs = self._syncs() - self.clock_syncs
        self.marks.append(self._now(pl_module))
        if last:
            self.worker_peak = children_peak_memory_bytes(since=self.children_before)


class RepeatedViews:
    """The same ready views ``length`` times: the ceiling row's data path (none)."""

    def __init__(self, views: Views, length: int) -> None:
        self.views, self.length = views, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Views]:
        return (self.views for _ in range(self.length))


def lightly_loader(
    cfg: DictConfig, data: RunData, model: SSLMethod, workers: int
) -> tuple[DataLoader, str]:
    """lightly's data path for the run: its transform per PIL image in ``workers`` workers."""
    transform, name = lightly_transform(cfg, model.backbone)
    dataset = PILViews(data.pretrain.images, data.pretrain.labels, data.pretrain_indices, transform)
    collate = partial(
        collate_views, num_global=model.num_global_views, num_local=model.num_local_views,
        with_grids=model.needs_coordinates,
    )  # fmt: skip
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, collate_fn=collate, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    return loader, f"lightly {name} per image, {workers} DataLoader workers"


def measure_row(row: str, cfg: DictConfig, data: RunData, settings: BenchSettings,
                accelerator: str, workers: int) -> BenchRow:  # fmt: skip
    """Build a fresh model (the run's seed), feed it ``row``'s way, time the steps."""
    reset_peak_memory()
    pl.seed_everything(cfg.seed, verbose=False)
    model = build_method(cfg, accelerator)
    total = settings.total_steps
    held, workers_busy = None, 0
    if row == "sslbench":
        loader: Any = train_batches(cfg, data, 1, accelerator, model)
        if isinstance(loader, HeldBatches):
            held = loader.nbytes
        path = data_path_of(loader)
        where = (
            f"in {loader.num_workers} DataLoader workers" if path == "workers" else "on the device"
        )
        detail = f"sslbench: uint8 batches ({path}), views made by the batched pipeline {where}"
        workers_busy = loader.num_workers if path == "workers" else 0
    elif row == "lightly":
        loader, detail = lightly_loader(cfg, data, model, workers)
        workers_busy = workers
    else:
        device = torch.device("cuda" if accelerator == "gpu" else "cpu")
        model.to(device)
        images, aspect, _ = next(iter(train_loader(cfg, data, world_size=1)))
        views = model.make_views(images.to(device), aspect.to(device))
        loader, detail = RepeatedViews(views, total), "views made once, on the device"
    with (
        tempfile.TemporaryDirectory(prefix="sslbench-bench-") as root,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        on_gpu = caught if accelerator == "gpu" else None
        clock = StepClock(settings.warmup, settings.steps, on_gpu, repeats=settings.repeats)
        trainer = build_trainer(cfg, accelerator, Path(root), logger=False,
                                callbacks=[clock], max_steps=total)  # fmt: skip
        fit(trainer, model, loader)
    if clock.seconds is None:
        raise RuntimeError(
            f"the {row} row ran fewer than {total} steps; the training set has "
            f"{len(data.pretrain_indices)} images: lower steps/warmup/repeats or raise "
            "dataset.max_train"
        )
    return BenchRow(
        row=row,
        repeat_seconds=clock.seconds,
        steps=settings.steps,
        batch_size=cfg.batch_size,
        peak_host_bytes=peak_memory_bytes(),
        peak_worker_host_bytes=clock.worker_peak,
        peak_device_bytes=torch.cuda.max_memory_allocated() if accelerator == "gpu" else None,
        held_images_bytes=held,
        host_syncs=clock.host_syncs,
        detail=detail,
        threads=torch.get_num_threads() + workers_busy,
        load_average=load_average(),
    )
