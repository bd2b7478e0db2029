"""Continuing a run that stopped (Ctrl-C, a kill, a crash) from its ``last.ckpt``.

Lightning restores the weights, optimiser, schedulers, epoch and step from the checkpoint;
:class:`DataOrder` adds where the run was in its data: each epoch's order is drawn from
(seed, epoch) (:mod:`sslbench.data.order`) and views from (seed, rank, epoch, step), so a
resumed run trains on the same batches, with the same views, as a run that never stopped,
and on a CPU its final numbers are the same (tests/test_run_folder.py).
:class:`TrainingClock` keeps the training time of the earlier attempts, so
``pretrain_seconds`` is the whole run's.

Where that is not possible: with several devices Lightning gives the DataLoader a
DistributedSampler, whose order is drawn per epoch from (seed, epoch), so a run resumed at
an epoch's end continues exactly, but one resumed in the middle of an epoch starts that
epoch's order again and trains on its first batches a second time.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl

from sslbench.data.order import Resumable

__all__ = ["DataOrder", "TrainingClock", "checkpoint_position"]


class DataOrder(pl.Callback):
    """Points the run's batch source at the epoch Lightning is in: at each epoch's start,
    and when a run resumed in the middle of an epoch, with the batches it already trained
    on skipped."""

    def __init__(self, source: Resumable) -> None:
        self.source = source
        self.resumed_epoch: int | None = None
        self.loaded = False  # a checkpoint was restored; its first step fixes a counter

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # While Lightning restores a checkpoint, before any batch is asked for (DataLoader
        # workers ask for some as soon as an iterator exists). The batches of the epoch
        # already trained on follow from the step and the epoch: a batch is one step.
        self.loaded = True
        epoch, step = checkpoint_position(checkpoint).values()
        per_epoch = len(self.source)
        done = step - epoch * per_epoch
        if 0 <= done < per_epoch:  # stopped in the middle of an epoch (or at its start)
            self.source.epoch, self.source.skip = epoch, done
            self.resumed_epoch = epoch  # which gets no on_train_epoch_start
        else:  # at an epoch's end
            self.source.epoch, self.source.skip = epoch + 1, 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.resumed_epoch:  # not the one set up on loading
            self.source.epoch, self.source.skip = trainer.current_epoch, 0
        self.resumed_epoch = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning adds one to its count of logged steps when it restarts mid-epoch (it
        # assumes a checkpoint saved at a batch's end; ours are saved at an epoch's end or on
        # Ctrl-C, before the batch's step). With one optimiser step a batch, the count is the
        # global step: metrics.csv's steps are then those of a run that never stopped.
        if self.loaded:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
            self.loaded = False


class TrainingClock(pl.Callback):
    """Seconds spent in training over every attempt at the run (saved in checkpoints)."""

    def __init__(self) -> None:
        self.earlier = 0.0
        self.start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.earlier + (time.perf_counter() - self.start if self.start else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier = float(state_dict.get("seconds", 0.0))


def checkpoint_position(checkpoint: dict[str, Any]) -> dict[str, int]:
    """Where a Lightning checkpoint stopped: the epoch it was in and the steps done."""
    return {"epoch": int(checkpoint["epoch"]), "step": int(checkpoint["global_step"])}
