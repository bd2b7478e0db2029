"""lightly's side of benchmarks/lightly_reference.py: what each method trains, built as
lightly's benchmark models build it, with the sizes of the resolved sslbench config.

A :class:`Recipe` is one method's model (its ``backbone`` is the one evaluated), the lightly
transform that makes each image's views and the loss of one batch. The backbones are here:
torchvision's ``resnet18()`` as lightly's benchmark builds it, sslbench's timm model for
other names. This module has the methods without a momentum network or a memory bank
(SimCLR and its DCL losses, SimSiam, FastSiam, Barlow Twins, VICReg, VICRegL, SwAV with or
without its queue); :mod:`lightly_recipes_momentum` has the EMA-target and bank ones.
Every size and value comes from ``cfg.method``, as sslbench's side reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from lightly.loss import (
    BarlowTwinsLoss,
    DCLLoss,
    DCLWLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    SwaVLoss,
    VICRegLLoss,
    VICRegLoss,
)
from lightly.models.modules import heads
from lightly.models.modules.memory_bank import MemoryBankModule
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from sslbench.nn.backbones import create_backbone
from sslbench.run.build import has_local_views
from sslbench.tools.lightly_views import (
    ImageTransform,
    fastsiam_transform,
    swav_transform,
    two_view_transform,
    vicregl_grid_sides,
    vicregl_transform,
)
from sslbench.transforms import make_generator, view_pipelines


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
    """sslbench's backbone as a run of ``cfg`` builds it (run.build.build_method): a ViT for
    the run's image and patch size, taking the local crops' size too if the method has them."""
    return create_backbone(
        cfg.backbone.name, small_stem=cfg.backbone.small_stem,
        zero_init_last=cfg.backbone.zero_init_last, image_size=cfg.image_size,
        patch_size=cfg.backbone.get("patch_size"), any_size=has_local_views(cfg.method),
    )  # fmt: skip


# -- sslbench's views in lightly's loop (--lightly-views sslbench: which part makes a gap) ----
def sslbench_two_views(cfg: DictConfig) -> Callable[[Tensor, Tensor], list[Tensor]]:
    """A batch's two views as an sslbench run of ``cfg`` makes them (its pipelines'
    batched tensor ops; one generator seeded from the run's seed), for a two-view recipe."""
    transform = OmegaConf.to_container(cfg.transform, resolve=True)
    assert isinstance(transform, dict)
    pipelines = view_pipelines(transform, cfg.image_size)
    gen = make_generator(cfg.seed, "cpu", 0)

    def views(images: Tensor, aspect: Tensor) -> list[Tensor]:
        return [pipelines[i % len(pipelines)](images, aspect, gen) for i in range(2)]

    return views


# -- one function per method: lightly's heads and losses, with sslbench's sizes --------------
class Progress(NamedTuple):
    """Where the loop is at one optimiser step: ``epoch``, ``batch`` (its index in the
    epoch, lightly's ``batch_idx``), ``step`` (optimiser steps done, Lightning's
    ``global_step``) and ``total_steps`` of the run."""

    epoch: int
    batch: int
    step: int
    total_steps: int


@dataclass
class Recipe:
    """What one method trains: ``model`` (whose ``backbone`` is evaluated), the lightly
    transform giving each image's views, and ``loss(views, epoch)`` for one batch.
    ``before_step(progress)``, if set, runs once per optimiser step before the loss: the EMA
    updates whose momentum follows the step (lightly's order: the update, then the forward
    passes), what a recipe does by step or batch index (resets, swapped views)."""

    model: nn.ModuleDict
    transform: ImageTransform
    loss: Callable[[list[Tensor], int], Tensor]
    differences: list[str] = field(default_factory=list)
    before_step: Callable[[Progress], None] | None = None


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


def simclr_head(cfg: DictConfig, backbone: nn.Module) -> nn.Module:
    m = cfg.method
    return heads.SimCLRProjectionHead(
        backbone.num_features, m.hidden_dim, m.output_dim, num_layers=m.num_layers
    )


