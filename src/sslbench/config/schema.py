"""The typed schema of a run's configuration.

Pure Python (no torch): the command line validates overrides against it before anything
heavy is imported. The YAML files under ``sslbench/conf`` supply the values; these
dataclasses supply the keys and their types for the parts every run shares. A method's
own keys (temperature, head sizes, ...) are typed by the defaults in its YAML file, so a
new method needs no schema code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Bump when a default changes what a run does; add the old value to
#: ``config.compose.LEGACY_DEFAULTS`` so that older saved configs still repeat their runs.
#: 2 (2026-11-30): each view through the networks on its own, torchvision's initialisation,
#: the test subset drawn with eval.subset_seed, the cache side from the source's detail.
CONFIG_VERSION = 2

#: Values of ``data_path`` and ``compile`` (torch.compile's modes, or none).
DATA_PATHS: tuple[str, ...] = ("auto", "dataloader", "device", "pinned", "workers")
COMPILE_MODES: tuple[str, ...] = ("none", "default", "reduce-overhead", "max-autotune")
#: Values of ``eval.finetune_optimizer``.
FINETUNE_OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
#: Values of ``method.optimizer.grad_clip_mode``.
GRAD_CLIP_MODES: tuple[str, ...] = ("total", "per_tensor")
#: Values of ``resume``.
RESUME_MODES: tuple[str, ...] = ("auto", "never")
#: Values of ``logger`` (one, or a list): Lightning's loggers (sslbench.run.loggers). csv is
#: always written whatever the list says: the report reads metrics.csv.
LOGGERS: tuple[str, ...] = ("csv", "tensorboard", "wandb", "mlflow")

#: The configuration groups; each is a folder of YAML files under ``conf/``.
GROUPS: tuple[str, ...] = (
    "method", "transform", "pretext", "dataset", "backbone", "experiment", "launcher",
)  # fmt: skip

#: Sections that configure how a grid runs, not what a run computes (a run's folder name,
#: its config hash, ignores them).
GRID_SECTIONS: tuple[str, ...] = ("grid", "launcher")

#: Groups every run selects one option of (``experiment`` is optional).
REQUIRED_GROUPS: tuple[str, ...] = ("method", "transform", "dataset", "backbone")


def conf_dir() -> Path:
    """Folder of the packaged YAML configuration."""
    return Path(__file__).resolve().parent.parent / "conf"


def group_options(group: str) -> list[str]:
    """Names of the YAML files of one configuration group, sorted (``_name.yaml`` files are
    parts that options include, not options)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


@dataclass
class OptimizerConfig:
    """Optimiser and learning-rate schedule of a method (lightly's benchmark protocol)."""

    name: str = "sgd"  # sgd | adam | adamw | lars
    lr: float = 0.06  # learning rate at the reference batch size
    # lr is multiplied by batch_size / reference_batch_size; null: not scaled
    reference_batch_size: int | None = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | constant
    # step: the schedule advances every optimiser step (smooth); epoch: once per epoch, as
    # lightly's benchmark steps its CosineAnnealingLR (at 200 epochs the two differ by < 1%
    # of the base lr at any step)
    schedule_interval: str = "step"
    warmup_epochs: float = 0.0  # linear warm-up from 0, in (fractional) epochs
    # biases and normalisation weights (1-d parameters): no weight decay and, for LARS,
    # no trust-ratio adaptation (the VICReg/Barlow Twins recipe)
    exclude_bias_and_norm: bool = False
    # null: the weight decay stays; a float: it follows a cosine from weight_decay to this
    # over all optimiser steps (DINO, iBOT and MSN on ViTs: 0.04 -> 0.4)
    weight_decay_end: float | None = None
    # null: no clipping; a float: gradients clipped to this norm before each step, over all
    # parameters together (grad_clip_mode=total, torch's clip_grad_norm_) or each parameter
    # tensor on its own (per_tensor: DINO's and iBOT's clip_gradients)
    grad_clip: float | None = None
    grad_clip_mode: str = "total"  # total | per_tensor
    # Adam and AdamW: (beta1, beta2); null: torch's (0.9, 0.999). MAE: [0.9, 0.95]
    betas: list[float] | None = None


