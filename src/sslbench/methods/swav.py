"""SwAV: Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments" (https://arxiv.org/abs/2006.09882).

Every crop is projected onto the unit sphere and scored against learnable prototypes. The
codes of each high-resolution (global) crop, balanced over the batch by Sinkhorn-Knopp, are
the targets that all the other crops, global and local, must predict from their own scores:
a swapped prediction problem. Multi-crop adds cheap low-resolution local crops that only
predict, never give, codes. An optional queue of past global projections enlarges the set
that Sinkhorn balances when batches are small.

Shapes, with G global views (N, 3, S, S) and L local views (N, 3, s, s): backbone features
(N, D) per crop → projections (N, output_dim) per crop, L2-normalised → prototype scores
(G·N + L·N, n_prototypes) → lightly's SwaVLoss. Each crop passes through the backbone and the
head on its own (lightly's benchmark); with ``method.joint_forward`` the crops of one
resolution share a backbone pass and all share one head pass (SwAV's code).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules.heads import SwaVProjectionHead, SwaVPrototypes
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.utils import dist
from torch import Tensor, nn

from sslbench.errors import ConfigError
from sslbench.methods.base import SSLMethod, Views


class SwAV(SSLMethod):
    """SwAV with lightly's projection head, prototypes and SwaVLoss.

    Method keys (method/swav.yaml): hidden_dim, output_dim, n_prototypes, temperature,
    sinkhorn_iterations, sinkhorn_epsilon, sinkhorn_gather_distributed,
    freeze_prototypes_epochs, queue_length, queue_start_epoch, local_views.
    """

    lightly_transform = "SwaVTransform"
    # a queue of 64 fits the tiny runs' 128 images (swav_queue's 384 would be refused)
    small_overrides = (
        "method.hidden_dim=64", "method.output_dim=32", "method.n_prototypes=16",
        "method.local_views.count=2", "method.queue_length=64",
    )  # fmt: skip
    bank_keys = ("queue_length",)

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        output_dim = int(method["output_dim"])
        self.projection_head = SwaVProjectionHead(
            input_dim=self.feature_dim, hidden_dim=method["hidden_dim"], output_dim=output_dim
        )
        # lightly's own freezing (n_steps_frozen_prototypes) flips requires_grad, which
        # DDP without find_unused_parameters rejects; the prototypes' gradients are
        # dropped after backward instead (on_after_backward), as the SwAV code does.
        self.prototypes = SwaVPrototypes(output_dim, int(method["n_prototypes"]))
        self.criterion = SwaVLoss(
            temperature=method["temperature"],
            sinkhorn_iterations=method["sinkhorn_iterations"],
            sinkhorn_epsilon=method["sinkhorn_epsilon"],
            sinkhorn_gather_distributed=method["sinkhorn_gather_distributed"],
        )
        self.freeze_prototypes_epochs = float(method["freeze_prototypes_epochs"])
        #: Optimiser steps whose prototype gradients are dropped; the epoch length is known
        #: once a Trainer is attached (on_train_start).
        self.frozen_prototype_steps = 0
        self.queue_length = int(method["queue_length"])
        self.queue_start_epoch = int(method["queue_start_epoch"])
        # One queue of past normalised projections per global view (lightly's SwaV-with-
        # queue pattern). Under DDP it enqueues the global batch, so every process holds the
        # same queue (DDP copies rank 0's buffers to the others before each forward anyway),
        # and each process scores its 1/world share of it: SwAV's code keeps
        # queue_length / world_size rows per process, and its Sinkhorn sums over processes.
        self.queues = nn.ModuleList(
            [
                MemoryBankModule(
                    (self.queue_length, output_dim),
                    gather_distributed=True,
                    feature_dim_first=False,
                )
                for _ in range(self.num_global_views if self.queue_length > 0 else 0)
            ]
        )

    def on_train_start(self) -> None:
        self.frozen_prototype_steps = round(self.freeze_prototypes_epochs * self.steps_per_epoch)
        world = dist.world_size()
        if self.queue_length % world:
            fits = self.queue_length - self.queue_length % world
            raise ConfigError(
                f"method.queue_length={self.queue_length} must split evenly over the {world} "
                f"processes (each scores its share of the queue): {fits} does"
            )

    def on_after_backward(self) -> None:
        # Gradients were computed (and reduced over devices); dropping them leaves the
        # prototypes untouched by the optimiser, weight decay included.
        if self.global_step < self.frozen_prototype_steps:
            for parameter in self.prototypes.parameters():
                parameter.grad = None

    def training_loss(self, views: Views) -> Tensor:
        # SwAV keeps the prototypes on the unit sphere: scores are cosine similarities
        # (up to lightly's prototype bias).
        self.prototypes.normalize()
        n, g = views.global_views[0].shape[0], len(views.global_views)
        crops = [*views.global_views, *views.local_views]
        if self.joint_forward:
            # SwAV's code: the backbone once per resolution, the head once over all crops.
            projections = self.projection_head(torch.cat(self.forward_views(self.features, crops)))
        else:
            # lightly's benchmark: every crop through backbone and head on its own.
            projections = torch.cat([self.projection_head(self.features(crop)) for crop in crops])
        # Scores in float32: Sinkhorn's exp(scores / 0.05) turns bf16's rounding of the
        # scores into errors of several percent in the codes (and overflows in bf16).
        with torch.autocast(device_type=self.device.type, enabled=False):
            z = F.normalize(projections.float(), dim=1)
            scores = self.prototypes(z).split(n)
            z_global = z[: g * n].split(n)
            queue = self._queue_scores(z_global)
        self.monitor_embeddings(z_global[0])
        return self.float32_loss(self.criterion, list(scores[:g]), list(scores[g:]), queue)

    @torch.no_grad()
    def _queue_scores(self, z_global: tuple[Tensor, ...]) -> list[Tensor] | None:
        """Prototype scores (queue_length, n_prototypes) of each global view's queue, or
        None while the queue is off or still filling (before ``queue_start_epoch``)."""
        if len(self.queues) == 0:
            return None
        # The bank as it was before this batch is enqueued (lightly returns a copy).
        banks = [queue(z, update=True)[1] for queue, z in zip(self.queues, z_global, strict=True)]
        if self.current_epoch < self.queue_start_epoch:
            return None
        if dist.world_size() > 1:  # this process's share (see __init__)
            banks = [bank.chunk(dist.world_size())[dist.rank()] for bank in banks]
        return [self.prototypes(bank) for bank in banks]
