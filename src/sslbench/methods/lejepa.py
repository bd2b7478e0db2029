"""LeJEPA: Balestriero & LeCun 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning
Without the Heuristics" (https://arxiv.org/abs/2511.08544); settings of the official code
(rbalestr-lab/lejepa: README's "GOTO hyperparameters", MINIMAL.md) and lightly's ViT
benchmark (benchmarks/imagenet/vitb16/lejepa.py).

One network (backbone + projector), no teacher, no stop-gradient, no predictor network: every
view of an image, global and local, goes through it, and

* the prediction (invariance) term pulls each view's projection towards the mean of the
  image's global views' projections (lightly's ``lejepa_invariance_loss``);
* SIGReg (Sketched Isotropic Gaussian Regularization, lightly's ``SIGReg``) pushes each view's
  projections of the batch towards an isotropic Gaussian: it projects them on random unit
  directions and compares, on a grid of frequencies, each direction's empirical characteristic
  function with the standard Gaussian's (the Epps-Pulley statistic), the mean over directions
  and views;

loss = λ · SIGReg + (1 − λ) · prediction, λ the method's single trade-off hyperparameter.

Shapes, V_g global views (N, 3, S, S) and V_l local views (N, 3, s, s): backbone features
(N, F) per view (a ResNet's pooled map, a ViT's class token) → projector (lightly's
LeJEPAProjectionHead: linear layers with batch norm and ReLU after the hidden ones) →
projections (V_g + V_l, N, K) → the two terms.

SIGReg's random directions: lightly draws them from torch's global random state (and under
DDP broadcasts rank 0's); here they come from a generator seeded from (seed, epoch, step),
the same on every process, as the official code seeds them from its step counter: a run's
directions are reproducible and resume with it.

Under DDP (lightly 1.6.0, loss/lejepa_loss.py), with ``gather_distributed``: SIGReg
all-reduces the sums of the directions' cosines and sines over the processes (torch's
autograd-aware ``all_reduce``, whose backward sums every process's gradient, which DDP's
average then divides back) and the sample count (read on the host: one sync a step), so each
process's SIGReg is the global batch's and so is its gradient. The prediction term is a mean
over each process's own images (each image needs only its own views) and DDP averages the
gradients: the global batch's for equal batches per process. Without it each process's SIGReg
tests its own images only. Batch norm (backbone and projector) normalises over the global
batch on several GPUs (``backbone.sync_batchnorm``), over each process's own images on CPUs.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss.lejepa_loss import SIGReg, lejepa_invariance_loss
from lightly.models.modules import LeJEPAProjectionHead
from torch import Tensor

from sslbench.errors import ConfigError
from sslbench.methods.base import SSLMethod, Views
from sslbench.transforms import make_generator

#: The generator stream of SIGReg's directions: (seed, ALL_RANKS, epoch, step, DIRECTIONS)
#: is the same on every process, apart from the views' and the masks' streams.
ALL_RANKS, DIRECTIONS = -1, 2


class SeededSIGReg(SIGReg):
    """lightly's SIGReg with its random directions drawn from the generator that each call
    passes, instead of torch's global random state (broadcast from rank 0 under DDP); with
    none, lightly's own draw."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._generator: torch.Generator | None = None

    def forward(self, proj: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._generator = generator
        try:
            return super().forward(proj)
        finally:
            self._generator = None

    def _generate_unit_vectors(
        self, device: torch.device, dtype: torch.dtype, num_features: int
    ) -> Tensor:
        if self._generator is None:
            return super()._generate_unit_vectors(device, dtype, num_features)
        directions = torch.randn(
            num_features, self.num_vectors, device=device, dtype=dtype, generator=self._generator
        )
        return directions / directions.norm(p=2, dim=0)


class LeJEPA(SSLMethod):
    """LeJEPA with lightly's LeJEPAProjectionHead, SIGReg and prediction loss, multi-crop.

    Method keys (method/lejepa.yaml): hidden_dim, output_dim, num_layers (projector),
    lambda_param, num_slices, knots, t_max (SIGReg), gather_distributed, local_views,
    joint_forward.
    """

    # lightly's LeJEPA benchmark makes its views with DINOTransform (2 global + 6 local)
    lightly_transform = "DINOTransform"
    # The official linear probe reads the class token (of the last two layers, concatenated)
    eval_pool = "cls"
    backbone_kinds = ("cnn", "vit")  # the paper trains ResNets, ViTs, ConvNeXts, ...
    small_overrides = (
        "method.hidden_dim=64", "method.output_dim=16", "method.num_slices=64",
        "method.local_views.count=2",
    )  # fmt: skip
    # Two local views, not six: the learning test's run within minutes on a CPU.
    learning_run_overrides = ("epochs=3", "method.local_views.count=2")

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.lambda_param = float(method["lambda_param"])
        if not 0.0 <= self.lambda_param <= 1.0:
            raise ConfigError(f"method.lambda_param must be in [0, 1], got {self.lambda_param}")
        self.projection_head = LeJEPAProjectionHead(
            input_dim=self.feature_dim,
            hidden_dim=int(method["hidden_dim"]),
            output_dim=int(method["output_dim"]),
            num_layers=int(method["num_layers"]),
        )
        self.sigreg = SeededSIGReg(
            knots=int(method["knots"]),
            t_max=float(method["t_max"]),
            num_vectors=int(method["num_slices"]),
            gather_distributed=bool(method["gather_distributed"]),
        )

    def directions_generator(self) -> torch.Generator:
        """This step's generator of SIGReg's directions: the same on every process."""
        return make_generator(
            self.seed, self.device, ALL_RANKS, self.current_epoch, self.global_step, DIRECTIONS
        )

    def training_loss(self, views: Views) -> Tensor:
        projections = self.forward_views(
            lambda x: self.projection_head(self.features(x)),
            [*views.global_views, *views.local_views],
        )
        self.monitor_embeddings(projections[0])
        stacked = torch.stack(projections)  # (V_g + V_l, N, K), global views first
        sigreg = self.float32_loss(self._sigreg, stacked)
        prediction = self.float32_loss(self._prediction, stacked, len(views.global_views))
        if self._trainer is not None:  # unit tests call this without a Trainer
            n = stacked.shape[1]
            self.log("sigreg_loss", sigreg, on_step=False, on_epoch=True, batch_size=n)
            self.log("prediction_loss", prediction, on_step=False, on_epoch=True, batch_size=n)
        return self.lambda_param * sigreg + (1.0 - self.lambda_param) * prediction

    def _sigreg(self, projections: Tensor) -> Tensor:
        """SIGReg of each view's (N, K) projections, averaged over views and directions."""
        return self.sigreg(projections, self.directions_generator())

    def _prediction(self, projections: Tensor, num_global: int) -> Tensor:
        """Mean squared distance of every view's projection to its image's global centre."""
        return lejepa_invariance_loss(all_proj=projections, global_proj=projections[:num_global])
