"""Barlow Twins: Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction" (https://arxiv.org/abs/2103.03230).

The cross-correlation matrix C between the batch-standardised embeddings of two views is
pushed towards the identity: its diagonal to 1 (invariance to the augmentations), its
off-diagonal to 0, weighted by λ (redundancy reduction: every dimension carries different
information). No negatives, predictor or momentum encoder are needed against collapse.
Loss: Σ_i (1 − C_ii)² + λ · Σ_{i≠j} C_ij².
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → embeddings 2 × (N, output_dim) →
C (output_dim, output_dim).

Under DDP the loss is the global batch's (sslbench's :class:`~sslbench.nn.losses.BarlowTwinsLoss`);
lightly's standardises each process's embeddings with that process's own statistics.
"""

from __future__ import annotations

from typing import Any

from lightly.models.modules.heads import BarlowTwinsProjectionHead
from torch import Tensor

from sslbench.methods.base import SSLMethod, Views
from sslbench.nn.losses import BarlowTwinsLoss


class BarlowTwins(SSLMethod):
    """Barlow Twins with lightly's projection head and sslbench's BarlowTwinsLoss (lightly's
    formula, with the global batch's statistics under DDP).

    Method keys (method/barlowtwins.yaml): hidden_dim, output_dim, lambda_param,
    gather_distributed.
    """

    lightly_transform = "pipeline"
    small_overrides = ("method.hidden_dim=256", "method.output_dim=256")
    # lightly's SGD protocol needs far more than 3 epochs (on Imagenette it was the weakest
    # method after 200); the paper's LARS recipe learns within this budget.
    learning_run_overrides = (
        "epochs=2",
        "method.optimizer.name=lars",
        "method.optimizer.lr=0.2",
        "method.optimizer.weight_decay=1.5e-6",
        "method.optimizer.exclude_bias_and_norm=true",
    )  # fmt: skip

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.projection_head = BarlowTwinsProjectionHead(
            input_dim=self.feature_dim,
            hidden_dim=method["hidden_dim"],
            output_dim=method["output_dim"],
        )
        self.criterion = BarlowTwinsLoss(
            lambda_param=method["lambda_param"],
            gather_distributed=method["gather_distributed"],
        )

    def training_loss(self, views: Views) -> Tensor:
        z0, z1 = self.project_global_views(self.projection_head, views)
        # float32: C sums N products per entry, and the loss sums output_dim² squares.
        return self.float32_loss(self.criterion, z0, z1)
