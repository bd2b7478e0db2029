"""lightly's own way of training each method beside sslbench's, same budget, same probe.

Two sides, trained from the same resolved sslbench config (``experiment=demo`` plus the slow
test's per-method ``RUNS``, with --backbone, --epochs, --max-train, ...):

- ``lightly``: what lightly's benchmark (docs/.../imagenette_benchmark.py, the study's base)
  does: torchvision's ``resnet18()`` without its classifier (for ``--backbone resnet18``;
  other names use sslbench's timm model), lightly's per-image transforms on PIL images in a
  ``DataLoader``, lightly's heads and losses, every view through the networks on its own,
  ``CosineWarmupScheduler``, a plain PyTorch loop in float32;
- ``sslbench``: ``sslbench pretrain`` of that config, at its defaults.

Both use sslbench's cache, its seeded subsets (the same images, the same test images for
every seed) and its ``evaluate_backbone`` (linear probe and kNN). Each random-init backbone
(torchvision's and sslbench's) is scored too. One JSON line per run goes to --out; the
summary compares the sides over seeds. The issue's protocol (standard stem, 32 px, batch
128, 4 epochs, 10,000 Fashion-MNIST images) is the default:

    python benchmarks/lightly_reference.py --backbone resnet18 --seeds 0 1 2
    python benchmarks/lightly_reference.py --backbone resnet10t --seeds 0 1 2 --sides lightly
    python benchmarks/lightly_reference.py --summarize benchmarks/results/lightly_reference_v2.jsonl

VICRegL needs feature maps larger than 1x1: it keeps ``RUNS``' small stem at 32 px (and
its 1,000 images), on both sides.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import platform
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from lightly.loss import (
    BarlowTwinsLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    SwaVLoss,
    VICRegLLoss,
    VICRegLoss,
)
from lightly.models.modules import heads
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sslbench.config import compose
from sslbench.data.splits import RunData, open_data
from sslbench.eval.backbone import evaluate_backbone
from sslbench.nn.backbones import create_backbone
from sslbench.run.pretrain import pretrain
from sslbench.run.results import git_sha, versions
from sslbench.tools.lightly_views import (
    ImageTransform,
    PILViews,
    swav_transform,
    two_view_transform,
    vicregl_grid_sides,
    vicregl_transform,
)
from sslbench.transforms import Pipeline

METHODS = ("simclr", "simsiam", "byol", "barlowtwins", "vicreg", "swav", "vicregl")

#: sslbench's settings for these short runs: the test's base and its per-method ``RUNS``
#: (tests/methods/test_methods_learn.py), less ``epochs=3``, which --epochs sets. ``check_runs``
#: warns when the test's RUNS no longer match this copy.
BASE = ["experiment=demo", "progress_bar=false"]
RUNS: dict[str, list[str]] = {
    "simclr": [],
    "simsiam": ["method.optimizer.lr=0.12"],
    "byol": [],
    "barlowtwins": [
        "method.optimizer.name=lars",
        "method.optimizer.lr=0.2",
        "method.optimizer.weight_decay=1.5e-6",
        "method.optimizer.exclude_bias_and_norm=true",
    ],
    "vicreg": ["method.optimizer.warmup_epochs=0.3"],
    "swav": [],
    "vicregl": [
        "method.optimizer.warmup_epochs=0.3",
        "backbone.small_stem=true",
        "dataset.max_train=1000",  # wins over --max-train, as in the test
        "method.local_views.count=2",
        "method.local_views.size_ratio=0.5",
    ],
}

#: What differs between the two sides for every method (per-method ones are added below).
COMMON_DIFFERENCES = [
    "initial weights: lightly's side builds torchvision's resnet18() (lightly's benchmark), "
    "sslbench timm's resnet18 with zero_init_last=False: the same distributions "
    "(tests/nn/test_backbones.py), other draws; other backbone names: the same timm model",
    "augmentation: lightly's per-image torchvision/PIL ops on the 28-px cached images in the "
    "DataLoader instead of sslbench's batched tensor ops; same parameters, but torchvision's "
    "crop boxes are whole pixels of the 28-px image (sslbench: sub-pixel boxes, roi_align) "
    "and PIL rounds to uint8 between the colour-jitter steps",
    "random draws: torch's global generator seeded once (sslbench: a generator per step); same "
    "distributions, other draws; the batches are shuffled by the same seeded sampler",
    "precision: float32 on lightly's side; sslbench's default (bf16-mixed on a GPU, float32 "
    "on a CPU)",
    "lr: lightly's CosineWarmupScheduler(end_value=0) stepped every optimiser step; the same "
    "warm-up, but the cosine reaches 0 at the last step, progress (s-w)/(T-w-1), where "
    "sslbench's uses (s-w)/(T-w)",
    "a plain PyTorch loop: no Lightning, no collapse monitor, no non-finite checks",
]


#: How these settings differ from lightly's own Imagenette benchmark (context, not a
#: difference from sslbench): its numbers come from torchvision resnet18 at 128 px, batch 256,
#: 200 or 800 epochs, the lr schedule stepped per epoch.
VS_LIGHTLY_BENCHMARK = {
    "simclr": "NTXentLoss T=0.2 (the demo's) vs 0.5; colour-jitter strength 1.0 vs 0.5",
    "simsiam": "lr 0.12 vs 0.06; SimCLRTransform vs SimSiamTransform",
    "byol": "SimCLRTransform vs BYOLTransform (asymmetric blur and solarisation)",
    "barlowtwins": "LARS 0.2*b/256, wd 1.5e-6, biases and norms excluded vs SGD 0.06*b/256, "
    "wd 5e-4; SimCLRTransform vs BYOLTransform",
    "vicreg": "VICRegProjectionHead (the same 3 layers as its BarlowTwinsProjectionHead); "
    "warm-up 0.3 of the epochs vs 20 of 200; SimCLRTransform vs VICRegTransform",
    "swav": "SimCLR jitter strength 1.0 vs 0.5",
    "vicregl": "2 local views vs none (n_local_views=0); small stem; sslbench's SimCLR crop "
    "and jitter vs VICRegLTransform's defaults (jitter p 1.0, strength 0.5, blur, solarisation)",
}


# -- backbone: torchvision's resnet18(), as lightly's benchmark builds it -----------------------
class TorchvisionResNet18(nn.Module):
    """torchvision's ``resnet18()`` without its classifier (lightly's benchmark:
    ``nn.Sequential(*list(resnet.children())[:-1])``), with timm's ``forward_features`` /
    ``forward_head`` so that VICRegL can read its feature map. ``small_stem`` swaps in a 3x3
    stride-1 first convolution and drops the max-pool, as sslbench's small stem does."""

    def __init__(self, small_stem: bool = False) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18()
        if small_stem:
            resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
            resnet.maxpool = nn.Identity()
        self.body = nn.Sequential(*list(resnet.children())[:-2])
        self.num_features = 512

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward_head(self, x: Tensor, pre_logits: bool = True) -> Tensor:
        return x.mean(dim=(2, 3))  # AdaptiveAvgPool2d(1) + flatten

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def lightly_backbone(cfg: DictConfig) -> nn.Module:
    """lightly's benchmark's backbone for ``backbone=resnet18``; torchvision has no other
    timm name, so those use sslbench's timm model (as configured)."""
    if cfg.backbone.name == "resnet18":
        return TorchvisionResNet18(small_stem=cfg.backbone.small_stem)
    return sslbench_backbone(cfg)


