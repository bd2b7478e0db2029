"""One pretraining run, from a resolved config to a complete run folder.

Read top to bottom: claim the run folder (:mod:`sslbench.run.folder`) and save the config
→ open the cached data → build backbone, pipeline and method → Lightning's Trainer fits
→ the frozen backbone is evaluated → ``results.json``.
``results.json`` says ``running`` from the start (with the process and a heartbeat that each
checkpoint renews), ``completed`` at the end, ``interrupted`` after Ctrl-C (exit 130, with
``last.ckpt`` kept) or ``failed`` with the error; every file is written atomically.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader

from sslbench.data import (
    CachedSplit,
    IndexedImages,
    collate_batch,
    get_source,
    load_or_build,
    requested_side,
    stratified_subset,
    subset_fingerprint,
)
from sslbench.data.held import HeldBatches, choose_placement
from sslbench.data.order import EpochBatchSampler, Resumable
from sslbench.data.worker_views import StepBatchSampler, ViewsOfBatches, pass_through
from sslbench.errors import (  # OutOfGPUMemory: re-exported, its old home
    ConfigError,
    OutOfGPUMemory,
    Requeued,
    Stopped,
    one_line,
)
from sslbench.eval.online_probe import OnlineProbe
from sslbench.eval.probes import (
    FEW_SHOT_FRACTIONS,
    L2_GRID,
    extract_features,
    few_shot_probes,
    knn_accuracy,
    knn_k_used,
    linear_probe,
)
from sslbench.eval.supervised import (
    LabelledImages,
    SupervisedSettings,
    light_augmentation,
    train_and_score,
)
from sslbench.host import available_cores, no_space, peak_memory_bytes, set_torch_threads
from sslbench.methods import SSLMethod, method_class
from sslbench.nn.backbones import create_backbone, total_stride
from sslbench.run.cluster import (
    RequeueOnSignal,
    cluster_plugins,
    launched_by,
    run_ranks_with_torchrun,
)
from sslbench.run.folder import claim_run_folder, metrics_columns, trim_metrics
from sslbench.run.loggers import build_loggers, close_loggers, log_scores
from sslbench.run.preflight import check_run_data, model_caveats, run_caveats, say_caveats
from sslbench.run.quiet import quiet_lightning
from sslbench.run.results import (
    TIME_FORMAT,
    atomic_write_text,
    fsync_folder,
    gather_caveats,
    git_sha,
    knn_field,
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
    keep_signal_handlers,
)
from sslbench.transforms import Pipeline, view_pipelines


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


@dataclass
class RunData:
    """The cached splits of a run and the (seeded, stratified) subsets it uses."""

    train: CachedSplit
    test: CachedSplit | None
    train_indices: np.ndarray
    test_indices: np.ndarray | None
    pretrain: CachedSplit  # what the method trains on (``train``, or STL-10's unlabeled)
    pretrain_indices: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def open_data(cfg: DictConfig, progress: bool = True) -> RunData:
    """Fetch the run's dataset if needed, then build (once) or open its decode-once caches.

    ``pretrain`` is what the method trains on: the ``train`` split, or a larger split with
    unlabeled images where the dataset has one (STL-10); the probe always trains on
    ``train``. The training subsets (``dataset.max_train``) are drawn with the run's seed; the
    test subset (``dataset.max_test``) with ``eval.subset_seed``, so every run of a dataset,
    whatever its seed, is scored on the same images.
    """
    source = get_source(cfg.dataset.name, cfg.dataset.path, cfg.dataset.get("url"),
                        progress=progress)  # fmt: skip
    side = requested_side(source, cfg.dataset.cache_size, cfg.image_size)

    def cached(split: str) -> CachedSplit:
        return load_or_build(
            source,
            split,
            side,
            progress=progress,
            strict=cfg.dataset.strict,
            jpeg_draft=cfg.dataset.jpeg_draft,
        )

    train = cached("train")
    train_idx = stratified_subset(train.labels, cfg.dataset.max_train, cfg.seed)
    pretrain, pretrain_idx = train, train_idx
    if source.pretrain_split() != "train":
        pretrain = cached(source.pretrain_split())
        pretrain_idx = stratified_subset(pretrain.labels, cfg.dataset.max_train, cfg.seed)
    test = test_idx = None
    if "test" in source.splits() and source.classes:
        test = cached("test")
        test_idx = stratified_subset(test.labels, cfg.dataset.max_test, cfg.eval.subset_seed)
    return RunData(train, test, train_idx, test_idx, pretrain, pretrain_idx)


def accelerator_of(cfg: DictConfig) -> str:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available; use device=auto or cpu")
    if cfg.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if cfg.device == "cuda" else "cpu"


def precision_of(cfg: DictConfig, accelerator: str) -> str:
    if cfg.precision != "auto":
        return str(cfg.precision)
    return "bf16-mixed" if accelerator == "gpu" else "32-true"


def build_method(cfg: DictConfig, accelerator: str) -> SSLMethod:
    """The method's LightningModule around a freshly initialised backbone."""
    backbone = create_backbone(
        cfg.backbone.name,
        small_stem=cfg.backbone.small_stem,
        zero_init_last=cfg.backbone.zero_init_last,
        image_size=cfg.image_size,
    )
    channels_last = accelerator == "gpu" and cfg.backbone.channels_last
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    pipelines = view_pipelines(OmegaConf.to_container(cfg.transform, resolve=True), cfg.image_size)
    method_cls = method_class(cfg.method.name)
    if len(pipelines) > method_cls.num_global_views:
        raise ConfigError(
            f"transform '{cfg.transform.name}' defines {len(pipelines)} view variants, but "
            f"{cfg.method.name} takes {method_cls.num_global_views} global views: the others "
            f"would never be used; give the transform at most {method_cls.num_global_views}"
        )
    method = method_cls(
        OmegaConf.to_container(cfg.method, resolve=True),
        backbone,
        pipelines,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        check_finite_every_n_steps=cfg.check_finite_every_n_steps,
        log_every_n_steps=cfg.log_every_n_steps,
        channels_last=channels_last,
        pretext=OmegaConf.to_container(cfg.pretext, resolve=True) if "pretext" in cfg else None,
    )
    mode = str(cfg.get("compile", "none"))
    if mode != "none":
        # The feature extractor is most of the compute; the methods call forward_features
        # (and forward_head) themselves, so that is the function compiled. After the
        # method is built: BYOL's momentum target is a copy of the plain backbone.
        backbone.forward_features = torch.compile(backbone.forward_features, mode=mode)
    return method


