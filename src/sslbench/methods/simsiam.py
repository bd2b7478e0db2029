"""SimSiam: Chen & He 2021, "Exploring Simple Siamese Representation Learning"
(https://arxiv.org/abs/2011.10566).

Two views pass through the same backbone and projector; a predictor maps each view's
projection to the other's, whose projection is held constant (stop-gradient). The stop-
gradient, not negatives or a momentum encoder, is what keeps the embeddings from collapsing.
Loss (the paper's symmetric form): 0.5 · (D(p0, sg(z1)) + D(p1, sg(z0))), D the negative
cosine similarity.
Shapes: views 2 × (N, 3, H, W) → features 2 × (N, D) → projections z 2 × (N, output_dim) →
predictions p 2 × (N, output_dim), each view through the networks on its own (lightly's
benchmark, the paper's code).
"""

from __future__ import annotations

from typing import Any

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from sslbench.methods.base import SSLMethod, Views, symmetric_loss


class SimSiam(SSLMethod):
    """SimSiam with lightly's projection and prediction heads and NegativeCosineSimilarity.

    Method keys (method/simsiam.yaml): hidden_dim, output_dim, predictor_hidden_dim.
    """

    lightly_transform = "pipeline"
    small_overrides = (
        "method.hidden_dim=256", "method.output_dim=256", "method.predictor_hidden_dim=64",
    )  # fmt: skip
    # lightly's unscaled 0.06 is slow to start; 0.12 learns in 3 epochs (measured).
    learning_run_overrides = ("epochs=3", "method.optimizer.lr=0.12")

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.projection_head = SimSiamProjectionHead(
            input_dim=self.feature_dim,
            hidden_dim=method["hidden_dim"],
            output_dim=method["output_dim"],
        )
        # The predictor is a bottleneck (2048 → 512 → 2048 in the paper) back to the
        # projection size, since its output is compared with the other view's projection.
        self.prediction_head = SimSiamPredictionHead(
            input_dim=method["output_dim"],
            hidden_dim=method["predictor_hidden_dim"],
            output_dim=method["output_dim"],
        )
        self.criterion = NegativeCosineSimilarity()

    def training_loss(self, views: Views) -> Tensor:
        z0, z1 = self.project_global_views(self.projection_head, views)
        p0, p1 = self.forward_views(self.prediction_head, [z0, z1])
        # Stop-gradient: the projections are targets, so no gradient flows through them.
        return self.float32_loss(symmetric_loss, self.criterion, p0, p1, z0.detach(), z1.detach())