def sslbench_backbone(cfg: DictConfig) -> nn.Module:
    return create_backbone(
        cfg.backbone.name,
        small_stem=cfg.backbone.small_stem,
        zero_init_last=cfg.backbone.zero_init_last,
    )


# -- one function per method: lightly's heads and losses, with sslbench's sizes --------------
@dataclass
class Recipe:
    """What one method trains: ``model`` (whose ``backbone`` is evaluated), the lightly
    transform giving each image's views, and ``loss(views, epoch)`` for one batch."""

    model: nn.ModuleDict
    transform: ImageTransform
    loss: Callable[[list[Tensor], int], Tensor]
    differences: list[str] = field(default_factory=list)


def symmetric_recipe(
    cfg: DictConfig, backbone: nn.Module, head: nn.Module, criterion: nn.Module
) -> Recipe:
    """A method whose loss compares the head's embeddings of two views (SimCLR, Barlow Twins,
    VICReg), each view through the backbone separately as lightly's benchmark does."""

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        x0, x1 = views
        return criterion(head(backbone(x0)), head(backbone(x1)))

    return Recipe(
        nn.ModuleDict({"backbone": backbone, "head": head}), two_view_transform(cfg), loss
    )


def build_simclr(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    m = cfg.method
    head = heads.SimCLRProjectionHead(
        backbone.num_features, m.hidden_dim, m.output_dim, num_layers=m.num_layers
    )
    criterion = NTXentLoss(temperature=m.temperature)

    return symmetric_recipe(cfg, backbone, head, criterion)


def build_simsiam(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    m = cfg.method
    projection = heads.SimSiamProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    prediction = heads.SimSiamPredictionHead(m.output_dim, m.predictor_hidden_dim, m.output_dim)
    criterion = NegativeCosineSimilarity()

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        z = projection(backbone(x))
        return z.detach(), prediction(z)  # stop-gradient on the projection

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        (z0, p0), (z1, p1) = forward(views[0]), forward(views[1])
        return 0.5 * (criterion(z0, p1) + criterion(z1, p0))

    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "prediction": prediction}
    )
    return Recipe(model, two_view_transform(cfg), loss)