def build_trainer(
    cfg: DictConfig,
    accelerator: str,
    root_dir: Path,
    *,
    logger: Any,
    callbacks: list[pl.Callback],
    max_steps: int = -1,
    profiler: Any = None,
) -> pl.Trainer:
    """Lightning's Trainer for the run's epochs (or ``max_steps`` steps), precision and
    devices; with the run's progress bar (and ``profiler``, Lightning's, when given)."""
    # before the Trainer: it logs lines that mean nothing here (sslbench.run.quiet)
    quiet_lightning()
    if cfg.progress_bar:
        # Refreshing the bar reads the loss: a host sync, so only every N steps.
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=cfg.log_every_n_steps)]
    processes = cfg.devices * cfg.get("num_nodes", 1)
    return pl.Trainer(
        max_epochs=cfg.epochs if max_steps < 0 else -1,
        max_steps=max_steps,
        accelerator=accelerator,
        devices=cfg.devices,
        num_nodes=cfg.get("num_nodes", 1),
        # lightly's benchmarks' choice: a method may leave parameters without a gradient in
        # a step (SwAV's prototypes while frozen, a pretext head), which plain DDP refuses
        strategy="ddp_find_unused_parameters_true" if processes > 1 else "auto",
        sync_batchnorm=uses_sync_batchnorm(cfg, accelerator),
        plugins=cluster_plugins(),
        precision=precision_of(cfg, accelerator),
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,  # LastCheckpoint writes the run's checkpoint
        log_every_n_steps=cfg.log_every_n_steps,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root_dir),
        profiler=profiler,
    )


