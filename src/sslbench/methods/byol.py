"""BYOL: Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning" (https://arxiv.org/abs/2006.07733).

An online network (backbone, projector, predictor) learns to predict the projection that a
target network (backbone, projector) gives the other view. The target is not trained by
gradients: it is an exponential moving average (EMA) of the online network, updated once per
training step before the forward pass (lightly's order; the paper updates after the
optimiser step, the same sequence shifted by one step).
Loss: 0.5 · (D(p0, t1) + D(p1, t0)), D the negative cosine similarity (equal to the paper's
normalised squared error 2 − 2·cos up to an affine map), t the target projections.
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → projections z, t 2 × (N, output_dim)
→ predictions p 2 × (N, output_dim).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor

from sslbench.methods.base import SSLMethod, Views, symmetric_loss


class BYOL(SSLMethod):
    """BYOL with lightly's heads, EMA update and NegativeCosineSimilarity.

    ``self.backbone`` is the online backbone (the one evaluated); ``backbone_target`` and
    ``projection_head_target`` are its EMA copies, with ``requires_grad`` False so that the
    optimiser never sees them.

    Method keys (method/byol.yaml): hidden_dim, output_dim, predictor_hidden_dim, momentum,
    momentum_end (null: constant ``momentum``; a float: cosine from ``momentum`` to it over
    all optimiser steps, the paper's schedule).
    """

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.projection_head = BYOLProjectionHead(
            input_dim=self.feature_dim,
            hidden_dim=method["hidden_dim"],
            output_dim=method["output_dim"],
        )
        self.prediction_head = BYOLPredictionHead(
            input_dim=method["output_dim"],
            hidden_dim=method["predictor_hidden_dim"],
            output_dim=method["output_dim"],
        )
        # The target starts as an exact copy of the online network (paper, Algorithm 1).
        self.backbone_target = copy.deepcopy(self.backbone)
        self.projection_head_target = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_target)
        deactivate_requires_grad(self.projection_head_target)
        self.criterion = NegativeCosineSimilarity()

        self.momentum = float(method["momentum"])
        end = method["momentum_end"]
        self.momentum_end = None if end is None else float(end)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"method.momentum must be in [0, 1], got {self.momentum}")
        if self.momentum_end is not None and not self.momentum <= self.momentum_end <= 1.0:
            raise ValueError(
                f"method.momentum_end must be null or in [momentum, 1] = "
                f"[{self.momentum}, 1], got {self.momentum_end}"
            )
        # Optimiser steps of the whole run, for the cosine schedule; set when training starts.
        self.total_steps = 1

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The EMA momentum at optimiser step ``step`` of ``total_steps``: constant, or the
        paper's cosine schedule from m = momentum to e = momentum_end (1 in the paper):
        e − (e − m)·(cos(π·step/(total_steps − 1)) + 1)/2, lightly's cosine_schedule."""
        if self.momentum_end is None:
            return self.momentum
        return cosine_schedule(step, total_steps, self.momentum, self.momentum_end)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target ← momentum · target + (1 − momentum) · online, for every parameter.

        Batch-norm running statistics are buffers, not parameters: the target keeps its own,
        from its forward passes in training mode (as in lightly); evaluation never uses them.
        """
        update_momentum(self.backbone, self.backbone_target, m=momentum)
        update_momentum(self.projection_head, self.projection_head_target, m=momentum)

    def on_train_start(self) -> None:
        super().on_train_start()
        # Known only once the Trainer has its data: every optimiser step of every epoch.
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    def loss_of_views(self, views: Views) -> Tensor:
        # The EMA update comes before the forward pass, once per step (lightly's order): the
        # target used below already includes the online network's last optimiser step.
        momentum = self.momentum_at(self.global_step, self.total_steps)
        self.update_target(momentum)
        self.log("target_momentum", momentum, on_step=True, on_epoch=False)
        return super().loss_of_views(views)

    def training_loss(self, views: Views) -> Tensor:
        # Each view through each network on its own (lightly's benchmark, the BYOL code):
        # batch norm normalises over one view's N samples (method.joint_forward: both views).
        z0, z1 = self.forward_views(
            lambda x: self.projection_head(self.features(x)), views.global_views
        )
        p0, p1 = self.forward_views(self.prediction_head, [z0, z1])
        with torch.no_grad():  # the target gets no gradient: no graph to keep
            t0, t1 = self.forward_views(
                lambda x: self.projection_head_target(self.backbone_target(x)), views.global_views
            )
        self.monitor_embeddings(z0)
        return self.float32_loss(symmetric_loss, self.criterion, p0, p1, t0, t1)
