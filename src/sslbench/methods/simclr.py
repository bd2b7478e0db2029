"""SimCLR: Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations" (https://arxiv.org/abs/2002.05709).

Two views of each image pass through the backbone and a projection head; lightly's
NT-Xent loss pulls each pair together and pushes the other 2N − 2 embeddings away.
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → embeddings 2 × (N, output_dim).
"""

from __future__ import annotations

from typing import Any

from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead
from torch import Tensor

from sslbench.methods.base import SSLMethod, Views


class SimCLR(SSLMethod):
    """SimCLR with lightly's projection head and NTXentLoss.

    Method keys (method/simclr.yaml): temperature, hidden_dim, output_dim, num_layers,
    gather_distributed.
    """

    lightly_transform = "pipeline"
    small_overrides = ("method.hidden_dim=256", "method.output_dim=64")

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.projection_head = SimCLRProjectionHead(
            input_dim=self.feature_dim,
            hidden_dim=method["hidden_dim"],
            output_dim=method["output_dim"],
            num_layers=method["num_layers"],
        )
        self.criterion = NTXentLoss(
            temperature=method["temperature"], gather_distributed=method["gather_distributed"]
        )

    def training_loss(self, views: Views) -> Tensor:
        z0, z1 = self.project_global_views(self.projection_head, views)
        return self.float32_loss(self.criterion, z0, z1)
