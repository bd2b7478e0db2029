"""TiCo: Zhu, Moraes, Karakulak, Sobol, Canziani & LeCun 2022, "TiCo: Transformation
Invariance and Covariance Contrast for Self-Supervised Visual Representation Learning"
(https://arxiv.org/abs/2206.10698).

The online network (backbone, projector) embeds view 0, a momentum (EMA) copy of it embeds
view 1, both L2-normalised. The loss pulls each online embedding towards its image's target
embedding (transformation invariance) and penalises ``z·C·z`` (covariance contrast), where
C is a running average, over past batches, of the online embeddings' second-moment matrix:
it pushes each embedding away from the directions that past embeddings filled, an implicit
memory bank of unlimited size. As in lightly's benchmark the loss goes one way only: view 0
through the online network, view 1 through the target, never the other way round.
Shapes: views 2 × (N, 3, H, W) → online features (N, D) of view 0 → projection z0
(N, output_dim); target projection t1 (N, output_dim) of view 1; running covariance C
(output_dim, output_dim).

Under DDP (``gather_distributed``) lightly's TiCoLoss gathers both views' embeddings from
every process (gradients flow back through the gather), so each process computes the loss
of the global batch and, from the gathered online embeddings, the same second-moment
matrix: C stays equal on every process, and a checkpoint (written by rank 0) holds the one
C of the run. Without it each process's C follows its own rows only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightly.loss import TiCoLoss
from lightly.models.modules.heads import TiCoProjectionHead
from torch import Tensor

from sslbench.errors import ConfigError
from sslbench.methods.base import Views
from sslbench.methods.ema import EMATargetMethod

#: The running covariance's entry in :meth:`TiCo.extra_checkpoint_state`.
COVARIANCE_KEY = "criterion.C"


class TiCo(EMATargetMethod):
    """TiCo with lightly's projection head and TiCoLoss, and an EMA target network.

    ``self.backbone`` is the online backbone (the one evaluated); ``backbone_target`` and
    ``projection_head_target`` are its EMA copies, which gradients never reach. lightly's
    TiCoLoss keeps its running covariance C as a plain attribute (``criterion.C``, None
    before the first step): not in the state_dict, so :meth:`extra_checkpoint_state` saves
    it beside it.

    One view goes through each network (view 0 the online one, view 1 the target), so
    there is nothing for ``joint_forward`` to join: it must stay false.

    Method keys (method/tico.yaml): hidden_dim, output_dim, beta, rho, gather_distributed,
    momentum, momentum_end, joint_forward.
    """

    lightly_transform = "pipeline"
    small_overrides = ("method.hidden_dim=256", "method.output_dim=64")
    # 20 warm-up epochs would keep the lr near 0 for a 3-epoch run.
    learning_run_overrides = ("epochs=3", "method.optimizer.warmup_epochs=0.3")

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        if self.joint_forward:
            raise ConfigError(
                "method.joint_forward=true does not apply to TiCo: it passes one view through "
                "each network (view 0 the online one, view 1 the target), nothing to join"
            )
        self.output_dim = int(method["output_dim"])
        self.projection_head = TiCoProjectionHead(
            input_dim=self.feature_dim, hidden_dim=method["hidden_dim"], output_dim=self.output_dim
        )
        self.backbone_target = self.add_target("backbone")
        self.projection_head_target = self.add_target("projection_head")
        self.criterion = TiCoLoss(
            beta=method["beta"],
            rho=method["rho"],
            gather_distributed=method["gather_distributed"],
        )

    def training_loss(self, views: Views) -> Tensor:
        x0, x1 = views.global_views
        z0 = self.projection_head(self.features(x0))
        with torch.no_grad():  # the target gets no gradient: no graph to keep
            t1 = self.projection_head_target(self.backbone_target(x1))
        self.monitor_embeddings(z0)
        self._covariance_to(z0.device)
        return self.float32_loss(self.criterion, z0, t1)

    def _covariance_to(self, device: torch.device) -> None:
        """Move C to ``device``: a plain attribute does not follow the module's ``.to()``,
        and a checkpoint's C is put back before Lightning moves the module to its device."""
        covariance = self.criterion.C
        if covariance is not None and covariance.device != device:
            self.criterion.C = covariance.to(device)

    def extra_checkpoint_state(self) -> dict[str, Tensor]:
        state = super().extra_checkpoint_state()
        if self.criterion.C is not None:  # None before the first step: nothing to keep
            state[COVARIANCE_KEY] = self.criterion.C.detach().clone()
        return state

    def load_extra_checkpoint_state(self, state: Mapping[str, Tensor]) -> None:
        super().load_extra_checkpoint_state(state)
        covariance = state.get(COVARIANCE_KEY)
        if covariance is None:
            return
        dim = self.output_dim
        if tuple(covariance.shape) != (dim, dim):
            raise ValueError(
                f"checkpoint's {COVARIANCE_KEY} has shape {tuple(covariance.shape)}, the "
                f"method's ({dim}, {dim}): it was saved with another method.output_dim"
            )
        self.criterion.C = covariance.detach().clone().to(self.device, torch.float32)
