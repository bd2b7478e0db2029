"""lightly's own way of training sslbench's methods, on the same budget, probed by sslbench.

docs/benchmarks.md ("Every method vs random init") has each method trained by sslbench:
batched tensor augmentations inside a Lightning module. This script trains the same methods
the way lightly's own benchmark (docs/.../imagenette_benchmark.py) does it, and changes
nothing else:

- views: lightly's per-image transforms (``SimCLRTransform``, ``SwaVTransform``,
  ``VICRegLTransform``) on PIL images, made by a plain PyTorch ``DataLoader``, with the
  parameters of sslbench's SimCLR pipeline (no blur at 32 px: SimCLR skips it on CIFAR sizes);
- model: lightly's heads and losses, each view through the backbone on its own, a plain
  PyTorch loop; the same timm backbone from the same seed (hence the same initial weights);
- settings: resolved by sslbench's own config (``experiment=demo`` + the per-method
  overrides of tests/test_methods_learn.py ``RUNS``), so head sizes, loss parameters,
  optimiser, lr scaling, warm-up, epochs, batch size and images are sslbench's;
- data and probe: sslbench's cache, its seeded stratified subsets (the same images, and the
  same shuffled batches), and its ``evaluate_backbone`` (linear probe and kNN), untouched.

Every remaining difference is listed per method in the JSON lines (``differences``) and
under the table. Run (about 9 minutes on the 2-core CPU, the machine otherwise idle):

    python benchmarks/lightly_reference.py
    python benchmarks/lightly_reference.py --methods simclr byol --epochs 3
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
from lightly.transforms import SimCLRTransform, SwaVTransform, VICRegLTransform
from lightly.transforms.utils import IMAGENET_NORMALIZE
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sslbench.backbones import create_backbone
from sslbench.config import compose
from sslbench.results import git_sha, versions
from sslbench.train import RunData, evaluate_backbone, open_data
from sslbench.transforms import Pipeline

METHODS = ("simclr", "simsiam", "byol", "barlowtwins", "vicreg", "swav", "vicregl")

#: sslbench's settings for these short runs: the test's base and its per-method ``RUNS``
#: (tests/test_methods_learn.py), less ``epochs=3``, which --epochs sets. ``check_runs``
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

#: What differs from sslbench's training of every method (per-method ones are added below).
COMMON_DIFFERENCES = [
    "augmentation: lightly's per-image torchvision/PIL ops on the 28-px cached images in the "
    "DataLoader instead of sslbench's batched tensor ops; same parameters, but torchvision's "
    "crop boxes are whole pixels of the 28-px image (sslbench: sub-pixel boxes, roi_align) "
    "and PIL rounds to uint8 between the colour-jitter steps",
    "random draws: torch's global generator seeded once (sslbench: a generator per step); same "
    "distributions, other draws; the batches are shuffled by the same seeded sampler",
    "each view passes through the backbone on its own, as in lightly's benchmark: batch norm "
    "sees N per view (sslbench: the views of a batch in one pass, batch norm over 2N)",
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
    "wd 5e-4; lambda 5.1e-3 vs 5e-3; SimCLRTransform vs BYOLTransform",
    "vicreg": "VICRegProjectionHead (the same 3 layers as its BarlowTwinsProjectionHead); "
    "biases and norms excluded from LARS; warm-up 0.3 of 3 epochs vs 20 of 200; "
    "SimCLRTransform vs VICRegTransform",
    "swav": "prototypes frozen in epoch 0 as in its SwaVQueue model (its SwaV: never); "
    "SimCLR jitter strength 1.0 vs 0.5",
    "vicregl": "2 local views vs none (n_local_views=0); small stem; sslbench's SimCLR crop "
    "and jitter vs VICRegLTransform's defaults (jitter p 1.0, strength 0.5, blur, solarisation)",
}


# -- data: the same cached images and subsets as sslbench, as PIL images ---------------------
class PILViews(Dataset):
    """Items ``indices`` of a cached uint8 split (N, 3, S, S), each turned into a PIL image
    and then into views by a lightly transform: ``(list of views, label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, transform):
        self.images, self.labels, self.indices = images, labels, indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[list[Tensor], int]:
        j = self.indices[i]
        image = Image.fromarray(np.ascontiguousarray(self.images[j].transpose(1, 2, 0)), "RGB")
        return self.transform(image), int(self.labels[j])