def build_simclr(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    head = simclr_head(cfg, backbone)
    criterion = NTXentLoss(temperature=cfg.method.temperature)

    return symmetric_recipe(cfg, backbone, head, criterion)


def build_simclr_dcl(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's DCL benchmark model: SimCLR's head and views, DCLLoss."""
    head = simclr_head(cfg, backbone)
    return symmetric_recipe(cfg, backbone, head, DCLLoss(temperature=cfg.method.temperature))


def build_simclr_dclw(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's DCLW benchmark model: SimCLR's head and views, DCLWLoss."""
    m = cfg.method
    head = simclr_head(cfg, backbone)
    criterion = DCLWLoss(temperature=m.temperature, sigma=m.sigma)
    return symmetric_recipe(cfg, backbone, head, criterion)


def simsiam_heads(cfg: DictConfig, backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
    m = cfg.method
    projection = heads.SimSiamProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    prediction = heads.SimSiamPredictionHead(m.output_dim, m.predictor_hidden_dim, m.output_dim)
    return projection, prediction


def build_simsiam(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    projection, prediction = simsiam_heads(cfg, backbone)
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


def build_fastsiam(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's FastSiam benchmark model (its SimSiam model on FastSiamTransform's views):
    each view's prediction against the mean of the other views' projections, held constant."""
    projection, prediction = simsiam_heads(cfg, backbone)
    criterion = NegativeCosineSimilarity()

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        z = [projection(backbone(x)) for x in views]
        p = [prediction(zi) for zi in z]
        targets = torch.stack([zi.detach() for zi in z])  # (V, N, output_dim)
        total = p[0].new_zeros(())
        for i, pi in enumerate(p):
            others = torch.arange(len(views), device=pi.device) != i
            total = total + criterion(pi, targets[others].mean(dim=0)) / len(views)
        return total

    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "prediction": prediction}
    )
    return Recipe(model, fastsiam_transform(cfg), loss)


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
    """lightly's SwaV benchmark model, or (``method.queue_length`` > 0, swav_queue) its
    SwaVQueue model: one queue of past normalised projections per global view, whose
    prototype scores join Sinkhorn's from ``method.queue_start_epoch`` on."""
    m = cfg.method
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
    queues = nn.ModuleList(
        [
            MemoryBankModule((m.queue_length, m.output_dim), feature_dim_first=False)
            for _ in range(n_global if m.queue_length > 0 else 0)
        ]
    )

    @torch.no_grad()
    def queue_scores(z_global: list[Tensor], epoch: int) -> list[Tensor] | None:
        if len(queues) == 0:
            return None
        # Each queue as it was before this batch, then the batch enqueued (lightly's order).
        banks = [queue(z, update=True)[1] for queue, z in zip(queues, z_global, strict=True)]
        if epoch < m.queue_start_epoch:
            return None  # the queues fill, unused
        return [prototypes(bank, epoch) for bank in banks]

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        prototypes.normalize()  # prototypes on the unit sphere
        z = [F.normalize(projection(backbone(x)), dim=1, p=2) for x in views]
        scores = [prototypes(zi, epoch) for zi in z]
        queue = queue_scores(z[:n_global], epoch)
        return criterion(scores[:n_global], scores[n_global:], queue)

    transform = swav_transform(cfg)
    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "prototypes": prototypes}
    )
    if len(queues):
        model["queues"] = queues
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


#: The methods of this module, by sslbench method name.
BUILDERS: dict[str, Callable[[DictConfig, nn.Module], Recipe]] = {
    "simclr": build_simclr,
    "simsiam": build_simsiam,
    "barlowtwins": build_barlowtwins,
    "vicreg": build_vicreg,
    "swav": build_swav,
    "vicregl": build_vicregl,
    "fastsiam": build_fastsiam,
    "simclr_dcl": build_simclr_dcl,
    "simclr_dclw": build_simclr_dclw,
    "swav_queue": build_swav,
}