def uses_sync_batchnorm(cfg: DictConfig, accelerator: str) -> bool:
    """Whether batch norms normalise over the global batch: ``backbone.sync_batchnorm`` on
    several GPUs (torch's SyncBatchNorm has no CPU implementation: on CPUs each process
    normalises its own part, which docs/multi-gpu.md says)."""
    processes = cfg.devices * cfg.get("num_nodes", 1)
    wanted = bool(cfg.backbone.get("sync_batchnorm", True))
    return wanted and processes > 1 and accelerator == "gpu"


def fit(trainer: pl.Trainer, model: SSLMethod, loader: Any, checkpoint: Path | None = None) -> None:
    """``trainer.fit`` (from ``checkpoint`` when given) without Lightning's warnings that
    do not apply here."""
    with warnings.catch_warnings():
        # Lightning suggests more workers; the cache is memory-mapped, so reads are cheap.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # The run folder holds config.yaml and results.json already; only metrics.csv is new.
        warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")
        # A run resumed mid-epoch continues its data order exactly (sslbench.run.resume).
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        try:
            with keep_signal_handlers():  # Lightning ignores SIGINT after an interrupt
                trainer.fit(model, loader, ckpt_path=checkpoint, weights_only=True)
        except SystemExit:
            if not trainer.interrupted:
                raise
            # Lightning turns Ctrl-C into sys.exit(1) (and SIGTERM into its own SystemExit):
            # give the interrupt back to the caller (exit 130, or 143 for SIGTERM).
            raise KeyboardInterrupt from None


def _per_device_batch(cfg: DictConfig, data: RunData, world_size: int) -> int:
    per_device = cfg.batch_size // world_size
    if per_device < 2 or len(data.pretrain_indices) < cfg.batch_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} needs at least that many training images "
            f"(have {len(data.pretrain_indices)}) and 2 per device; lower batch_size"
        )
    return per_device


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


