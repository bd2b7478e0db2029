"""MSN: Assran et al. 2022, "Masked Siamese Networks for Label-Efficient Learning"
(https://arxiv.org/abs/2204.07141), on a ViT; with ``prior: power_law`` its PMSN variant
(Assran et al. 2023, "The Hidden Uniform Cluster Prior in Self-Supervised Learning",
https://arxiv.org/abs/2210.07277).

An anchor view with a random part of its patches dropped and a target view of the same image
are both assigned softly to learnable prototypes (cosine similarity, temperature τ, softmax);
the anchor's assignment is trained to match the target's, sharpened (temperature T) and
balanced over the batch by Sinkhorn-Knopp. The target comes from the target encoder, an EMA
of the anchor encoder (:mod:`sslbench.methods.ema`), on the unmasked view; gradients reach
the anchor encoder and the prototypes. A regulariser keeps the mean anchor assignment close
to a prior over the prototypes: MSN's me-max (its entropy kept high, ``prior: uniform``,
lightly's MSNLoss) or PMSN's power law p_k ∝ k^−exponent (KL to it, ``prior: power_law``,
lightly's PMSNLoss). Multi-crop: focal (local) views are further anchors of the same target.

Views (official code, facebookresearch/msn): global view 0 is the target (the official
``imgs[0]``), global view 1 the anchor (``imgs[1]``, patch_drop), the local views the focal
anchors, unmasked as in the official code (its ``patch_drop`` applies to the first group of
same-sized crops only; lightly's example masks them: ``mask_local_views: true``).

Shapes, with views (N, 3, S, S) of T patches and L focal views: anchor tokens (N, 1 + K, D),
K = int(T·(1 − mask_ratio)) kept per image (random_token_mask, class token kept) →
[CLS] (N, D) → projection head (N, d); target [CLS] → target head (N, d); prototypes (P, d)
→ lightly's MSNLoss(anchors ((1 + L)·N, d), targets (N, d), prototypes): the mean over
anchors of H(sinkhorn(sharpen(p_target, T)), p_anchor) + me_max_weight · regulariser.

Under DDP: Sinkhorn normalises over the global batch (``gather_distributed``); the me-max
term is each process's own (lightly; the official code all-reduces the mean assignment), and
masks are drawn per process, so a DDP step is not the whole batch's.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightly.loss import MSNLoss, PMSNLoss
from lightly.models.modules import MaskedVisionTransformerTIMM
from lightly.models.modules.heads import MSNProjectionHead
from torch import Tensor, nn

from sslbench.methods.base import LEARNING_VIT, TEST_VIT, Views
from sslbench.methods.ema import EMATargetMethod
from sslbench.nn.masking import random_token_mask

#: Values of the ``prior`` key: MSN's uniform prior (me-max) or PMSN's power law.
PRIORS: tuple[str, ...] = ("uniform", "power_law")


def msn_criterion(method: dict[str, Any]) -> MSNLoss:
    """lightly's MSNLoss (``prior: uniform``) or PMSNLoss (``prior: power_law``)."""
    prior = method["prior"]
    common = {
        "temperature": float(method["temperature"]),
        "sinkhorn_iterations": int(method["sinkhorn_iterations"]),
        "regularization_weight": float(method["me_max_weight"]),
        "gather_distributed": bool(method["gather_distributed"]),
    }
    if prior == "uniform":
        return MSNLoss(**common)
    if prior == "power_law":
        return PMSNLoss(power_law_exponent=float(method["power_law_exponent"]), **common)
    raise ValueError(f"unknown method.prior '{prior}'; valid: {', '.join(PRIORS)}")


