"""BYOL: Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning" (https://arxiv.org/abs/2006.07733).

An online network (backbone, projector, predictor) learns to predict the projection that a
target network (backbone, projector) gives the other view. The target is not trained by
gradients: it is an exponential moving average (EMA) of the online network, updated once per
training step before the forward pass (:mod:`sslbench.methods.ema`).
Loss: 0.5 · (D(p0, t1) + D(p1, t0)), D the negative cosine similarity (equal to the paper's
normalised squared error 2 − 2·cos up to an affine map), t the target projections.
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → projections z, t 2 × (N, output_dim)
→ predictions p 2 × (N, output_dim).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor

from sslbench.methods.base import Views, symmetric_loss
from sslbench.methods.ema import EMATargetMethod


class BYOL(EMATargetMethod):
    """BYOL with lightly's heads, EMA update and NegativeCosineSimilarity.

    ``self.backbone`` is the online backbone (the one evaluated); ``backbone_target`` and
    ``projection_head_target`` are its EMA copies, with ``requires_grad`` False so that the
    optimiser never sees them.

    Method keys (method/byol.yaml): hidden_dim, output_dim, predictor_hidden_dim, momentum,
    momentum_end (null: constant ``momentum``; a float: cosine from ``momentum`` to it over
    all optimiser steps, the paper's schedule).
    """

    lightly_transform = "pipeline"
    small_overrides = (
        "method.hidden_dim=256", "method.output_dim=64", "method.predictor_hidden_dim=256",
    )  # fmt: skip

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
        # After the heads, in this order: the checkpoint's keys and parameter order as before.
        self.backbone_target = self.add_target("backbone")
        self.projection_head_target = self.add_target("projection_head")
        self.criterion = NegativeCosineSimilarity()

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