def evaluate_backbone(
    backbone: torch.nn.Module,
    cfg: DictConfig,
    data: RunData,
    pipeline: Pipeline,
    device: str,
) -> dict[str, Any]:
    """The frozen backbone's scores, each protocol in fields of its own (results.json):
    the L-BFGS linear probe (``linear_top1``, top-5 above 5 classes), weighted kNN at the
    run's (k, T) (``knn_top1`` at the default; :func:`knn_field`), the few-shot probes, on
    features computed once; with ``eval.probe=sgd`` lightly's SGD linear evaluation
    (``sgd_linear_top1``), with ``eval.finetune`` a fine-tuned copy (``finetune_top1``).
    ``evaluations`` records each protocol's settings (runs scored otherwise are never
    pooled) and what a reader must know beside its numbers (its ``caveats``)."""
    if not cfg.eval.enabled or data.test is None or data.test_indices is None:
        reason = "disabled" if not cfg.eval.enabled else "the dataset has no labelled test split"
        return {"linear_top1": None, "linear_top5": None, "knn_top1": None,
                "probe": f"not evaluated: {reason}", "test_subset": None}  # fmt: skip
    from tqdm.auto import tqdm

    splits = (("train", data.train, data.train_indices), ("test", data.test, data.test_indices))
    batches = sum(-(-len(idx) // cfg.eval.batch_size) for _, _, idx in splits)
    fits = 1 + (len(FEW_SHOT_FRACTIONS) if cfg.eval.few_shot else 0)
    bar = tqdm(total=batches + fits, desc="evaluating: features", unit="step",
               disable=not cfg.progress_bar, leave=False)  # fmt: skip
    features = {}
    for name, split, idx in splits:
        x = extract_features(
            backbone, split.images, split.aspect, idx, pipeline,
            batch_size=cfg.eval.batch_size, device=device, on_batch=lambda: bar.update(),
        )  # fmt: skip
        features[name] = (x, torch.from_numpy(split.labels[idx]).long())
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    bar.set_description("evaluating: linear probe")
    # the folds are drawn with the subset seed, not the run's: every run of a dataset has
    # its probe chosen on the same images
    selection = {
        "max_iter": cfg.eval.linear_max_iter, "folds": cfg.eval.linear_folds,
        "val_fraction": cfg.eval.linear_val_fraction, "seed": cfg.eval.subset_seed,
    }  # fmt: skip
    probe = linear_probe(train_x, train_y, test_x, test_y, data.num_classes, **selection)
    bar.update()
    k, temperature = cfg.eval.knn_k, cfg.eval.knn_temperature
    knn = knn_accuracy(train_x, train_y, test_x, test_y, data.num_classes,
                       k=k, temperature=temperature)  # fmt: skip
    k_used = knn_k_used(k, len(train_x))
    knn_caveats = []
    if k_used < k:
        knn_caveats.append(f"kNN: eval.knn_k={k} clamped to the {len(train_x)} train images")
    per_class = len(train_x) / max(1, data.num_classes)
    if k_used > per_class:  # most of the k votes then come from other classes
        knn_caveats.append(
            f"kNN: k={k_used} exceeds the ~{per_class:.0f} train images per class, so most "
            "votes come from other classes (a larger train set, or a smaller eval.knn_k, "
            "measures more)"
        )
    field = knn_field(k, temperature)
    results: dict[str, Any] = {
        "linear_top1": probe.top1,
        "linear_top5": probe.top5,
        "linear_l2": probe.l2,
        field: knn,
        "probe": probe.description,
        "test_subset": subset_fingerprint(data.test_indices, len(data.test)),
    }
    evaluations: dict[str, Any] = {
        "linear": {
            "protocol": "lbfgs",
            **selection,
            "folds": probe.folds,
            "l2_grid": list(L2_GRID),
            "l2": probe.l2,
            "selection_accuracy": probe.selection_accuracy,
            "train_images": len(train_x),
        },  # fmt: skip
        field: {
            "k": k,
            "k_used": k_used,
            "temperature": temperature,
            "train_images": len(train_x),
            "description": f"weighted kNN: k={k_used}, T={temperature}, cosine-weighted votes "
            "on the same features",
            "caveats": knn_caveats,
        },  # fmt: skip
    }
    if cfg.eval.few_shot:
        bar.set_description("evaluating: few-shot probes")
        few = few_shot_probes(train_x, train_y, test_x, test_y, data.num_classes,
                              seed=cfg.eval.subset_seed, max_iter=cfg.eval.linear_max_iter,
                              folds=cfg.eval.linear_folds,
                              val_fraction=cfg.eval.linear_val_fraction)  # fmt: skip
        results.update(few)
        evaluations["few_shot"] = {"protocol": "lbfgs", **selection,
                                   "images": few["few_shot_images"]}  # fmt: skip
        evaluations["few_shot"]["caveats"] = [
            f"few-shot {suffix.replace('pct', '%')} of the labels is {count} images "
            f"(~{count / max(1, data.num_classes):.0f} per class)"
            for suffix, count in few["few_shot_images"].items()
            if count < 20 * data.num_classes  # a handful per class: a noisy number
        ]
        bar.update(len(FEW_SHOT_FRACTIONS))
    bar.close()
    if cfg.eval.probe == "sgd" or cfg.eval.finetune:
        trained, settings = _trained_evaluations(backbone, cfg, data, pipeline, device)
        results.update(trained)
        evaluations.update(settings)
    results["evaluations"] = evaluations
    return results


def _trained_evaluations(
    backbone: torch.nn.Module,
    cfg: DictConfig,
    data: RunData,
    pipeline: Pipeline,
    device: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """lightly's SGD linear evaluation (``eval.probe=sgd``: ``sgd_linear_top1``, beside the
    L-BFGS probe's ``linear_top1``) and fine-tuning (``eval.finetune``), on crop+flip views
    (sslbench.eval.supervised); and the settings of each."""
    assert data.test is not None and data.test_indices is not None
    train = LabelledImages(data.train.images, data.train.aspect, data.train.labels,
                           data.train_indices)  # fmt: skip
    test = LabelledImages(data.test.images, data.test.aspect, data.test.labels, data.test_indices)
    transform = OmegaConf.to_container(cfg.transform, resolve=True)
    assert isinstance(transform, dict)
    views = light_augmentation(transform, pipeline.size)
    results: dict[str, Any] = {}
    kinds = [False] if cfg.eval.probe == "sgd" else []  # finetune: False (the SGD probe) / True
    kinds += [True] if cfg.eval.finetune else []
    used: dict[str, Any] = {}  # the settings of each, for results.json's evaluations
    for finetune in kinds:
        protocol = "finetune" if finetune else "sgd_linear"
        settings = SupervisedSettings(
            finetune=finetune, seed=cfg.seed,
            epochs=cfg.eval.finetune_epochs if finetune else cfg.eval.sgd_epochs,
            lr=cfg.eval.finetune_lr if finetune else cfg.eval.sgd_lr,
            batch_size=cfg.eval.finetune_batch_size if finetune else cfg.eval.sgd_batch_size,
        )  # fmt: skip
        scored = train_and_score(backbone, data.num_classes, train, test, views, pipeline,
                                 settings, device, progress=cfg.progress_bar)  # fmt: skip
        if finetune:
            results.update(finetune_top1=scored["top1"], finetune_top5=scored["top5"],
                           finetune=scored["description"])  # fmt: skip
        else:
            results.update(sgd_linear_top1=scored["top1"], sgd_linear_top5=scored["top5"],
                           sgd_probe=scored["description"])  # fmt: skip
        used[protocol] = {"epochs": settings.epochs, "lr": settings.lr,
                           "batch_size": settings.batch_size}  # fmt: skip
    return results, used


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


def now() -> str:
    return time.strftime(TIME_FORMAT)


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run one pretraining + evaluation; return the results written to results.json.

    On any error the results say ``failed`` with the error, and the error is re-raised.
    With several devices and no launcher around this process, torchrun starts the ranks
    (:func:`_launch_ranks`); started by a launcher, ranks other than 0 only train (see
    :func:`launch_rank`) and return an empty dict.
    """
    run_dir = Path(cfg.run_dir)
    check_run_data(cfg)
    # The model first, before the run folder is claimed: a backbone name that timm does not
    # know, or a method that cannot use the pipeline, is a mistake on the command line and
    # leaves no failed run folder behind.
    built = build_run_model(cfg)
    if cfg.devices * cfg.num_nodes > 1 and launched_by() is None:
        return _launch_ranks(cfg, run_dir)  # the ranks build their own
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


def _launch_ranks(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """A run over several devices started by a plain command: its folder is claimed and its
    config saved here, then torchrun starts one ``sslbench pretrain --config`` per device
    (sslbench.run.cluster says why not Lightning's launcher); rank 0 writes results.json."""
    if cfg.num_nodes > 1:
        raise ConfigError(
            f"num_nodes={cfg.num_nodes}: each node's ranks are started by the cluster's "
            "launcher (srun sslbench pretrain ..., or torchrun --nnodes on each node); see "
            "docs/multi-gpu.md"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    # claimed as rank 0 of a one-device run claims it: another run's folder is refused here
    # (modify=False only reads, and refuses nothing), before its config.yaml is replaced
    claim_run_folder(cfg, run_dir)
    save_config(cfg, run_dir)
    threads = None  # torchrun's default would be 1 per rank: each gets its share instead
    if not os.environ.get("OMP_NUM_THREADS") and cfg.get("threads") is None:
        threads = max(1, available_cores() // cfg.devices)
    code = run_ranks_with_torchrun(run_dir / "config.yaml", cfg.devices, threads)
    try:
        results = read_results(run_dir)
    except (OSError, ValueError):
        results = {}
    if code != 0 or results.get("status") != "completed":
        error = results.get("error") or f"the run's ranks exited with status {code}"
        raise RuntimeError(f"{error} (run folder {run_dir}; its ranks' output above)")
    return results


def launch_rank() -> int:
    """This process's rank in a run over several devices, from the launcher's environment
    (Lightning's own launcher and torchrun set ``LOCAL_RANK``/``RANK``, SLURM
    ``SLURM_PROCID``); 0 for a run on one device. Only rank 0 writes the run folder and
    evaluates: every rank writing results.json left the file holding whichever came last."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def _train_on_another_rank(cfg: DictConfig, run_dir: Path, built: BuiltModel) -> None:
    """Rank > 0: train beside rank 0 (from the checkpoint it resumes from, if any), write
    nothing and evaluate nothing."""
    resume_from = claim_run_folder(cfg, run_dir, modify=False)
    _pretrain_and_evaluate(cfg, run_dir, built, {}, resume_from, evaluate=False)


@dataclass
class BuiltModel:
    """A run's freshly initialised model, with the settings it was built under."""

    model: SSLMethod
    accelerator: str  # Lightning's: cpu or gpu
    threads: int  # torch's intra-op threads


def build_run_model(cfg: DictConfig) -> BuiltModel:
    """Seed, set the threads and build the run's model (its initial weights follow from the
    seed alone)."""
    threads = set_torch_threads(cfg.get("threads"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    accelerator = accelerator_of(cfg)
    return BuiltModel(build_method(cfg, accelerator), accelerator, threads)


def out_of_gpu_memory(doing: str, key: str, value: int) -> OutOfGPUMemory:
    smaller = max(1, value // 2)
    return OutOfGPUMemory(
        f"out of GPU memory {doing} at {key}={value}; try {key}={smaller} (or a smaller "
        "image_size, or precision=bf16-mixed)"
    )


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
        metrics = _evaluate(model, cfg, data, device)
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


def evaluate_run(run_dir: str | Path, cfg: DictConfig, random_init: bool = False) -> dict[str, Any]:
    """Evaluate the backbone of a finished run (its ``last.ckpt``), or with
    ``random_init`` the same backbone freshly initialised with the run's seed."""
    run_dir = Path(run_dir)
    set_torch_threads(cfg.get("threads"))
    pl.seed_everything(cfg.seed, verbose=False)
    accelerator = accelerator_of(cfg)
    device = "cuda" if accelerator == "gpu" else "cpu"
    model = build_method(cfg, accelerator)
    if not random_init:
        checkpoint = run_dir / "last.ckpt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no checkpoint {checkpoint}; was the run completed?")
        try:
            model.load_state_dict(load_weights(checkpoint))
        except RuntimeError as err:  # torch lists every mismatched tensor, one per line
            details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            raise ValueError(
                f"{checkpoint} was not written by this run's config.yaml "
                f"({details[0] if details else err}); it comes from another run"
            ) from None
    data = open_data(cfg, progress=cfg.progress_bar)
    return _evaluate(model, cfg, data, device)


def _evaluate(model: SSLMethod, cfg: DictConfig, data: RunData, device: str) -> dict[str, Any]:
    try:
        return evaluate_backbone(model.backbone.to(device), cfg, data, model.pipeline, device)
    except torch.OutOfMemoryError as err:
        raise out_of_gpu_memory(
            "extracting features", "eval.batch_size", cfg.eval.batch_size
        ) from err


def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (see :func:`read_checkpoint`)."""
    return read_checkpoint(checkpoint)["state_dict"]


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """A Lightning checkpoint, read with ``weights_only=True``: a run folder may come from
    anyone, and a full unpickle of its checkpoint could run any code."""
    import pickle

    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{checkpoint} holds more than weights (pickled objects, which could run code); "
            "sslbench reads only tensors and plain values from a checkpoint"
        ) from None


def update_results(run_dir: str | Path, update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a run's results.json (atomically)."""
    results = read_results(run_dir)
    earlier = results.get("evaluations")
    results.update(update)
    if isinstance(earlier, dict) and "evaluations" in update:
        # each protocol's settings: those evaluated now replace theirs, the others stay
        results["evaluations"] = {**earlier, **update["evaluations"]}
    results["caveats"] = gather_caveats(results)
    write_results(run_dir, results)
    return results