class MSN(EMATargetMethod):
    """MSN with lightly's MSNProjectionHead, MSNLoss / PMSNLoss and MaskedVisionTransformerTIMM
    (the anchor encoder: ``self.backbone``'s parameters, dropping tokens by index).

    ``self.backbone``, ``projection_head`` and ``prototypes`` are trained (the backbone is
    the one evaluated); ``backbone_target`` and ``projection_head_target`` are the target
    encoder, their EMA copies. The prototypes get no weight decay (official code).

    Method keys (method/msn.yaml): hidden_dim, output_dim, num_prototypes, temperature,
    target_sharpen_temperature, sinkhorn_iterations, me_max_weight, prior,
    power_law_exponent, gather_distributed, mask_ratio, mask_local_views, momentum,
    momentum_end, local_views, joint_forward.
    """

    lightly_transform = "MSNTransform"
    small_overrides = (
        *TEST_VIT, "method.hidden_dim=64",
        "method.output_dim=32", "method.num_prototypes=64", "method.local_views.count=2",
        "method.local_views.size_ratio=0.5",
    )  # fmt: skip
    # Local crops of half the side (the patches must tile them), two of them, and a warm-up
    # of a tenth of the run (15 of 800 epochs in the official recipe): minutes on a CPU.
    learning_run_overrides = (
        "epochs=3", *LEARNING_VIT,
        "method.local_views.count=2", "method.local_views.size_ratio=0.5",
        "method.optimizer.warmup_epochs=0.3",
    )  # fmt: skip
    eval_pool = "cls"
    backbone_kinds = ("vit",)

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.criterion = msn_criterion(method)  # a bad prior fails before the heads are built
        output_dim = int(method["output_dim"])
        self.projection_head = MSNProjectionHead(
            input_dim=self.feature_dim, hidden_dim=method["hidden_dim"], output_dim=output_dim
        )
        # Official code: U(-1/sqrt(d), 1/sqrt(d)), as nn.Linear(d, P).weight in lightly's example
        bound = output_dim**-0.5
        self.prototypes = nn.Parameter(
            torch.empty(int(method["num_prototypes"]), output_dim).uniform_(-bound, bound)
        )
        # Parameters shared with self.backbone, which stays timm's ViT as built (lightly's
        # MAE initialisation skipped); tokens are dropped, never replaced: no mask token to train.
        self.anchor_vit = MaskedVisionTransformerTIMM(
            vit=self.backbone, weight_initialization="skip", pos_embed_initialization="skip"
        )
        self.anchor_vit.mask_token.requires_grad_(False)
        self.backbone_target = self.add_target("backbone")
        self.projection_head_target = self.add_target("projection_head")
        self.mask_ratio = float(method["mask_ratio"])
        self.mask_local_views = bool(method["mask_local_views"])
        self.target_sharpen_temperature = float(method["target_sharpen_temperature"])

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        # The prototypes join the undecayed group of biases and norms (official code: its
        # param group with weight_decay 0), in place: the lr schedule keeps its groups.
        groups = config["optimizer"].param_groups
        if len(groups) == 2 and groups[1]["weight_decay"] == 0.0:
            groups[0]["params"] = [p for p in groups[0]["params"] if p is not self.prototypes]
            groups[1]["params"].append(self.prototypes)
        return config

    def keep_indices(self, views: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        """Per view, the token indices (N, prefix + K) each image keeps: its prefix tokens
        (the class token) and a random (1 − mask_ratio) of its patches."""
        prefix = self.backbone.num_prefix_tokens
        patch = self.backbone.patch_embed.patch_size
        kept = []
        for x in views:
            num_tokens = (x.shape[-2] // patch[0]) * (x.shape[-1] // patch[1])
            keep, _ = random_token_mask(x.shape[0], num_tokens, self.mask_ratio, generator)
            first = torch.arange(prefix, device=keep.device).expand(x.shape[0], prefix)
            kept.append(torch.cat([first, keep + prefix], dim=1))
        return kept

    def masked_anchor_outputs(
        self, views: list[Tensor], generator: torch.Generator
    ) -> list[Tensor]:
        """The projections (N, d) of views with dropped tokens: one call per view, or with
        ``joint_forward`` one per group of same-sized views (batch norm over the group)."""
        keeps = self.keep_indices(views, generator)

        def project(x: Tensor, keep: Tensor) -> Tensor:
            return self.projection_head(self.anchor_vit.encode(x, idx_keep=keep)[:, 0])

        if not self.joint_forward:
            return [project(x, keep) for x, keep in zip(views, keeps, strict=True)]
        out: list[Tensor] = []
        for size in dict.fromkeys(x.shape for x in views):
            group = [i for i, x in enumerate(views) if x.shape == size]
            joined = project(torch.cat([views[i] for i in group]),
                             torch.cat([keeps[i] for i in group]))  # fmt: skip
            out += joined.split([views[i].shape[0] for i in group])
        return out

    def training_loss(self, views: Views) -> Tensor:
        target_view, anchor_view = views.global_views
        generator = self.mask_generator()
        with torch.no_grad():
            targets = self.projection_head_target(
                self.backbone_target.forward_features(target_view)[:, 0]
            )
        if self.mask_local_views:
            anchors = self.masked_anchor_outputs([anchor_view, *views.local_views], generator)
        else:
            anchors = self.masked_anchor_outputs([anchor_view], generator)
            anchors += self.forward_views(
                lambda x: self.projection_head(self.feature_map(x)[:, 0]), views.local_views
            )
        self.monitor_embeddings(anchors[0])
        loss = partial(self.criterion, target_sharpen_temperature=self.target_sharpen_temperature)
        return self.float32_loss(loss, torch.cat(anchors), targets, self.prototypes)
