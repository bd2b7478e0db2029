"""VICReg: Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance
Regularization for Self-Supervised Learning" (https://arxiv.org/abs/2105.04906).

The embeddings ("expander" outputs) of two views are pulled together by a mean-squared
error (invariance, weight λ); collapse is prevented by two terms on each view separately:
a hinge keeping every dimension's standard deviation above 1 (variance, weight μ) and the
squared off-diagonal covariances (covariance, weight ν), which decorrelate the dimensions.
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → embeddings 2 × (N, output_dim).
"""

from __future__ import annotations

from typing import Any

from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead
from torch import Tensor

from sslbench.methods.base import SSLMethod, Views


class VICReg(SSLMethod):
    """VICReg with lightly's expander (VICRegProjectionHead) and VICRegLoss.

    Trained with LARS (method/vicreg.yaml): lightly's benchmark notes that training
    diverges without it.

    Method keys (method/vicreg.yaml): hidden_dim, output_dim, num_layers, lambda_param,
    mu_param, nu_param, gather_distributed.
    """

    lightly_transform = "pipeline"
    small_overrides = ("method.hidden_dim=256", "method.output_dim=256")
    learning_run_overrides = ("epochs=2", "method.optimizer.warmup_epochs=0.3")

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.projection_head = VICRegProjectionHead(
            input_dim=self.feature_dim,
            hidden_dim=method["hidden_dim"],
            output_dim=method["output_dim"],
            num_layers=method["num_layers"],
        )
        self.criterion = VICRegLoss(
            lambda_param=method["lambda_param"],
            mu_param=method["mu_param"],
            nu_param=method["nu_param"],
            gather_distributed=method["gather_distributed"],
        )

    def training_loss(self, views: Views) -> Tensor:
        z0, z1 = self.project_global_views(self.projection_head, views)
        # float32: the covariance sums output_dim² squared entries.
        return self.float32_loss(self.criterion, z0, z1)