@dataclass
class DatasetConfig:
    """Which images a run trains and evaluates on."""

    name: str = "fashion-mnist"  # a dataset of sslbench.data.CATALOG
    path: str | None = None  # local folder or archive, for sources that take one
    url: str | None = None  # download from here instead of the catalogue's URL (a mirror)
    path_required: bool = False  # the source has no default location: dataset.path is needed
    max_train: int | None = None  # seeded, class-stratified subset of the train split
    max_test: int | None = None  # same for the test split, drawn with eval.subset_seed
    # stored side S of the decode-once cache; null: the source's own detail (the long side of
    # its typical picture) up to 320-px pictures, else 2 x image_size (data.sides.default_side)
    cache_size: int | None = None
    default_image_size: int = 224  # global crop side when the run does not set image_size
    strict: bool = False  # unreadable images: an error instead of a warning
    # true: JPEGs decoded at a reduced scale (1/2..1/8) still >= the cache side, faster cache
    # builds of full-size pictures, pixels within ~2 grey levels; false (the reference):
    # full-size decode, then resize (docs/datasets.md)
    jpeg_draft: bool = False


@dataclass
class BackboneConfig:
    """A timm model by name, used without its classifier."""

    name: str = "resnet18"  # any timm model name
    small_stem: bool = False  # ResNets: 3x3 stride-1 first conv, no max-pool (images <= 64 px)
    # ViTs and other patch models (built by timm for the run's image_size): the side of a
    # patch in pixels; null: the model's own (16 for vit_small_patch16_224). 4 or 8 suit
    # 32-96 px images (the small-image ViT recipes), 16 suits 224 px
    patch_size: int | None = None
    # Residual CNNs: the last batch norm of each block starts at 0 (timm's default) or at 1
    # (false: torchvision's resnet18(), which the study and lightly's benchmark used)
    zero_init_last: bool = False
    channels_last: bool = True  # memory format on the GPU
    # recompute each block's activations in the backward pass instead of keeping them
    # (timm's set_grad_checkpointing): less memory, a second forward pass of each block,
    # the same numbers (the cost is not measured yet: benchmarks/gpu_vit.sh)
    grad_checkpointing: bool = False
    # With several GPUs: every batch norm (backbone and heads) normalises over the global
    # batch, so a run on N GPUs trains the network a run on one GPU does (the methods'
    # papers; lightly's benchmark on one GPU). false: each GPU's own statistics. No effect on
    # one device; not available on CPUs (torch's SyncBatchNorm needs a GPU)
    sync_batchnorm: bool = True


@dataclass
class EvalConfig:
    """Evaluation of the frozen backbone (the study's protocol: a linear probe)."""

    enabled: bool = True
    knn_k: int = 200  # weighted kNN (Wu et al. 2018): neighbours
    knn_temperature: float = 0.1  # weighted kNN: softmax temperature of cosine similarities
    linear_max_iter: int = 200  # L-BFGS iterations of the logistic-regression probe
    # the L2 strength is chosen by k-fold cross-validation on the train features (each held
    # out once: stable on small train sets, where one split flipped the choice); 0 or 1: one
    # held-out split of linear_val_fraction (how runs without results.json evaluations were)
    linear_folds: int = 5
    linear_val_fraction: float = 0.2  # with linear_folds < 2: train features held out
    batch_size: int = 512  # feature-extraction batch
    # seed of the test subset (dataset.max_test): not the run's seed, so that every run of a
    # dataset is scored on the same images (results.json: test_subset)
    subset_seed: int = 0
    # the linear probe also trained on 1% and 10% of the train labels (class-stratified, at
    # least one image per class, drawn with subset_seed): linear_top1_1pct / _10pct
    few_shot: bool = True
    # the linear probe: lbfgs (logistic regression on precomputed centre-view features,
    # seconds) | sgd (lightly's linear evaluation: SGD on features of crop+flip views, the
    # backbone frozen, sgd_epochs epochs; how the study scored its runs, minutes to hours)
    probe: str = "lbfgs"
    sgd_epochs: int = 90  # lightly's linear evaluation
    sgd_lr: float = 0.1  # lightly's: 0.1 x global batch / 256, momentum 0.9, no weight decay
    sgd_batch_size: int = 256
    # fine-tuning of the whole backbone with a linear head on crop+flip views (lightly's
    # finetune evaluation: 30 epochs, SGD 0.05 x batch / 256, momentum 0.9, cosine per step)
    finetune: bool = False
    finetune_epochs: int = 30
    finetune_lr: float = 0.05
    finetune_batch_size: int = 256
    # the ViT recipe (MAE's fine-tuning, its FINETUNE.md for ViT-B: AdamW, weight decay 0.05,
    # layer-wise lr decay 0.65, 5 warm-up epochs): the optimiser, its weight decay, the lr
    # decay per layer from the head down (null: one lr for all; timm's layer groups) and the
    # linear warm-up in epochs
    finetune_optimizer: str = "sgd"  # sgd (momentum 0.9, lightly's) | adamw
    finetune_weight_decay: float = 0.0
    finetune_layer_decay: float | None = None
    finetune_warmup_epochs: float = 0.0
    # an online linear probe on detached features of the first global view, trained during
    # pretraining with its own optimiser (the run's result does not change): per-epoch train
    # accuracy in metrics.csv; with online_every_n_epochs also its test top-1
    online_probe: bool = True
    online_every_n_epochs: int | None = None
    # ViTs: the features every evaluation scores, the class token (cls) or the mean of the
    # patch tokens (avg); null: the method's own (SSLMethod.eval_pool). CNNs: their global
    # average pool, null only. Recorded with each protocol's settings in results.json
    pool: str | None = None


