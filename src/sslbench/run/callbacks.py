"""The callbacks a run trains with (its checkpoint, epoch times, the online probe) and what
the run reads back from the trainer at the end (the online probe's and the pretext
head's last values).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from sslbench.data.splits import RunData
from sslbench.eval.online_probe import OnlineProbe
from sslbench.host import no_space
from sslbench.methods import SSLMethod
from sslbench.run.results import fsync_folder, now, write_results


class LastCheckpoint(pl.Callback):
    """Writes ``last.ckpt`` at the end of every epoch (and every ``every_n_steps`` steps),
    when training ends and when it is interrupted (Ctrl-C), through a temporary file renamed
    into place (a kill during a save never leaves a truncated checkpoint), and updates
    results.json's ``heartbeat_at`` with each save, so that a ``running`` run can be told
    from a dead one."""

    def __init__(
        self, run_dir: Path, results: dict[str, Any], every_n_steps: int | None = None
    ) -> None:
        self.path = run_dir / "last.ckpt"
        self.results = results
        self.every_n_steps = every_n_steps
        self.saved_step = -1  # the step of the last save in this process
        self.in_step = False  # between a step's start and its end the state is half-made

    def save(self, trainer: pl.Trainer) -> None:
        self.saved_step = trainer.global_step
        for logger in trainer.loggers:  # all of them: trainer.logger is only the first
            logger.save()  # metrics.csv holds every step the checkpoint holds
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            # weights_only=False: optimiser and loop states too (a resume needs them); said
            # explicitly, Lightning logs a line on every save otherwise
            trainer.save_checkpoint(tmp, weights_only=False)  # every rank takes part; rank 0 writes
        except (OSError, RuntimeError) as err:  # torch reports a failed write as RuntimeError
            tmp.unlink(missing_ok=True)
            if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err):
                raise no_space(self.path) from None
            raise
        if trainer.is_global_zero:
            with open(tmp, "rb+") as written:
                os.fsync(written.fileno())
            os.replace(tmp, self.path)
            fsync_folder(self.path.parent)
            self.results["heartbeat_at"] = now()
            write_results(self.path.parent, self.results)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self.in_step = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self.in_step = False
        # Every N steps too, so a long epoch is not lost whole; not at an epoch's last
        # step, which on_train_epoch_end saves.
        step, per_epoch = trainer.global_step, int(trainer.num_training_batches)
        if self.every_n_steps and step % self.every_n_steps == 0 and step % per_epoch:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # decided by what this process did, the same on every rank (a save is collective):
        # not by the file, which rank 0 may still be renaming into place
        if trainer.global_step > 0 and self.saved_step != trainer.global_step:
            self.save(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # An interrupt between two steps keeps the steps since the last save; one inside a
        # step (a second Ctrl-C: sslbench.run.resume.StopOnSignal) would save batch-norm
        # statistics or weights that are a step ahead of the rest: the last save stays.
        if (
            isinstance(exception, KeyboardInterrupt)
            and not self.in_step
            and trainer.global_step > 0
            and self.saved_step != trainer.global_step
        ):
            self.save(trainer)


class EpochTimer(pl.Callback):
    """Logs each epoch's wall time (``epoch_seconds`` in metrics.csv): the steady-state epoch,
    not the first with its warm-ups, is what predicts a longer run's time."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()  # a run resumed mid-epoch starts no epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # once an epoch: the epoch's kernels belong to its time
        seconds = time.perf_counter() - self.start
        pl_module.log("epoch_seconds", seconds, on_step=False, on_epoch=True)


def online_probe(cfg: DictConfig, data: RunData, model: SSLMethod) -> OnlineProbe | None:
    """The run's online probe (``eval.online_probe``), for a dataset with classes."""
    if not cfg.eval.online_probe or data.num_classes < 2:
        return None
    test = None
    if data.test is not None and data.test_indices is not None:
        test = (data.test.images, data.test.aspect, data.test.labels, data.test_indices)
    return OnlineProbe(
        model.feature_dim, data.num_classes, test, cfg.eval.online_every_n_epochs,
        eval_batch_size=cfg.eval.batch_size,
    )  # fmt: skip


def online_probe_results(trainer: pl.Trainer) -> dict[str, Any]:
    """The online probe's last values: train accuracy and (when measured) test top-1."""
    logged = trainer.callback_metrics
    return {
        key: float(logged[key]) if key in logged else None
        for key in ("online_probe_train_acc", "online_probe_top1")
    }


def pretext_results(model: SSLMethod, trainer: pl.Trainer) -> dict[str, Any]:
    """The pretext heads' metrics of the last epoch (none without a pretext task)."""
    if model.pretext is None:
        return {}
    prefix = "pretext_"
    logged = {
        key[len(prefix) :]: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(prefix)
    }
    accuracy, chance = logged.get("accuracy"), model.pretext.chance
    caveats = []
    if accuracy is not None and chance is not None and accuracy <= chance + PRETEXT_AT_CHANCE:
        caveats.append(
            f"pretext head at chance: accuracy {accuracy:.3f}, chance {chance:g} (the backbone "
            f"did not learn to tell what {model.pretext.name} did; a larger pretext.weight or "
            "more epochs may)"
        )
    return {
        "pretext_accuracy": accuracy,
        "pretext_chance": chance,
        "pretext_metrics": logged,
        "pretext_task": model.pretext.describe(),
        "pretext_caveats": caveats,
    }


#: A pretext accuracy within this of its chance level is a head that learnt nothing: the
#: last epoch's accuracy over a few hundred views has about this much noise.
PRETEXT_AT_CHANCE = 0.02
