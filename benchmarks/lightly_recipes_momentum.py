"""lightly's side of benchmarks/lightly_reference.py for the methods with a momentum (EMA)
network or a memory bank: BYOL, MoCo v2, MoCo v3, DINO, NNCLR, TiCo, SMoG.

Each is built as lightly's benchmark model builds it (lightly's heads, losses, memory banks,
``update_momentum`` before the forward passes), with the sizes and values of the resolved
sslbench config (``cfg.method``). Where lightly's benchmark and sslbench's side still differ,
the recipe's ``differences`` say how.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss, TiCoLoss
from lightly.models.modules import heads
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.modules.nn_memory_bank import NNMemoryBankModule
from lightly.models.utils import (
    batch_shuffle,
    batch_unshuffle,
    deactivate_requires_grad,
    update_momentum,
)
from lightly.utils.scheduler import cosine_schedule
from lightly_recipes import Progress, Recipe
from omegaconf import DictConfig
from torch import Tensor, nn

from sslbench.nn.kmeans import kmeans
from sslbench.tools.lightly_views import (
    ImageTransform,
    dino_crops_transform,
    dino_transform,
    simclr_view_parameters,
    two_view_transform,
)


def frozen_copies(**modules: nn.Module) -> nn.ModuleDict:
    """Momentum copies of ``modules`` (same weights), which gradients never reach."""
    target = nn.ModuleDict({name: copy.deepcopy(module) for name, module in modules.items()})
    deactivate_requires_grad(target)
    return target


def step_momentum(m: DictConfig, step: int, total_steps: int) -> float:
    """The EMA momentum at optimiser step ``step``: constant ``m.momentum``, or lightly's
    cosine_schedule from it to ``m.momentum_end`` over all steps (sslbench's schedule)."""
    if m.momentum_end is None:
        return float(m.momentum)
    return cosine_schedule(step, total_steps, m.momentum, m.momentum_end)


def ema_before_step(
    m: DictConfig, pairs: Sequence[tuple[nn.Module, nn.Module]]
) -> Callable[[Progress], None]:
    """A Recipe's ``before_step``: every (online, target) pair moves by ``step_momentum``."""

    def before_step(at: Progress) -> None:
        momentum = step_momentum(m, at.step, at.total_steps)
        for online, target in pairs:
            update_momentum(online, target, m=momentum)

    return before_step


def build_byol(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    m = cfg.method
    if m.momentum_end is not None:
        raise NotImplementedError("this script follows lightly's constant EMA momentum")
    projection = heads.BYOLProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    prediction = heads.BYOLPredictionHead(m.output_dim, m.predictor_hidden_dim, m.output_dim)
    target = frozen_copies(backbone=backbone, projection=projection)
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


def build_mocov2(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's Moco benchmark model: queries from the online network, keys from its EMA
    copy on the shuffled batch, NTXentLoss against a memory bank of past keys."""
    m = cfg.method
    projection = heads.MoCoProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    target = frozen_copies(backbone=backbone, projection=projection)
    bank = int(m.memory_bank_size)
    criterion = NTXentLoss(
        temperature=m.temperature, memory_bank_size=(bank, m.output_dim) if bank > 0 else 0
    )

    @torch.no_grad()
    def keys(x: Tensor) -> Tensor:
        shuffled, order = batch_shuffle(x)  # lightly's benchmark, also on one process
        return batch_unshuffle(target["projection"](target["backbone"](shuffled)), order)

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        x0, x1 = views
        # Each call scores its queries against the bank, then enqueues its keys: k1, then k0.
        first = criterion(projection(backbone(x0)), keys(x1))
        if not m.symmetric:  # the paper: view 0 the queries, view 1 the keys
            return first
        return 0.5 * (first + criterion(projection(backbone(x1)), keys(x0)))

    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "target": target, "loss": criterion}
    )
    before_step = ema_before_step(
        m, [(backbone, target["backbone"]), (projection, target["projection"])]
    )
    differences = [
        "key batch: lightly's benchmark shuffles it before the momentum network and back "
        "after (batch_shuffle), also on one process, where batch norm ignores the order; "
        "sslbench skips it there. The shuffle draws from torch's global generator",
    ]
    return Recipe(model, two_view_transform(cfg), loss, differences, before_step)


def build_mocov3(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """MoCo v3 (ResNet) from lightly's parts: lightly has no MoCo v3 benchmark model or
    loss, so the heads are lightly ProjectionHead blocks shaped as the official ResNet code's
    and the loss is the official code's, written here: each view's queries against the
    other view's keys of the batch, cross-entropy times 2τ, summed over both directions."""
    m = cfg.method
    if m.num_layers < 2:
        raise ValueError(f"method.num_layers must be at least 2, got {m.num_layers}")
    dims = [backbone.num_features] + [m.hidden_dim] * (m.num_layers - 1)
    projection = heads.ProjectionHead(
        [
            (a, b, nn.BatchNorm1d(b), nn.ReLU(), False)
            for a, b in zip(dims[:-1], dims[1:], strict=True)
        ]
        + [(m.hidden_dim, m.output_dim, nn.BatchNorm1d(m.output_dim, affine=False), None, False)]
    )
    prediction = heads.ProjectionHead(
        [(m.output_dim, m.predictor_hidden_dim, nn.BatchNorm1d(m.predictor_hidden_dim),
          nn.ReLU(), False),
         (m.predictor_hidden_dim, m.output_dim, None, None, False)]
    )  # fmt: skip
    target = frozen_copies(backbone=backbone, projection=projection)
    tau = float(m.temperature)

    def contrast(q: Tensor, k: Tensor) -> Tensor:
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / tau  # (N, N)
        labels = torch.arange(len(q), device=q.device)  # image i's key is its positive
        return F.cross_entropy(logits, labels) * (2 * tau)

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        x0, x1 = views
        q0 = prediction(projection(backbone(x0)))
        q1 = prediction(projection(backbone(x1)))
        with torch.no_grad():
            k0 = target["projection"](target["backbone"](x0))
            k1 = target["projection"](target["backbone"](x1))
        return contrast(q0, k1) + contrast(q1, k0)

    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "prediction": prediction, "target": target}
    )
    before_step = ema_before_step(
        m, [(backbone, target["backbone"]), (projection, target["projection"])]
    )
    differences = [
        "lightly has neither a MoCo v3 benchmark model nor a MoCo v3 loss: this side's loss "
        "is the official code's written in this script (sslbench: its MoCoV3Loss), its heads "
        "lightly ProjectionHead blocks as the official ResNet code's (as sslbench's)",
    ]
    return Recipe(model, two_view_transform(cfg), loss, differences, before_step)


def dino_views(cfg: DictConfig) -> ImageTransform:
    """lightly's DINOTransform equal to the run's crops: lightly_views' for the byol pipeline
    (DINO's own views); for the simclr pipeline (the demo's), every crop with the pipeline's
    blur and no solarisation, as sslbench then makes them."""
    if cfg.transform.name != "simclr":
        return dino_transform(cfg)
    blur = simclr_view_parameters(cfg)["gaussian_blur"]
    return dino_crops_transform(cfg, (blur, blur, blur), 0.0)


def build_dino(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's DINO (Res18) benchmark model: the teacher (an EMA of the student's backbone
    and a head of its own) sees the global crops, the student every crop; DINOLoss gets the
    epoch (its teacher-temperature warm-up) and moves its centre."""
    m = cfg.method

    def head() -> nn.Module:
        return heads.DINOProjectionHead(
            backbone.num_features,
            m.hidden_dim,
            m.bottleneck_dim,
            m.output_dim,
            batch_norm=m.batch_norm,
            norm_last_layer=m.norm_last_layer,
        )

    student_head = head()
    teacher = frozen_copies(backbone=backbone)
    teacher["head"] = head()  # lightly's benchmark: not a copy of the student's head
    deactivate_requires_grad(teacher["head"])
    criterion = DINOLoss(
        output_dim=m.output_dim,
        warmup_teacher_temp=m.warmup_teacher_temp,
        teacher_temp=m.teacher_temp,
        warmup_teacher_temp_epochs=m.warmup_teacher_temp_epochs,
        student_temp=m.student_temp,
        center_momentum=m.center_momentum,
    )
    n_global = 2

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        with torch.no_grad():
            teacher_out = [teacher["head"](teacher["backbone"](x)) for x in views[:n_global]]
        student_out = [student_head(backbone(x)) for x in views]
        return criterion(teacher_out, student_out, epoch=epoch)

    model = nn.ModuleDict(
        {"backbone": backbone, "head": student_head, "teacher": teacher, "loss": criterion}
    )
    before_step = ema_before_step(
        m, [(backbone, teacher["backbone"]), (student_head, teacher["head"])]
    )
    differences = [
        "teacher head: lightly's benchmark builds it with an init of its own; sslbench's "
        "teacher starts as an exact copy of the student (backbone and head, the paper's)",
        "crops: DINOTransform resizes them bicubically (sslbench: bilinear roi_align)",
    ]
    return Recipe(model, dino_views(cfg), loss, differences, before_step)


def build_nnclr(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's NNCLR benchmark model: each view's positive is the nearest neighbour of
    the other view's projection in a support set of past projections (view 1's enter it)."""
    m = cfg.method
    projection = heads.NNCLRProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    prediction = heads.NNCLRPredictionHead(m.output_dim, m.predictor_hidden_dim, m.output_dim)
    support = NNMemoryBankModule(size=(m.memory_bank_size, m.output_dim))
    criterion = NTXentLoss(temperature=m.temperature)

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        x0, x1 = views
        z0, z1 = projection(backbone(x0)), projection(backbone(x1))
        p0, p1 = prediction(z0), prediction(z1)
        nn0 = support(z0.detach(), update=False)
        nn1 = support(z1.detach(), update=True)
        return 0.5 * (criterion(nn0, p1) + criterion(nn1, p0))

    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "prediction": prediction,
         "support": support}
    )  # fmt: skip
    return Recipe(model, two_view_transform(cfg), loss)