@dataclass
class GridConfig:
    """How ``sslbench pretrain -m`` runs a grid; nothing here changes a run's result."""

    jobs: int = 1  # runs at once, each a child process (on a CPU each gets its share of cores)
    # An experiment's explicit run list: each entry the overrides of one row (for example
    # [method=vicregl, method.alpha=0.25]), crossed with ``axes``; empty: one row, no overrides
    runs: list[list[str]] = field(default_factory=list)
    axes: dict[str, list[str]] = field(default_factory=dict)  # key -> values, crossed


@dataclass
class RunConfig:
    """One pretraining run. ``method``, ``transform`` and ``pretext`` come from their
    groups' YAML."""

    method: dict[str, Any] = field(default_factory=dict)
    transform: dict[str, Any] = field(default_factory=dict)
    # a pretext task on top of the method (none | lorot | dcl): a head predicts what the
    # transform's op did to each view, its loss added to the method's (docs/pretext.md)
    pretext: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    # where a grid's runs go: local (child processes here), slurm (one job per run through
    # hydra-submitit-launcher), submitit_local (the same machinery on this machine)
    launcher: dict[str, Any] = field(default_factory=dict)
    epochs: int = 200  # the study's
    batch_size: int = 256  # global, over all devices (the study's)
    image_size: int | None = None  # global crop side; null: dataset.default_image_size
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    devices: int = 1  # devices per node (Lightning DDP over devices x num_nodes processes)
    # nodes of a multi-node run, each started by its launcher (srun, torchrun; docs/multi-gpu.md)
    num_nodes: int = 1
    num_workers: int = 0  # DataLoader workers (the cache is memory-mapped: 0 is often best)
    # torch's CPU threads; null: the cores this process may use (affinity, container quota),
    # or its share of them in a grid (sslbench.host)
    threads: int | None = None
    # how training batches reach the model: dataloader (from the memory-mapped cache),
    # device (the run's images copied once to the GPU, each batch one gather there), pinned
    # (held in page-locked RAM, copied per batch), workers (views made in num_workers
    # DataLoader workers while the step computes; CPU); auto: device or pinned on one GPU
    # when they fit, else dataloader. The same batches every way (sslbench.data.held)
    data_path: str = "auto"
    # torch.compile the backbone: none | default | reduce-overhead | max-autotune (its modes)
    compile: str = "none"
    # auto (bf16-mixed on GPU, 32-true on CPU) | 32-true | bf16-mixed | 16-mixed
    precision: str = "auto"
    run_dir: str | None = None  # null: runs/<method>-<transform>-<dataset>-<backbone>-<hash>
    # a run_dir holding another run's config.yaml is an error; true: that run is replaced
    overwrite: bool = False
    # auto: a run folder with last.ckpt and no completed result continues from it (same
    # batches and views as a run that never stopped); never: it starts over
    resume: str = "auto"
    # last.ckpt at every epoch's end, on Ctrl-C, and every N optimiser steps when set
    checkpoint_every_n_steps: int | None = None
    runs_root: str = "runs"  # where run folders go when run_dir is null
    # experiment trackers beside metrics.csv: csv | tensorboard | wandb | mlflow, or a list
    # ([csv,tensorboard]); Any because OmegaConf types no union of a string and a list
    # (config.validate.logger_names checks it; docs/trackers.md)
    logger: Any = "csv"
    log_every_n_steps: int = 10
    check_finite_every_n_steps: int = 10  # a non-finite loss stops the run within this many steps
    progress_bar: bool = True
    # Version of the defaults a saved config.yaml was written with: a config of an earlier
    # version lacks keys whose defaults have changed since, and is loaded with its own
    # (config.compose.LEGACY_DEFAULTS), so that it repeats the run it describes.
    config_version: int = CONFIG_VERSION


#: The sections of RunConfig typed by a dataclass (the others are typed by their YAML).
TYPED_SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "backbone": BackboneConfig,
    "eval": EvalConfig,
    "grid": GridConfig,
    "method.optimizer": OptimizerConfig,
}
