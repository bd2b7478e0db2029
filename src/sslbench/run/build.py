"""What a run builds before it trains: the method around a fresh backbone, Lightning's
Trainer, and the fit itself (what ``bench``, ``gallery``, ``export`` and the benchmarks
build too).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar

from sslbench.data.splits import open_data
from sslbench.errors import ConfigError, OutOfGPUMemory
from sslbench.host import set_torch_threads
from sslbench.methods import SSLMethod, method_class
from sslbench.nn.backbones import BACKBONE_KINDS, backbone_kind, create_backbone, has_tokens
from sslbench.run.cluster import cluster_plugins
from sslbench.run.quiet import quiet_lightning
from sslbench.run.resume import keep_signal_handlers
from sslbench.transforms import view_pipelines


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


def build_method(cfg: DictConfig, accelerator: str) -> SSLMethod:
    """The method's LightningModule around a freshly initialised backbone."""
    quiet_lightning()  # before the method: lightly's heads warn as they are built
    backbone = create_backbone(
        cfg.backbone.name,
        small_stem=cfg.backbone.small_stem,
        zero_init_last=cfg.backbone.zero_init_last,
        image_size=cfg.image_size,
        patch_size=cfg.backbone.get("patch_size"),
        any_size=has_local_views(cfg.method),
    )
    method_cls = method_class(cfg.method.name)
    check_backbone_kind(cfg, method_cls, backbone_kind(backbone))
    pool = cfg.eval.get("pool")
    if pool is not None and not has_tokens(backbone):
        raise ConfigError(
            f"eval.pool={pool} is for ViTs (features pooled from tokens); {cfg.backbone.name}'s "
            "features are its global average pool; use eval.pool=null"
        )
    channels_last = accelerator == "gpu" and cfg.backbone.channels_last
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    pipelines = view_pipelines(OmegaConf.to_container(cfg.transform, resolve=True), cfg.image_size)
    if len(pipelines) > method_cls.num_global_views:
        raise ConfigError(
            f"transform '{cfg.transform.name}' defines {len(pipelines)} view variants, but "
            f"{cfg.method.name} takes {method_cls.num_global_views} global views: the others "
            f"would never be used; give the transform at most {method_cls.num_global_views}"
        )
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    if "num_classes" in method_cfg and method_cfg["num_classes"] is None:
        method_cfg["num_classes"] = labelled_class_count(cfg)
    try:
        method = method_cls(
            method_cfg,
            backbone,
            pipelines,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            check_finite_every_n_steps=cfg.check_finite_every_n_steps,
            log_every_n_steps=cfg.log_every_n_steps,
            channels_last=channels_last,
            pretext=OmegaConf.to_container(cfg.pretext, resolve=True) if "pretext" in cfg else None,
        )
    except ValueError as err:  # a method's check of its own keys: the config's (exit 2)
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None
    if cfg.backbone.get("grad_checkpointing", False):
        checkpoint_blocks(method, cfg.backbone.name)
    mode = str(cfg.get("compile", "none"))
    if mode != "none":
        # The feature extractor is most of the compute; the methods call forward_features
        # (and forward_head) themselves, so that is the function compiled. After the
        # method is built: BYOL's momentum target is a copy of the plain backbone.
        backbone.forward_features = torch.compile(backbone.forward_features, mode=mode)
    return method


def checkpoint_blocks(method: SSLMethod, name: str) -> None:
    """Activation checkpointing in every network of the method that has it: the backbone,
    its EMA copies and lightly's masked-ViT wrappers around it (their own flag)."""
    if not hasattr(method.backbone, "set_grad_checkpointing"):
        raise ConfigError(
            f"backbone.grad_checkpointing=true: '{name}' has no activation checkpointing (timm "
            "ViTs, ResNets and most timm models have); use backbone.grad_checkpointing=false"
        )
    for module in method.modules():
        if module is not method and callable(getattr(module, "set_grad_checkpointing", None)):
            module.set_grad_checkpointing(True)


def has_local_views(method: DictConfig) -> bool:
    """Whether the method's views come in two sizes (multi-crop's local views)."""
    local = method.get("local_views")
    return bool(local) and int(local.get("count", 0) or 0) > 0


def check_backbone_kind(cfg: DictConfig, method_cls: type[SSLMethod], kind: str) -> None:
    """Refuse a backbone of a kind the method is not made for (MAE masks a ViT's patch
    tokens: a ResNet has none), before the method or the run folder exists."""
    kinds = method_cls.backbone_kinds
    if kind in kinds:
        return
    wanted = " or ".join(f"{k.upper()} (e.g. backbone={BACKBONE_KINDS[k]})" for k in kinds)
    raise ConfigError(
        f"method={cfg.method.name} trains a {wanted}; backbone={cfg.backbone.name} is a "
        f"{kind.upper()}; valid kinds for {cfg.method.name}: {', '.join(kinds)}"
    )


def labelled_class_count(cfg: DictConfig) -> int:
    """The class count of the run's dataset, for a method trained with its labels
    (``method=supervised``); its pretraining images must all have one."""
    data = open_data(cfg, progress=cfg.progress_bar)
    labels = data.pretrain.labels[data.pretrain_indices]
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        raise ConfigError(
            f"method={cfg.method.name} trains on labels, but {unlabelled} of the "
            f"{len(labels)} pretraining images of dataset {cfg.dataset.name} have none"
        )
    return data.num_classes


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


def out_of_gpu_memory(doing: str, key: str, value: int) -> OutOfGPUMemory:
    smaller = max(1, value // 2)
    return OutOfGPUMemory(
        f"out of GPU memory {doing} at {key}={value}; try {key}={smaller} (or a smaller "
        "image_size, or precision=bf16-mixed)"
    )
