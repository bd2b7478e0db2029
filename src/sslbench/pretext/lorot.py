"""LoRot: Moon et al. 2022, "Tailoring Self-Supervision for Supervised Learning" (ECCV,
https://arxiv.org/abs/2207.10023; code wjun0830/Localizable-Rotation).

The transform's ``lorot`` op turns a square region of each view by k quarter turns; a
linear head on the pooled backbone features predicts the rotation class: k (LoRot-I, 4
classes) or quadrant × k (LoRot-E, 16 classes). Cross-entropy over every view that the op
turned (global views, and local views where the method has them).

Shapes: feature maps V × (N, C, h, w) → pooled (V·N, C) → logits (V·N, 4 or 16).

Example::

    sslbench pretrain method=simclr transform=lorot pretext=lorot pretext.weight=0.1
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.pretext.base import PretextInputs, PretextTask, single_value


class LoRot(PretextTask):
    """LoRot's rotation classifier. Pretext keys (pretext/lorot.yaml): weight."""

    def __init__(self, cfg: dict[str, Any], *, op_params: Any, feature_dim: int, **kwargs: Any):
        super().__init__(cfg, op_params=op_params, feature_dim=feature_dim, **kwargs)
        variant = single_value("lorot", "variant", op_params)
        self.num_classes = 16 if variant == "E" else 4
        self.chance = 1 / self.num_classes
        self.head = nn.Linear(feature_dim, self.num_classes)
        self.accuracy_means = (
            f"rotation class of the turned region (LoRot-{variant}, {self.num_classes} "
            f"classes, chance {1 / self.num_classes:g})"
        )

    def forward(self, inputs: PretextInputs) -> tuple[Tensor, dict[str, Tensor]]:
        features = torch.cat([inputs.pool(fmap) for fmap in inputs.feature_maps])
        labels = torch.cat(inputs.labels)
        logits = self.head(features).float()
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy.detach(), "loss": loss.detach()}
