"""MoCo v3: Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers" (https://arxiv.org/abs/2104.02057); the ResNet variant of the official code
(facebookresearch/moco-v3, ``MoCo_ResNet``).

An online network (backbone, projector, predictor) gives queries; a momentum encoder
(backbone, projector), an EMA of the online one whose momentum rises from 0.99 to 1 by a
half cosine over training (:mod:`sslbench.methods.ema`), gives keys. Each view's queries are
contrasted with the other view's keys of the whole (global) batch, the key of the same image
the positive (:class:`sslbench.nn.losses.MoCoV3Loss`); no memory bank, keys get no gradient.
Loss: ctr(q0, k1) + ctr(q1, k0).

Heads (official ResNet code): projector input→4096→256, batch norm + ReLU after the hidden
layer and an affine-free batch norm after the last; predictor 256→4096→256, batch norm +
ReLU after the hidden layer only; linear layers without bias.
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → projections z and keys k
2 × (N, output_dim) → queries q 2 × (N, output_dim).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.models.modules.heads import ProjectionHead
from torch import Tensor, nn

from sslbench.methods.base import Views
from sslbench.methods.ema import EMATargetMethod
from sslbench.nn.losses import MoCoV3Loss


def mocov3_projector(
    input_dim: int, hidden_dim: int, output_dim: int, num_layers: int
) -> ProjectionHead:
    """The projector: ``num_layers`` linear layers without bias, batch norm + ReLU after each
    hidden one, an affine-free batch norm after the last (the official code's, after SimCLR)."""
    if num_layers < 2:
        raise ValueError(f"method.num_layers must be at least 2, got {num_layers}")
    dims = [input_dim] + [hidden_dim] * (num_layers - 1)
    blocks: list[tuple[int, int, nn.Module | None, nn.Module | None, bool]] = [
        (d_in, d_out, nn.BatchNorm1d(d_out), nn.ReLU(), False)
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)
    ]
    blocks.append((hidden_dim, output_dim, nn.BatchNorm1d(output_dim, affine=False), None, False))
    return ProjectionHead(blocks)


def mocov3_predictor(dim: int, hidden_dim: int) -> ProjectionHead:
    """The ResNet predictor: dim → hidden (batch norm, ReLU) → dim, linear layers without bias."""
    return ProjectionHead(
        [(dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(), False),
         (hidden_dim, dim, None, None, False)]
    )  # fmt: skip


class MoCoV3(EMATargetMethod):
    """MoCo v3 (ResNet) with heads built from lightly's ProjectionHead, lightly's EMA update
    and sslbench's MoCoV3Loss.

    ``self.backbone`` is the online backbone (the one evaluated); ``backbone_target`` and
    ``projection_head_target`` form the momentum encoder, with ``requires_grad`` False.

    Method keys (method/mocov3.yaml): hidden_dim, output_dim, num_layers (projector),
    predictor_hidden_dim, temperature, gather_distributed, momentum, momentum_end.
    """

    lightly_transform = "pipeline"
    small_overrides = (
        "method.hidden_dim=256", "method.output_dim=64", "method.predictor_hidden_dim=256",
    )  # fmt: skip
    # The learning runs last 3 epochs: a tenth of them warms up (10 of 100 in the paper), and
    # the ResNet temperature is restored over the demo experiment's 0.2 (SimCLR's setting).
    learning_run_overrides = (
        "epochs=3", "method.optimizer.warmup_epochs=0.3", "method.temperature=1.0",
    )  # fmt: skip

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        output_dim = int(method["output_dim"])
        self.projection_head = mocov3_projector(
            self.feature_dim, int(method["hidden_dim"]), output_dim, int(method["num_layers"])
        )
        self.prediction_head = mocov3_predictor(output_dim, int(method["predictor_hidden_dim"]))
        self.backbone_target = self.add_target("backbone")
        self.projection_head_target = self.add_target("projection_head")
        self.criterion = MoCoV3Loss(
            temperature=method["temperature"], gather_distributed=method["gather_distributed"]
        )

    def training_loss(self, views: Views) -> Tensor:
        # Each view through each network on its own (batch norm over one view's N samples;
        # the official code too): method.joint_forward passes both views at once.
        z0, z1 = self.forward_views(
            lambda x: self.projection_head(self.features(x)), views.global_views
        )
        q0, q1 = self.forward_views(self.prediction_head, [z0, z1])
        with torch.no_grad():  # keys get no gradient: no graph to keep
            k0, k1 = self.forward_views(
                lambda x: self.projection_head_target(self.backbone_target(x)), views.global_views
            )
        self.monitor_embeddings(z0)
        return self.float32_loss(self._loss, q0, q1, k0, k1)

    def _loss(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor) -> Tensor:
        return self.criterion(q0, k1) + self.criterion(q1, k0)