def simclr_view_parameters(cfg: DictConfig) -> dict[str, Any]:
    """lightly transform keywords equal to sslbench's SimCLR pipeline of this run."""
    ops = cfg.transform.ops
    crop, jitter, blur = ops.resized_crop, ops.color_jitter, ops.gaussian_blur
    # lightly's transforms fix the largest crop scale to 1 and the ratio to (3/4, 4/3).
    assert crop.scale[1] == 1.0 and abs(crop.ratio[0] - 0.75) < 1e-6, crop
    assert abs(crop.ratio[1] - 4 / 3) < 1e-6, crop
    assert list(ops.normalize.mean) == IMAGENET_NORMALIZE["mean"], ops.normalize
    return {
        "hf_prob": ops.hflip.p,
        "cj_prob": jitter.p,
        "cj_strength": 1.0,
        "cj_bright": jitter.brightness,
        "cj_contrast": jitter.contrast,
        "cj_sat": jitter.saturation,
        "cj_hue": jitter.hue,
        "random_gray_scale": ops.grayscale.p,
        # sslbench (SimCLR) skips the blur on images of 32 px or less
        "gaussian_blur": 0.0 if cfg.image_size <= blur.skip_at_or_below else blur.p,
        "sigmas": tuple(blur.sigma),
        "normalize": IMAGENET_NORMALIZE,
    }


def simclr_two_views(cfg: DictConfig) -> SimCLRTransform:
    """sslbench trains every two-view method on its SimCLR pipeline (lightly's benchmark uses
    per-method transforms: BYOLTransform, VICRegTransform, SimSiamTransform)."""
    return SimCLRTransform(
        input_size=cfg.image_size,
        min_scale=cfg.transform.ops.resized_crop.scale[0],
        **simclr_view_parameters(cfg),
    )


def local_side(cfg: DictConfig) -> int:
    """sslbench's local crop side: round(image_size * size_ratio) (SwAV: 14, VICRegL: 16)."""
    return max(1, round(cfg.image_size * float(cfg.method.local_views.size_ratio)))


@torch.no_grad()
def feature_map_side(backbone: nn.Module, side: int) -> int:
    """Side of the backbone's (square) feature map for side x side images."""
    backbone.eval()
    h, w = backbone.forward_features(torch.zeros(1, 3, side, side)).shape[-2:]
    backbone.train()
    assert h == w, (h, w)
    return int(h)


