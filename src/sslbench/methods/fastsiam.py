"""FastSiam: Pototzky, Sultan & Schmidt-Thieme 2022, "FastSiam: Resource-Efficient
Self-supervised Learning on a Single GPU" (DAGM GCPR 2022, LNCS 13485,
https://doi.org/10.1007/978-3-031-16788-1_4).

SimSiam's networks on more views of each image: every view's prediction is compared with
the mean of the other views' projections, held constant (stop-gradient). Averaging several
views makes the target steadier than SimSiam's single other view, which the paper finds
makes training converge in fewer epochs.
Loss, with V views (4 in lightly's benchmark and the paper):
(1/V) · Σ_i D(p_i, sg(mean_{j≠i} z_j)), D the negative cosine similarity.
Shapes: views V × (N, 3, H, W) → features V × (N, D) → projections z V × (N, output_dim) →
predictions p V × (N, output_dim), each view through the networks on its own (lightly's
benchmark).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sslbench.methods.base import Views
from sslbench.methods.simsiam import SimSiam


def mean_of_others_loss(
    criterion: Callable[[Tensor, Tensor], Tensor],
    predictions: Sequence[Tensor],
    targets: Sequence[Tensor],
) -> Tensor:
    """(1/V) · Σ_i D(p_i, mean_{j≠i} t_j) over V views: each view's prediction against the
    mean of the other views' targets (``criterion`` D: lightly's negative cosine)."""
    views = len(predictions)
    if views < 2 or len(targets) != views:
        raise ValueError(
            f"FastSiam needs two views or more, one target per prediction: got "
            f"{views} predictions and {len(targets)} targets"
        )
    total = predictions[0].new_zeros(())
    for i, prediction in enumerate(predictions):
        others = torch.stack([t for j, t in enumerate(targets) if j != i]).mean(dim=0)
        total = total + criterion(prediction, others)
    return total / views


class FastSiam(SimSiam):
    """FastSiam: SimSiam's projection and prediction heads and NegativeCosineSimilarity, on
    ``num_global_views`` views of each image made by the run's pipeline.

    Method keys (method/fastsiam.yaml): hidden_dim, output_dim, predictor_hidden_dim,
    joint_forward (all V views in one batch of V·N).
    """

    #: lightly's benchmark and the paper: 4 views (K = 3 target views per prediction).
    num_global_views = 4
    lightly_transform = "FastSiamTransform"

    def training_loss(self, views: Views) -> Tensor:
        z = self.forward_views(lambda x: self.projection_head(self.features(x)), views.global_views)
        p = self.forward_views(self.prediction_head, z)
        self.monitor_embeddings(z[0])
        # Stop-gradient: the projections are targets, so no gradient flows through them.
        return self.float32_loss(mean_of_others_loss, self.criterion, p, [zi.detach() for zi in z])
