"""One pretraining run, from a resolved config to a complete run folder.

Read top to bottom, in the order it runs: check the run's data → build the model
(:mod:`sslbench.run.build`; a mistake on the command line leaves no run folder) → claim
the run folder (:mod:`sslbench.run.folder`) and save the config → open the cached data and
fit with Lightning's Trainer (:mod:`sslbench.run.batches`, :mod:`sslbench.run.callbacks`)
→ evaluate the frozen backbone (:mod:`sslbench.eval.backbone`) → write ``results.json``.
``results.json`` says ``running`` from the start (with the process and a heartbeat that each
checkpoint renews), ``completed`` at the end, ``interrupted`` after Ctrl-C (exit 130, with
``last.ckpt`` kept) or ``failed`` with the error; every file is written atomically.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from sslbench.data.held import HeldBatches
from sslbench.data.splits import open_data
from sslbench.errors import Requeued, Stopped, one_line
from sslbench.host import peak_memory_bytes
from sslbench.methods.banks import check_bank_sizes
from sslbench.nn.backbones import total_stride
from sslbench.run.batches import data_path_of, resumable_source, train_batches
from sslbench.run.build import BuiltModel, build_run_model, build_trainer, fit, out_of_gpu_memory
from sslbench.run.callbacks import (
    EpochTimer,
    LastCheckpoint,
    online_probe,
    online_probe_results,
    pretext_results,
)
from sslbench.run.cluster import RequeueOnSignal, launch_rank, launch_ranks, launched_by
from sslbench.run.evaluate import evaluate_model, read_checkpoint
from sslbench.run.folder import claim_run_folder, metrics_columns, trim_metrics
from sslbench.run.loggers import build_loggers, close_loggers, log_scores
from sslbench.run.preflight import check_run_data, model_caveats, run_caveats, say_caveats
from sslbench.run.results import (
    atomic_write_text,
    gather_caveats,
    git_sha,
    now,
    read_results,
    run_identity,
    save_config,
    versions,
    write_results,
)
from sslbench.run.resume import (
    DataOrder,
    EpochMetrics,
    StopOnSignal,
    TrainingClock,
    checkpoint_position,
)


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run one pretraining + evaluation; return the results written to results.json.

    On any error the results say ``failed`` with the error, and the error is re-raised.
    With several devices and no launcher around this process, torchrun starts the ranks
    (:func:`~sslbench.run.cluster.launch_ranks`); started by a launcher, ranks other than 0
    only train (see :func:`~sslbench.run.cluster.launch_rank`) and return an empty dict.
    """
    run_dir = Path(cfg.run_dir)
    check_run_data(cfg)
    # The model first, before the run folder is claimed: a backbone name that timm does not
    # know, or a method that cannot use the pipeline, is a mistake on the command line and
    # leaves no failed run folder behind.
    built = build_run_model(cfg)
    if cfg.devices * cfg.num_nodes > 1 and launched_by() is None:
        return launch_ranks(cfg, run_dir)  # the ranks build their own
    if launch_rank() != 0:
        _train_on_another_rank(cfg, run_dir, built)
        return {}
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = claim_run_folder(cfg, run_dir)
    save_config(cfg, run_dir)
    results = _base_results(cfg)
    results["run_caveats"] = run_caveats(cfg) + model_caveats(
        cfg, total_stride(built.model.backbone)
    )
    results["caveats"] = gather_caveats(results)
    say_caveats(results["run_caveats"])
    if resume_from is not None:
        position = checkpoint_position(read_checkpoint(resume_from))
        results["resumed_from"] = position
        results["stops"] = _earlier_stops(run_dir)
        trim_metrics(run_dir, position["step"])
        print(f"resuming {run_dir} at epoch {position['epoch']}, step {position['step']} "
              "(resume=never starts over)", flush=True)  # fmt: skip
    write_results(run_dir, results)
    try:
        results.update(_pretrain_and_evaluate(cfg, run_dir, built, results, resume_from))
        results["caveats"] = gather_caveats(results)
        results["status"] = "completed"
    except Requeued:
        results["status"] = "requeued"
        write_results(run_dir, results)
        raise
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        stopped = results.get("stopped_at") or {"signal": "SIGINT"}  # outside training: no step
        results["stops"] = [*results.get("stops", []), {**stopped, "at": now()}]
        write_results(run_dir, results)
        if (run_dir / "last.ckpt").is_file():
            how = "the same command resumes it from last.ckpt"
        else:
            how = "it had no checkpoint yet; the same command starts it again"
        where = f" at epoch {stopped['epoch']}, step {stopped['step']}" if "step" in stopped else ""
        raise Stopped(
            f"run stopped{where}; {how} (run folder {run_dir})", stopped["signal"]
        ) from None
    except BaseException as err:
        results["status"] = "failed"
        results["error"] = one_line(f"{type(err).__name__}: {err}")
        results["peak_host_memory_bytes"] = peak_memory_bytes()
        atomic_write_text(run_dir / "error.log", traceback.format_exc())
        write_results(run_dir, results)
        raise
    results["finished_at"] = now()
    write_results(run_dir, results)
    return results


