"""Continuing a run that stopped (Ctrl-C, a kill, a crash) from its ``last.ckpt``.

Lightning restores the weights, optimiser, schedulers, epoch and step from the checkpoint;
:class:`DataOrder` adds where the run was in its data: each epoch's order is drawn from
(seed, epoch) (:mod:`sslbench.data.order`) and views from (seed, rank, epoch, step), so a
resumed run trains on the same batches, with the same views, as a run that never stopped,
and on a CPU its final numbers are the same (tests/run/test_run_folder.py).
:class:`TrainingClock` keeps the training time of the earlier attempts, so
``pretrain_seconds`` is the whole run's.

Where that is not possible: with several devices Lightning gives the DataLoader a
DistributedSampler, whose order is drawn per epoch from (seed, epoch), so a run resumed at
an epoch's end continues exactly, but one resumed in the middle of an epoch starts that
epoch's order again and trains on its first batches a second time.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch

from sslbench.data.order import Resumable

__all__ = [
    "DataOrder", "EpochMetrics", "StopOnSignal", "TrainingClock", "checkpoint_position",
    "keep_signal_handlers",
]  # fmt: skip


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


#: The signals that stop a run at the next step's boundary: Ctrl-C, and what `kill`, a
#: container runtime or a scheduler's time limit send first.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(pl.Callback):
    """Ctrl-C (SIGINT) or SIGTERM during training stops the run between two steps, never
    inside one: a step interrupted after its forward pass has moved the batch norms' running
    statistics, one interrupted after the optimiser has moved the weights but not the
    learning-rate schedule; a checkpoint of either resumes to another run. The signal is
    noted, the step finishes, ``checkpoint`` (sslbench's last.ckpt) is saved before the next
    step starts (or at the end of training) and KeyboardInterrupt ends the training, with
    ``results["stopped_at"]`` saying where. A second signal stops at once (last.ckpt then
    stays as the last boundary wrote it). With several processes the ranks agree every
    ``check_every`` steps (a collective: not every step)."""

    def __init__(self, checkpoint: Any, results: dict[str, Any], check_every: int = 1) -> None:
        self.checkpoint = checkpoint  # an object with save(trainer) and saved_step
        self.results = results
        self.check_every = max(1, check_every)
        self.received: signal.Signals | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The caller puts the handlers back after fit (keep_signal_handlers): Lightning's
        # teardown, after every callback's last hook, restores what it found here.
        if threading.current_thread() is threading.main_thread():  # where Python takes them
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # asked twice: stop now, inside the step
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        sys.stderr.write(
            f"\nsslbench: {self.received.name}: stopping after this step with a checkpoint "
            "that resumes exactly (again to stop at once)\n"
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._stop_if_asked(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # asked during the last step: training is whole, and the evaluation is not started
        self._stop_if_asked(trainer)

    def _stop_if_asked(self, trainer: pl.Trainer) -> None:
        asked = self.received is not None
        if trainer.world_size > 1:
            if trainer.global_step % self.check_every:
                return
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if not asked:
            return
        if trainer.global_step > 0 and self.checkpoint.saved_step != trainer.global_step:
            self.checkpoint.save(trainer)
        name = (self.received or signal.SIGINT).name
        self.results["stopped_at"] = {
            "epoch": trainer.current_epoch, "step": trainer.global_step, "signal": name
        }  # fmt: skip
        raise KeyboardInterrupt(f"{name} at epoch {trainer.current_epoch}, step "
                                f"{trainer.global_step}")  # fmt: skip

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning stops on SIGTERM itself at an epoch's end (after that epoch's save)
        if self.received is not None and self.results.get("stopped_at") is None:
            self.results["stopped_at"] = {
                "epoch": trainer.current_epoch, "step": trainer.global_step,
                "signal": self.received.name,
            }  # fmt: skip


#: The checkpoint key holding the epoch's running sums (see :class:`EpochMetrics`).
EPOCH_METRICS_KEY = "sslbench_epoch_metrics"


class EpochMetrics(pl.Callback):
    """Carries the epoch-level values logged so far (running sums and batch counts of every
    ``on_epoch`` metric: the loss, effective rank, pretext and online-probe accuracies) in
    a checkpoint saved in the middle of an epoch, and puts them back before the first step
    of a resumed run: the epoch's row in metrics.csv then averages the whole epoch, and a
    value logged every N steps (the effective rank) is not missing from it. Lightning keeps
    these sums in its logger connector and saves none of them. It must follow the callbacks
    that log in ``on_train_batch_end`` (the online probe)."""

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        per_epoch = int(trainer.num_training_batches)
        done = trainer.global_step - trainer.current_epoch * per_epoch
        if not 0 < done < per_epoch:  # at an epoch's end (or start): nothing is partial
            return
        carried = list(self.pending)  # a second stop before the first resumed step
        for metric in trainer.fit_loop.epoch_loop._results.values():
            meta = metric.meta
            if not metric.is_tensor or not meta.on_epoch or metric.has_reset:
                continue
            reduce = ("mean" if meta.is_mean_reduction else "max" if meta.is_max_reduction
                      else "min" if meta.is_min_reduction else "sum")  # fmt: skip
            batches = int(metric.cumulated_batch_size) if reduce == "mean" else 1
            carried.append({
                "fx": meta.fx, "name": meta.name, "reduce": reduce, "on_step": meta.on_step,
                "prog_bar": meta.prog_bar, "logger": meta.logger,
                "value": float(metric.value), "batch_size": batches,
            })  # fmt: skip
        checkpoint[EPOCH_METRICS_KEY] = carried

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.pending = list(checkpoint.get(EPOCH_METRICS_KEY, []))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if not self.pending:
            return
        # After the first resumed step has logged: Lightning resets a hook's sums when that
        # hook first logs in an epoch's first batch. Added to Lightning's collection as the
        # hook that logged them would (LightningModule.log would reset them again), with the
        # values' weights as batch sizes: a mean's sums then become a whole epoch's.
        results = trainer.fit_loop.epoch_loop._results
        for item in self.pending:
            weight = item["batch_size"]
            value = item["value"] / weight if item["reduce"] == "mean" else item["value"]
            results.log(
                item["fx"], item["name"], torch.tensor(value, device=pl_module.device),
                prog_bar=item["prog_bar"], logger=item["logger"], on_step=item["on_step"],
                on_epoch=True, reduce_fx=item["reduce"], batch_size=weight,
                sync_dist_fn=trainer.strategy.reduce,
            )  # fmt: skip
        self.pending = []


@contextlib.contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """The handlers of :data:`STOP_SIGNALS` as they were, after whatever happens inside
    (StopOnSignal's, and Lightning's SIG_IGN for SIGINT after an interrupt, end there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
