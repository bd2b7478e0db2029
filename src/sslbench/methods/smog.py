"""SMoG: Pang, Zhang, Li, Cai & Lu 2022, "Unsupervised Visual Representation Learning by
Synchronous Momentum Grouping" (https://arxiv.org/abs/2207.06167).

Contrastive learning between groups instead of instances: the embeddings are grouped around
K group features, and the online network learns to predict, for one view of an image, the
group that a momentum (EMA) target network puts the other view in (a cross-entropy over the
groups' cosine similarities at temperature τ). The group features move with the training
("momentum grouping"): each step, every group feature takes a step of 1 − β towards the
mean online embedding of the images assigned to it, and the loss already uses the moved
features ("synchronous"). Every few hundred steps the group features are reset to the
k-means centres of a memory bank of past online embeddings, and the target network to the
online one (the paper's Table 7b, as lightly's benchmark does).

One step, as lightly's Imagenette benchmark takes it (views swapped on odd steps):
view 0 → online backbone → projection z0 (N, output_dim) → prediction p0 (N, output_dim);
view 1 → target backbone and projection → t1 (N, output_dim), no gradient. Assignments
a = argmax_k cos(t1, g_k) with the group features G (K, output_dim) before the step;
G' = G moved towards the means of z0 per assigned group; loss CE(cos(p0, G') / τ, a); then
G ← G' and z0 enters the bank (memory_bank_size, output_dim). lightly's
``get_updated_group_features`` keeps z0's graph in G', so the loss also reaches z0 through
G' (with weight 1 − β), as in lightly's benchmark.

Under DDP (``gather_distributed``) the group features move with the GLOBAL batch's z0
(lightly's gather, through which gradients flow back), so they stay equal on every process;
the bank enqueues the global batch, and the k-means of a reset is seeded from the run's
seed and the global step: every process computes the same centres from the same bank,
without communicating. Only the assignments of each process's own images enter its loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import SMoGPredictionHead, SMoGProjectionHead, SMoGPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.utils import dist
from torch import Tensor, nn

from sslbench.errors import ConfigError
from sslbench.methods.base import Views
from sslbench.methods.ema import EMATargetMethod
from sslbench.nn.kmeans import kmeans
from sslbench.transforms.pipeline import stream_seed

#: Tags the random stream of the k-means resets (stream_seed(seed, KMEANS_STREAM, step)),
#: apart from the views' streams (seed, rank, epoch, step).
KMEANS_STREAM = 0x5306


class SMoG(EMATargetMethod):
    """SMoG with lightly's SMoGProjectionHead, SMoGPredictionHead, SMoGPrototypes (the group
    features) and MemoryBankModule, an EMA target network and sslbench's k-means.

    ``self.backbone`` is the online backbone (the one evaluated); ``backbone_target`` and
    ``projection_head_target`` its EMA copies, reset to it every ``reset_every_n_steps``
    steps. The group features are ``groups.group_features``, a persistent buffer (lightly's
    SMoGPrototypes makes them a parameter without gradient): in the state_dict, so a
    checkpoint keeps them; the bank is saved beside it (:mod:`sslbench.methods.banks`).

    One view goes through each network, so there is nothing for ``joint_forward`` to join:
    it must stay false.

    Method keys (method/smog.yaml): hidden_dim, output_dim, predictor_hidden_dim, n_groups,
    beta, temperature, memory_bank_size, reset_every_n_steps, kmeans_max_iter,
    kmeans_spherical, gather_distributed, momentum, momentum_end, joint_forward.
    """

    lightly_transform = "SMoGTransform"
    bank_keys = ("memory_bank_size",)
    # Narrow heads, 8 groups in a bank of 64 (it fits the tiny runs' 128 images), and a
    # reset every 3 steps, so that the unit tests and the tiny runs go through resets.
    small_overrides = (
        "method.hidden_dim=64", "method.output_dim=32", "method.predictor_hidden_dim=64",
        "method.n_groups=8", "method.memory_bank_size=64", "method.reset_every_n_steps=3",
    )  # fmt: skip
    # The learning runs: 4,000 images at batch 128, 31 steps an epoch, 62 in all: a bank of
    # half the images and a reset every 30 steps (2 resets; lightly's 300 would be none).
    # demo's method.temperature=0.2 (set for SimCLR) is put back to SMoG's 0.1.
    learning_run_overrides = (
        "epochs=2", "method.memory_bank_size=2048", "method.reset_every_n_steps=30",
        "method.temperature=0.1",
    )  # fmt: skip

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        if self.joint_forward:
            raise ConfigError(
                "method.joint_forward=true does not apply to SMoG: it passes one view through "
                "each network (one the online one, the other the target), nothing to join"
            )
        output_dim = int(method["output_dim"])
        self.n_groups = int(method["n_groups"])
        bank_size = int(method["memory_bank_size"])
        self.reset_every = int(method["reset_every_n_steps"] or 0)
        self.temperature = float(method["temperature"])
        self.kmeans_max_iter = int(method["kmeans_max_iter"])
        self.kmeans_spherical = bool(method["kmeans_spherical"])
        self.gather_distributed = bool(method["gather_distributed"])
        if self.n_groups < 1:
            raise ConfigError(f"method.n_groups must be at least 1, got {self.n_groups}")
        if self.reset_every < 0:
            raise ConfigError(
                f"method.reset_every_n_steps must be 0 (never) or more, got {self.reset_every}"
            )
        if self.reset_every > 0 and bank_size < self.n_groups:
            raise ConfigError(
                f"method.memory_bank_size={bank_size} is smaller than method.n_groups="
                f"{self.n_groups}: the k-means of a reset needs a bank entry per group at least"
            )
        self.projection_head = SMoGProjectionHead(
            input_dim=self.feature_dim, hidden_dim=method["hidden_dim"], output_dim=output_dim
        )
        self.prediction_head = SMoGPredictionHead(
            input_dim=output_dim, hidden_dim=method["predictor_hidden_dim"], output_dim=output_dim
        )
        self.backbone_target = self.add_target("backbone")
        self.projection_head_target = self.add_target("projection_head")
        # lightly's benchmark: random unit vectors with positive entries
        initial = F.normalize(torch.rand(self.n_groups, output_dim), dim=1)
        self.groups = SMoGPrototypes(group_features=initial, beta=float(method["beta"]))
        # lightly keeps the group features as a parameter without gradient; the method moves
        # them itself, never the optimiser: a persistent buffer says so (still in the
        # state_dict as groups.group_features, and SMoGPrototypes works on it unchanged).
        features = self.groups.group_features.data
        del self.groups.group_features
        self.groups.register_buffer("group_features", features)
        # The bank takes the global batch under DDP, so it is the same on every process.
        self.memory_bank = MemoryBankModule(
            size=(bank_size, output_dim) if bank_size > 0 else 0,
            gather_distributed=self.gather_distributed,
            feature_dim_first=False,
        )
        self.criterion = nn.CrossEntropyLoss()

    # -- the periodic reset ----------------------------------------------------------------
    def reset_due(self, step: int) -> bool:
        """Whether optimiser step ``step`` resets the group features and the target: every
        ``reset_every`` steps, never at step 0 (lightly's benchmark)."""
        return self.reset_every > 0 and step > 0 and step % self.reset_every == 0

    @torch.no_grad()
    def reset_groups(self, step: int) -> None:
        """Group features ← the unit-length k-means centres of the bank's entries, seeded
        from (seed, step): the same on every process that holds the same bank."""
        result = kmeans(
            self.memory_bank.bank,
            self.n_groups,
            seed=stream_seed(self.seed, KMEANS_STREAM, step),
            max_iter=self.kmeans_max_iter,
            spherical=self.kmeans_spherical,
        )
        self.groups.set_group_features(F.normalize(result.centres, dim=1))

    def update_target(self, momentum: float) -> None:
        # The target's step: a copy of the online network at a reset step, an EMA otherwise.
        if self.reset_due(self.global_step):
            self.reset_targets()
        else:
            super().update_target(momentum)

    # -- one step ----------------------------------------------------------------------------
    def swapped(self, views: Views) -> tuple[Tensor, Tensor]:
        """(online view, target view): views 0 and 1, swapped on odd optimiser steps
        (lightly's benchmark swaps on odd batch indices within an epoch: the same whenever
        an epoch has an even number of batches, as Imagenette's 36 at batch 256)."""
        x0, x1 = views.global_views
        return (x1, x0) if self.global_step % 2 == 1 else (x0, x1)

    def training_loss(self, views: Views) -> Tensor:
        if self.reset_due(self.global_step):
            self.reset_groups(self.global_step)
        x0, x1 = self.swapped(views)
        z0 = self.projection_head(self.features(x0))
        p0 = self.prediction_head(z0)
        with torch.no_grad():  # the target gets no gradient: no graph to keep
            t1 = self.projection_head_target(self.backbone_target(x1))
        self.monitor_embeddings(z0)
        loss = self.float32_loss(self.grouping_loss, z0, p0, t1)
        self.memory_bank(z0.detach().float(), update=True)
        return loss

    def grouping_loss(self, z0: Tensor, p0: Tensor, t1: Tensor) -> Tensor:
        """CE(cos(p0, G') / τ, assignments of t1 to G), G' the group features moved by the
        batch's z0; G ← G' afterwards."""
        assignments = self.groups.assign_groups(t1)
        if self.gather_distributed and dist.world_size() > 1:
            z0 = torch.cat(dist.gather(z0))  # the global batch; gradients flow back
        moved = self.groups.get_updated_group_features(z0)
        logits = self.groups(p0, moved, temperature=self.temperature)
        self.groups.set_group_features(moved.detach())
        return self.criterion(logits, assignments)