def build_tico(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's TiCo benchmark model: view 0 through the online network, view 1 through
    its EMA copy, TiCoLoss (with its running covariance); the momentum follows lightly's
    cosine schedule over the epochs."""
    m = cfg.method
    projection = heads.TiCoProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    target = frozen_copies(backbone=backbone, projection=projection)
    criterion = TiCoLoss(beta=m.beta, rho=m.rho)

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        momentum = (
            m.momentum
            if m.momentum_end is None
            else cosine_schedule(epoch, cfg.epochs, m.momentum, m.momentum_end)
        )
        update_momentum(backbone, target["backbone"], m=momentum)
        update_momentum(projection, target["projection"], m=momentum)
        x0, x1 = views
        z0 = projection(backbone(x0))
        with torch.no_grad():
            t1 = target["projection"](target["backbone"](x1))
        return criterion(z0, t1)

    model = nn.ModuleDict({"backbone": backbone, "projection": projection, "target": target})
    end = m.momentum if m.momentum_end is None else m.momentum_end
    first, last = (cosine_schedule(e, cfg.epochs, m.momentum, end) for e in (0, cfg.epochs - 1))
    differences = [
        "EMA momentum: lightly's benchmark advances its cosine once per epoch "
        f"(cosine_schedule(epoch, epochs, ...)): {first:g} in the first epoch, {last:g} in "
        "the last (lightly's cosine_schedule reaches its end value at max_steps - 1); "
        "sslbench advances it every optimiser step, reaching the end value at the last",
    ]
    return Recipe(model, two_view_transform(cfg), loss, differences)


def build_smog(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's SMoG benchmark model: view 0 (view 1 on odd batch indices) through the
    online network, the other through its EMA copy; the loss predicts the target's group
    among group features that move with the batch; every ``reset_every_n_steps`` steps the
    groups become the k-means centres of a bank of past projections and the target a copy
    of the online network."""
    m = cfg.method
    projection = heads.SMoGProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim)
    prediction = heads.SMoGPredictionHead(m.output_dim, m.predictor_hidden_dim, m.output_dim)
    target = frozen_copies(backbone=backbone, projection=projection)
    bank = MemoryBankModule((m.memory_bank_size, m.output_dim))
    # lightly's benchmark: random unit vectors with positive entries
    initial = F.normalize(torch.rand(m.n_groups, m.output_dim), dim=1)
    groups = heads.SMoGPrototypes(group_features=initial, beta=m.beta)
    criterion = nn.CrossEntropyLoss()
    pairs = [(backbone, target["backbone"]), (projection, target["projection"])]
    swap = [False]

    @torch.no_grad()
    def before_step(at: Progress) -> None:
        if m.reset_every_n_steps and at.step > 0 and at.step % m.reset_every_n_steps == 0:
            # scikit-learn's KMeans in lightly's benchmark (not installed here): sslbench's
            seed = int(torch.randint(2**31, ()))
            centres = kmeans(
                bank.bank, m.n_groups, seed=seed, max_iter=m.kmeans_max_iter,
                spherical=m.kmeans_spherical,
            ).centres  # fmt: skip
            groups.set_group_features(F.normalize(centres, dim=1))
            for online, copy_ in pairs:  # the target anew: the online network's values
                copy_.load_state_dict(online.state_dict())
        else:
            for online, copy_ in pairs:
                update_momentum(online, copy_, m=step_momentum(m, at.step, at.total_steps))
        swap[0] = at.batch % 2 == 1

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        x0, x1 = reversed(views) if swap[0] else views
        z0 = projection(backbone(x0))
        p0 = prediction(z0)
        with torch.no_grad():
            t1 = target["projection"](target["backbone"](x1))
        assignments = groups.assign_groups(t1)
        moved = groups.get_updated_group_features(z0)  # keeps z0's graph, as lightly's
        value = criterion(groups(p0, moved, temperature=m.temperature), assignments)
        groups.set_group_features(moved)
        bank(z0, update=True)  # enqueued detached
        return value

    model = nn.ModuleDict(
        {"backbone": backbone, "projection": projection, "prediction": prediction,
         "target": target, "bank": bank, "groups": groups}
    )  # fmt: skip
    differences = [
        "k-means of a reset: lightly's benchmark calls scikit-learn's KMeans, not installed "
        "here: this side runs sslbench's k-means seeded from torch's global generator "
        "(sslbench's side: seeded from the run's seed and the step)",
        "views swapped on odd batch indices of each epoch (lightly's batch_idx); sslbench "
        "swaps on odd optimiser steps: the two differ in every other epoch when an epoch "
        "has an odd number of batches",
    ]
    return Recipe(model, two_view_transform(cfg), loss, differences, before_step)


#: The methods of this module, by sslbench method name.
BUILDERS: dict[str, Callable[[DictConfig, nn.Module], Recipe]] = {
    "byol": build_byol,
    "tico": build_tico,
    "mocov2": build_mocov2,
    "mocov3": build_mocov3,
    "dino": build_dino,
    "nnclr": build_nnclr,
    "smog": build_smog,
}