def _pretrain_and_evaluate(
    cfg: DictConfig,
    run_dir: Path,
    built: BuiltModel,
    results: dict[str, Any],
    resume_from: Path | None,
    evaluate: bool = True,
) -> dict[str, Any]:
    model, accelerator, threads = built.model, built.accelerator, built.threads
    data = open_data(cfg, progress=cfg.progress_bar)
    check_bank_sizes(cfg, model.bank_keys, len(data.pretrain_indices))
    world_size = cfg.devices * cfg.num_nodes  # the global batch is split over every process
    loader = train_batches(cfg, data, world_size, accelerator, model)
    clock = TrainingClock()
    last = LastCheckpoint(run_dir, results, cfg.get("checkpoint_every_n_steps"))
    # StopOnSignal after LastCheckpoint: the end of training is saved before it stops there
    callbacks: list[pl.Callback] = [EpochMetrics(), last, EpochTimer(), clock]
    callbacks.append(RequeueOnSignal(last, cfg.log_every_n_steps))  # acts in SLURM jobs only
    callbacks.append(StopOnSignal(last, results, cfg.log_every_n_steps))
    source = resumable_source(loader)
    if source is not None:  # one device (sslbench.run.resume says what several do)
        callbacks.append(DataOrder(source))
    probe = online_probe(cfg, data, model)
    if probe is not None:  # first: a step's checkpoint holds the probe after that step
        callbacks.insert(0, probe)
    # metrics.csv's CSVLogger first, then the trackers (kept open for the final scores)
    loggers = build_loggers(cfg, run_dir, keep_open=evaluate)
    logger = loggers[0]
    if resume_from is not None and (run_dir / "metrics.csv").is_file():
        # Lightning's CSV writer deletes metrics.csv when it starts: put the earlier
        # attempts' rows back, and append with their columns.
        earlier = (run_dir / "metrics.csv").read_text()
        logger.experiment.metrics_keys = metrics_columns(run_dir)
        atomic_write_text(run_dir / "metrics.csv", earlier)
    trainer = build_trainer(cfg, accelerator, run_dir, logger=loggers, callbacks=callbacks)
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    try:
        fit(trainer, model, loader, checkpoint=resume_from)
    except torch.OutOfMemoryError as err:  # last.ckpt, if any, holds the last epoch's end
        raise out_of_gpu_memory("training", "batch_size", cfg.batch_size) from err
    pretrain_seconds = clock.seconds  # every attempt's training, a resumed run's included
    if trainer.interrupted:
        close_loggers(loggers, "failed")
        raise KeyboardInterrupt("training interrupted")
    if not evaluate:
        return {}
    images_seen = trainer.global_step * cfg.batch_size  # all devices' images (global batch)
    peak_gpu = torch.cuda.max_memory_allocated() if accelerator == "gpu" else None
    device = "cuda" if accelerator == "gpu" else "cpu"
    try:
        metrics = evaluate_model(model, cfg, data, device)
    except BaseException:
        close_loggers(loggers, "failed")
        raise
    scores = {**metrics, **pretext_results(model, trainer), **online_probe_results(trainer)}
    log_scores(loggers, scores, trainer.global_step)  # the trackers show the scores too
    return {
        **scores,
        "pretrain_seconds": pretrain_seconds,
        "images_per_second": images_seen / pretrain_seconds,
        "peak_gpu_memory_bytes": peak_gpu,
        "peak_host_memory_bytes": peak_memory_bytes(),
        "torch_threads": threads,
        "data_path": data_path_of(loader),
        "held_images_bytes": loader.nbytes if isinstance(loader, HeldBatches) else None,
        "train_images": int(len(data.pretrain_indices)),
        "test_images": None if data.test_indices is None else int(len(data.test_indices)),
    }


def _base_results(cfg: DictConfig) -> dict[str, Any]:
    return {
        **run_identity(cfg),
        "status": "running",
        "error": None,
        "versions": versions(),
        "git_sha": git_sha(),
        "started_at": now(),
        "resumed_from": None,  # {epoch, step} of the checkpoint a resumed run continued
        # where a signal stopped this attempt ({epoch, step, signal}); every attempt's: stops
        "stopped_at": None,
        "stops": [],
        # who runs it, and when it last saved: a "running" run whose process is gone, or
        # whose heartbeat is older than an epoch, has died
        "process": {"pid": os.getpid(), "host": socket.gethostname()},
        "heartbeat_at": now(),
    }


def _earlier_stops(run_dir: Path) -> list[dict[str, Any]]:
    """The stops recorded by the earlier attempts at a run being resumed."""
    try:
        stops = read_results(run_dir).get("stops")
    except (OSError, ValueError):
        return []
    return [s for s in stops if isinstance(s, dict)] if isinstance(stops, list) else []


def _train_on_another_rank(cfg: DictConfig, run_dir: Path, built: BuiltModel) -> None:
    """Rank > 0: train beside rank 0 (from the checkpoint it resumes from, if any), write
    nothing and evaluate nothing."""
    resume_from = claim_run_folder(cfg, run_dir, modify=False)
    _pretrain_and_evaluate(cfg, run_dir, built, {}, resume_from, evaluate=False)