# -- one function per method: lightly's heads and losses, with sslbench's sizes --------------
@dataclass
class Recipe:
    """What one method trains: ``model`` (whose ``backbone`` is evaluated), the lightly
    transform giving each image's views, and ``loss(views, epoch)`` for one batch."""

    model: nn.ModuleDict
    transform: Callable[[Image.Image], list[Tensor]]
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

    return Recipe(nn.ModuleDict({"backbone": backbone, "head": head}), simclr_two_views(cfg), loss)


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
    return Recipe(model, simclr_two_views(cfg), loss)


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
    return Recipe(model, simclr_two_views(cfg), loss)


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

    local = m.local_views
    transform = SwaVTransform(
        crop_sizes=(cfg.image_size, local_side(cfg)),
        crop_counts=(n_global, local.count),
        crop_min_scales=(cfg.transform.ops.resized_crop.scale[0], local.scale[0]),
        crop_max_scales=(1.0, local.scale[1]),
        **simclr_view_parameters(cfg),
    )
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
    global_grid, local_grid = (
        feature_map_side(backbone, s) for s in (cfg.image_size, local_side(cfg))
    )
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

    view = simclr_view_parameters(cfg)
    transform = VICRegLTransform(
        global_crop_size=cfg.image_size,
        local_crop_size=local_side(cfg),
        n_global_views=n_global,
        n_local_views=n_local,
        global_crop_scale=(cfg.transform.ops.resized_crop.scale[0], 1.0),
        local_crop_scale=tuple(m.local_views.scale),
        global_grid_size=global_grid,
        local_grid_size=local_grid,
        global_gaussian_blur_prob=view["gaussian_blur"],
        local_gaussian_blur_prob=view["gaussian_blur"],
        global_gaussian_blur_sigmas=view["sigmas"],
        local_gaussian_blur_sigmas=view["sigmas"],
        global_solarize_prob=0.0,  # sslbench's pipeline has no solarisation
        local_solarize_prob=0.0,
        hf_prob=view["hf_prob"],
        cj_prob=view["cj_prob"],
        cj_strength=view["cj_strength"],
        cj_bright=view["cj_bright"],
        cj_contrast=view["cj_contrast"],
        cj_sat=view["cj_sat"],
        cj_hue=view["cj_hue"],
        random_gray_scale=view["random_gray_scale"],
        normalize=view["normalize"],
    )
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
def method_config(method: str, args) -> DictConfig:
    """sslbench's resolved config of the method's short run (the test's settings)."""
    return compose([
        *BASE,
        f"dataset.max_train={args.max_train}",
        f"dataset.max_test={args.max_test}",
        f"method={method}",
        *RUNS[method],
        f"epochs={args.epochs}",
        f"batch_size={args.batch_size}",
        f"seed={args.seed}",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=4000, help="vicregl keeps RUNS' 1000")
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--no-random-init", action="store_true", help="skip the baselines")
    parser.add_argument("--out", default="benchmarks/results/lightly_reference.jsonl")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*get_image_size.*")  # torchvision v2 shim
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs_match = check_runs()
    if runs_match is False:
        print("warning: tests/test_methods_learn.py RUNS differ from this script's copy")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d")
    random_init: dict[tuple, dict] = {}
    rows = []
    for method in args.methods:
        cfg = method_config(method, args)
        data = open_data(cfg, progress=False)
        probe_pipeline = Pipeline(OmegaConf.to_container(cfg.transform.ops), cfg.image_size)
        print(f"{method}: {len(data.train_indices)} train / {len(data.test_indices)} test "
              f"images, {cfg.epochs} epochs, batch {cfg.batch_size}", flush=True)  # fmt: skip

        # The same backbone at random init, from the same seed: sslbench's baseline.
        key = (cfg.backbone.name, cfg.backbone.small_stem, len(data.train_indices))
        if not args.no_random_init and key not in random_init:
            seed_everything(cfg.seed)
            backbone = create_backbone(cfg.backbone.name, small_stem=cfg.backbone.small_stem)
            random_init[key] = evaluate_backbone(backbone, cfg, data, probe_pipeline, device)

        # Seeded as sslbench seeds a run, the backbone built first: the same initial weights.
        seed_everything(cfg.seed)
        backbone = create_backbone(cfg.backbone.name, small_stem=cfg.backbone.small_stem)
        recipe = BUILDERS[method](cfg, backbone)
        trained = train(recipe, cfg, data, args, device)
        metrics = evaluate_backbone(recipe.model["backbone"], cfg, data, probe_pipeline, device)
        baseline = random_init.get(key, {})
        row = {
            "benchmark": "lightly_reference",
            "date": date,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {device}",
            "method": method,
            "overrides": [*BASE, f"method={method}", *RUNS[method]],
            "runs_match_test": runs_match,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "image_size": cfg.image_size,
            "seed": cfg.seed,
            "train_images": int(len(data.train_indices)),
            "test_images": int(len(data.test_indices)),
            "num_workers": args.num_workers,
            "linear_top1": metrics["linear_top1"],
            "linear_top5": metrics["linear_top5"],
            "knn_top1": metrics["knn_top1"],
            "random_linear_top1": baseline.get("linear_top1"),
            "random_knn_top1": baseline.get("knn_top1"),
            "train_minutes": trained["train_seconds"] / 60,
            **trained,
            "probe": metrics["probe"],
            "method_config": OmegaConf.to_container(cfg.method),
            "differences": [*COMMON_DIFFERENCES, *recipe.differences],
            "vs_lightly_benchmark": VS_LIGHTLY_BENCHMARK[method],
            "versions": versions(),
            "git_sha": git_sha(),
        }
        rows.append(row)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"  linear {row['linear_top1']:.3f} (top-5 {row['linear_top5']:.3f}), kNN "
              f"{row['knn_top1']:.3f}, {row['train_minutes']:.2f} min, "
              f"{row['images_per_second']:.0f} img/s", flush=True)  # fmt: skip
    print_table(rows)


def print_table(rows: Sequence[dict]) -> None:
    print("\n| method | linear top-1 (random) | top-5 | kNN top-1 (random) | min | img/s | "
          "differences from sslbench |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:

        def paren(key: str, r: dict = r) -> str:
            return "" if r[key] is None else f" ({r[key]:.3f})"

        extra = len(r["differences"]) - len(COMMON_DIFFERENCES)
        notes = "common" + (f" + {extra} own (below)" if extra else "")
        print(f"| {r['method']} | {r['linear_top1']:.3f}{paren('random_linear_top1')} | "
              f"{r['linear_top5']:.3f} | {r['knn_top1']:.3f}{paren('random_knn_top1')} | "
              f"{r['train_minutes']:.1f} | {r['images_per_second']:.0f} | {notes} |")  # fmt: skip
    print("\nDifferences from sslbench's training, every method:")
    for text in COMMON_DIFFERENCES:
        print(f"- {text}")
    for r in rows:
        for text in r["differences"][len(COMMON_DIFFERENCES) :]:
            print(f"- {r['method']}: {text}")


if __name__ == "__main__":
    main()