def build_byol(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    m = cfg.method
    if m.momentum_end is not None:
        raise NotImplementedError("this script follows lightly's constant EMA momentum")
    projection = heads.BYOLProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    prediction = heads.BYOLPredictionHead(m.output_dim, m.predictor_hidden_dim, m.output_dim)
    target = nn.ModuleDict(
        {"backbone": copy.deepcopy(backbone), "projection": copy.deepcopy(projection)}
    )
    deactivate_requires_grad(target)
    criterion = NegativeCosineSimilarity()

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        # lightly's order: the EMA update first, once per step, then the forward passes.
        update_momentum(backbone, target["backbone"], m=m.momentum)
        update_momentum(projection, target["projection"], m=m.momentum)
        x0, x1 = views
        p0, p1 = prediction(projection(backbone(x0))), prediction(projection(backbone(x1)))
        with torch.no_grad():
            t0 = target["projection"](target["backbone"](x0))
            t1 = target["projection"](target["backbone"](x1))
        return 0.5 * (criterion(p0, t1) + criterion(p1, t0))

    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "prediction": prediction, "target": target}
    )
    return Recipe(model, two_view_transform(cfg), loss)


def build_barlowtwins(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    m = cfg.method
    head = heads.BarlowTwinsProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    criterion = BarlowTwinsLoss(lambda_param=m.lambda_param)

    return symmetric_recipe(cfg, backbone, head, criterion)


def build_vicreg(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    m = cfg.method
    head = heads.VICRegProjectionHead(
        backbone.num_features, m.hidden_dim, m.output_dim, num_layers=m.num_layers
    )
    criterion = VICRegLoss(lambda_param=m.lambda_param, mu_param=m.mu_param, nu_param=m.nu_param)

    return symmetric_recipe(cfg, backbone, head, criterion)


def build_swav(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    m = cfg.method
    if m.queue_length:
        raise NotImplementedError("this script trains SwAV without a queue (queue_length=0)")
    projection = heads.SwaVProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    # lightly's SwaVQueue benchmark: frozen while the step it is given (the epoch) is < 1.
    frozen_epochs = int(m.freeze_prototypes_epochs)
    assert frozen_epochs == m.freeze_prototypes_epochs, "whole epochs only"
    prototypes = heads.SwaVPrototypes(m.output_dim, m.n_prototypes, frozen_epochs)
    criterion = SwaVLoss(
        temperature=m.temperature,
        sinkhorn_iterations=m.sinkhorn_iterations,
        sinkhorn_epsilon=m.sinkhorn_epsilon,
    )
    n_global = 2

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        prototypes.normalize()  # prototypes on the unit sphere
        scores = [
            prototypes(F.normalize(projection(backbone(x)), dim=1, p=2), epoch) for x in views
        ]
        return criterion(scores[:n_global], scores[n_global:])

    transform = swav_transform(cfg)
    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "prototypes": prototypes}
    )
    return Recipe(model, transform, loss)


def build_vicregl(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    m = cfg.method
    if m.num_matches is not None:
        raise NotImplementedError("this script derives num_matches from the grids")
    projection = heads.BarlowTwinsProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    local_projection = heads.VicRegLLocalProjectionHead(
        backbone.num_features, m.local_hidden_dim, m.local_output_dim
    )
    # lightly's grids must have the backbone's feature-map size: 4x4 at 32 px, 2x2 at 16 px
    # with the small stem (lightly's 128-px benchmark: 4x4 and 2x2, num_matches (16, 4)).
    global_grid, local_grid = vicregl_grid_sides(cfg, backbone)
    if min(global_grid, local_grid) < 2:
        raise ValueError(f"VICRegL needs feature maps > 1x1, got {global_grid}, {local_grid}")
    num_matches = (min(20, global_grid**2), min(4, local_grid**2))  # lightly's (20, 4) at most
    criterion = VICRegLLoss(
        lambda_param=m.lambda_param,
        mu_param=m.mu_param,
        nu_param=m.nu_param,
        alpha=m.alpha,
        num_matches=num_matches,
    )
    n_global, n_local = 2, m.local_views.count

    def encode(x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = backbone.forward_features(x)  # (N, C, h, w)
        pooled = backbone.forward_head(fmap, pre_logits=True)  # (N, C)
        return projection(pooled), local_projection(fmap.permute(0, 2, 3, 1))

    def loss(views_and_grids: list[Tensor], epoch: int) -> Tensor:
        n_views = n_global + n_local
        views, grids = views_and_grids[:n_views], views_and_grids[n_views:]
        features = [encode(x) for x in views]
        return criterion(
            global_view_features=features[:n_global],
            global_view_grids=grids[:n_global],
            local_view_features=features[n_global:],
            local_view_grids=grids[n_global:],
        )

    transform = vicregl_transform(cfg, global_grid, local_grid)
    g, lg = global_grid, local_grid
    differences = [
        "local views: VICRegLTransform gives its local crops vertical flips with p=0.5 "
        "(RandomResizedCropAndFlip's default; vf_prob reaches only the global crops); "
        "sslbench: none",
        "local views: colour-jitter saturation 0.4 (VICRegLViewTransform's default; the "
        "cj_* values reach only the global views); no effect on these grey images",
        f"location grids: lightly puts the cell centres at linspace(left, left+w, g) + w/(2g), "
        f"i.e. at {[round((i / (g - 1) + 1 / (2 * g)), 3) for i in range(g)]} of the crop "
        f"width for g={g} and {[round((i / (lg - 1) + 1 / (2 * lg)), 3) for i in range(lg)]} "
        f"for g={lg} (the last one outside the crop); sslbench: the true centres "
        f"{[round((i + 0.5) / g, 3) for i in range(g)]} and "
        f"{[round((i + 0.5) / lg, 3) for i in range(lg)]}",
    ]
    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "local_projection": local_projection}
    )
    return Recipe(model, transform, loss, differences)


BUILDERS: dict[str, Callable[[DictConfig, nn.Module], Recipe]] = {
    "simclr": build_simclr,
    "simsiam": build_simsiam,
    "byol": build_byol,
    "barlowtwins": build_barlowtwins,
    "vicreg": build_vicreg,
    "swav": build_swav,
    "vicregl": build_vicregl,
}


# -- training: sslbench's optimiser settings, lightly's scheduler, a plain loop --------------
def build_optimizer(cfg: DictConfig, model: nn.Module, steps_per_epoch: int, epochs: int):
    """sslbench's optimiser (name, lr scaled by batch / reference batch, weight decay, biases
    and norms excluded where asked) with lightly's cosine warm-up schedule per step."""
    opt = cfg.method.optimizer
    lr = opt.lr * (cfg.batch_size / opt.reference_batch_size if opt.reference_batch_size else 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if opt.exclude_bias_and_norm:  # no decay and (LARS) no trust ratio on 1-d parameters
        params: Any = [
            {"params": [p for p in trainable if p.ndim > 1]},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ]
    else:
        params = trainable
    if opt.name == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    elif opt.name == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=opt.weight_decay)
    elif opt.name == "lars":
        optimizer = LARS(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    else:
        raise ValueError(f"optimizer {opt.name} not handled here")
    if opt.schedule != "cosine":
        raise ValueError(f"schedule {opt.schedule} not handled here")
    total_steps = steps_per_epoch * epochs
    warmup_steps = int(opt.warmup_epochs * steps_per_epoch)  # as sslbench rounds it
    scheduler = CosineWarmupScheduler(optimizer, warmup_steps, total_steps, end_value=0.0)
    return optimizer, scheduler, {"name": opt.name, "lr": lr, "weight_decay": opt.weight_decay,
                                  "momentum": opt.momentum, "warmup_steps": warmup_steps,
                                  "total_steps": total_steps,
                                  "exclude_bias_and_norm": opt.exclude_bias_and_norm}  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(recipe: Recipe, cfg: DictConfig, data: RunData, args, device: str) -> dict[str, Any]:
    """The training loop alone; returns its timing, losses and optimiser settings."""
    dataset = PILViews(data.train.images, data.train.labels, data.train_indices, recipe.transform)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        # sslbench's sampler seed: the same images in the same batches
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    model = recipe.model.to(device).train()
    optimizer, scheduler, opt_info = build_optimizer(cfg, model, len(loader), cfg.epochs)
    epoch_losses = []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        total = 0.0
        for views, _labels in loader:
            views = [v.to(device) for v in views]
            loss = recipe.loss(views, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())  # SwaVLoss gives shape (1,)
        epoch_losses.append(total / len(loader))
        print(f"  epoch {epoch}: mean loss {epoch_losses[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - start
    images = len(loader) * cfg.batch_size * cfg.epochs
    return {"train_seconds": seconds, "images_per_second": images / seconds,
            "steps_per_epoch": len(loader), "epoch_losses": epoch_losses,
            "optimizer": opt_info}  # fmt: skip


# -- the run ---------------------------------------------------------------------------------
def method_config(method: str, args: argparse.Namespace, seed: int) -> DictConfig:
    """sslbench's resolved config of one method's run (the test's per-method settings)."""
    return compose([
        *BASE,
        f"backbone={args.backbone}",
        f"dataset.max_train={args.max_train}",
        f"dataset.max_test={args.max_test}",
        f"method={method}",
        *RUNS[method],
        *args.override,
        f"epochs={args.epochs}",
        f"batch_size={args.batch_size}",
        f"seed={seed}",
        f"runs_root={args.runs_root}",
    ])  # fmt: skip


def check_runs() -> bool | None:
    """Whether the test's RUNS (less epochs=...) still equal this script's copy."""
    path = Path(__file__).resolve().parents[1] / "tests" / "test_methods_learn.py"
    if not path.is_file():
        return None
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "RUNS":
            runs = ast.literal_eval(node.value)
            runs = {k: [o for o in v if not o.startswith("epochs=")] for k, v in runs.items()}
            return runs == RUNS
    return None


def _row(cfg: DictConfig, data: RunData, side: str, method: str, args, **values) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.machine()
    return {
        "benchmark": "lightly_reference",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{name}, {torch.get_num_threads()} torch threads, {device}",
        "side": side,
        "method": method,
        "backbone": cfg.backbone.name,
        "small_stem": cfg.backbone.small_stem,
        "overrides": [*BASE, f"method={method}", *RUNS[method], *args.override],
        "variant": " ".join(args.override),
        "method_config": OmegaConf.to_container(cfg.method, resolve=True),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "train_images": int(len(data.train_indices)),
        "test_images": int(len(data.test_indices)),
        **values,
        "versions": versions(),
        "git_sha": git_sha(),
    }


def run_random_init(cfg: DictConfig, data: RunData, args, method: str) -> list[dict]:
    """The probe on both sides' backbones at random init, seeded as their runs are."""
    rows = []
    pipeline = Pipeline(OmegaConf.to_container(cfg.transform.ops), cfg.image_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for side, build in (
        ("random-lightly", lightly_backbone),
        ("random-sslbench", sslbench_backbone),
    ):
        seed_everything(cfg.seed)
        metrics = evaluate_backbone(build(cfg).to(device), cfg, data, pipeline, device)
        rows.append(_row(cfg, data, side, method, args, **_metrics(metrics)))
    return rows


def _metrics(metrics: dict) -> dict:
    keep = ("linear_top1", "linear_top5", "knn_top1", "probe", "test_subset")
    return {key: metrics[key] for key in keep}


def run_lightly(cfg: DictConfig, data: RunData, args, method: str) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seed_everything(cfg.seed)
    recipe = BUILDERS[method](cfg, lightly_backbone(cfg))
    trained = train(recipe, cfg, data, args, device)
    pipeline = Pipeline(OmegaConf.to_container(cfg.transform.ops), cfg.image_size)
    metrics = evaluate_backbone(recipe.model["backbone"], cfg, data, pipeline, device)
    return _row(
        cfg, data, "lightly", method, args, **_metrics(metrics),
        train_minutes=trained["train_seconds"] / 60, **trained,
        num_workers=args.num_workers,
        differences=[*COMMON_DIFFERENCES, *recipe.differences],
        vs_lightly_benchmark=VS_LIGHTLY_BENCHMARK[method],
    )  # fmt: skip


def run_sslbench(cfg: DictConfig, data: RunData, args, method: str) -> dict:
    results = pretrain(cfg)
    return _row(
        cfg, data, "sslbench", method, args, **_metrics(results),
        train_minutes=results["pretrain_seconds"] / 60,
        images_per_second=results["images_per_second"], run_dir=str(cfg.run_dir),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sides", nargs="+", choices=("lightly", "sslbench", "random"),
                        default=["lightly", "sslbench", "random"])  # fmt: skip
    parser.add_argument(
        "--backbone", default="resnet18", help="resnet18: torchvision's for lightly"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-train", type=int, default=10_000, help="vicregl keeps RUNS' 1000")
    parser.add_argument("--max-test", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-workers", type=int, default=0, help="lightly's DataLoader workers")
    parser.add_argument("--runs-root", default="/tmp/sslbench-lightly-reference")
    parser.add_argument("--out", default="benchmarks/results/lightly_reference_v2.jsonl")
    parser.add_argument("--summarize", nargs="+", metavar="JSONL", help="only print the tables")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="an sslbench override for both sides, after the method's own (a diagnostic "
        "variant, e.g. method.local_views.count=0; its rows get their own table)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.summarize:
        print_summary(
            [json.loads(line) for f in args.summarize for line in open(f) if line.strip()]
        )
        return
    warnings.filterwarnings("ignore", message=".*get_image_size.*")  # torchvision v2 shim
    if check_runs() is False:
        print("warning: tests/methods/test_methods_learn.py RUNS differ from this script's copy")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    scored_random: set[tuple] = set()
    for seed in args.seeds:  # seeds outermost: an interrupted run still has every method once
        for method in args.methods:
            cfg = method_config(method, args, seed)
            data = open_data(cfg, progress=False)
            todo = []
            key = (cfg.backbone.small_stem, len(data.train_indices), seed)
            if "random" in args.sides and key not in scored_random:
                scored_random.add(key)
                todo.append(
                    lambda cfg=cfg, data=data, m=method: run_random_init(cfg, data, args, m)
                )
            if "lightly" in args.sides:
                todo.append(lambda cfg=cfg, data=data, m=method: [run_lightly(cfg, data, args, m)])
            if "sslbench" in args.sides:
                todo.append(lambda cfg=cfg, data=data, m=method: [run_sslbench(cfg, data, args, m)])
            for job in todo:
                try:
                    done = job()
                except Exception as err:  # one failed run must not end the comparison
                    print(f"{method} seed {seed}: failed: {type(err).__name__}: {err}", flush=True)
                    continue
                for row in done:
                    rows.append(row)
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(f"{row['side']:>16} {method:<12} seed {seed}: linear "
                          f"{row['linear_top1']:.3f} kNN {row['knn_top1']:.3f}"
                          + (f", {row['train_minutes']:.2f} min" if "train_minutes" in row else ""),
                          flush=True)  # fmt: skip
    print_summary(rows)


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.3f}±{(max(values) - min(values)) / 2:.3f}"


def print_summary(rows: Sequence[dict]) -> None:
    """Per backbone and method: each side's mean ± half the range over seeds, and whether
    sslbench is at or above lightly's way within the seed-to-seed spread (the larger of the
    two sides' ranges)."""

    def key(row: dict) -> tuple:
        return row["backbone"], row["small_stem"], row["train_images"], row.get("variant", "")

    for backbone, small_stem, images, variant in sorted({key(r) for r in rows}):
        group = [r for r in rows if key(r) == (backbone, small_stem, images, variant)]
        stem = "small stem" if small_stem else "standard stem"
        print(
            f"\n{backbone}, {stem}, {images} train images{', ' + variant if variant else ''} "
            f"(mean ± half the range over seeds; verdict: sslbench ≥ lightly − spread)"
        )
        print(
            "| method | seeds | linear: lightly / sslbench | kNN: lightly / sslbench | "
            "verdict | random init linear / kNN (lightly's side; sslbench's) |"
        )
        print("|---|---|---|---|---|---|")
        for method in METHODS:
            sides = {side: [r for r in group if r["method"] == method and r["side"] == side]
                     for side in ("lightly", "sslbench")}  # fmt: skip
            # Random init depends on the backbone and the images only, not on the method.
            for side in ("random-lightly", "random-sslbench"):
                sides[side] = [r for r in group if r["side"] == side]
            # Compare like with like: only the seeds that both sides have finished.
            seeds = sorted(
                {r["seed"] for r in sides["lightly"]} & {r["seed"] for r in sides["sslbench"]}
            )
            for side in ("lightly", "sslbench"):
                sides[side] = [r for r in sides[side] if r["seed"] in seeds]
            if not seeds:
                continue
            cells, verdicts = [], []
            for metric in ("linear_top1", "knn_top1"):
                lightly = [r[metric] for r in sides["lightly"]]
                ours = [r[metric] for r in sides["sslbench"]]
                spread = max(max(lightly) - min(lightly), max(ours) - min(ours))
                gap = sum(ours) / len(ours) - sum(lightly) / len(lightly)
                cells.append(f"{_spread(lightly)} / {_spread(ours)}")
                verdicts.append("ok" if gap >= -spread else f"short by {-gap:.3f}")
            random = []
            for side in ("random-lightly", "random-sslbench"):
                if sides[side]:
                    linear = [r["linear_top1"] for r in sides[side]]
                    knn = [r["knn_top1"] for r in sides[side]]
                    random.append(f"{_spread(linear)} / {_spread(knn)}")
            print(
                f"| {method} | {','.join(map(str, seeds))} | {cells[0]} | {cells[1]} | "
                f"linear {verdicts[0]}, kNN {verdicts[1]} | {'; '.join(random) or '-'} |"
            )


if __name__ == "__main__":
    main()
