"""I-JEPA: Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding
Predictive Architecture" (https://arxiv.org/abs/2301.08243); settings of the official code
(facebookresearch/ijepa, configs/in1k_vith14_ep300.yaml).

From one context block of an image, a predictor predicts the representations of several
target blocks of the same image, in representation space, not pixels. A context encoder (the
ViT trained and evaluated, ``self.backbone``) sees only the context block's patches; a target
encoder, its EMA copy (:mod:`sslbench.methods.ema`, momentum 0.996 → 1), sees the whole image,
and its outputs at the target blocks' patches, layer-normed over the feature dimension, are
the targets. No augmentation besides a random resized crop; one view per image.

Masks (per image, from :meth:`~sslbench.methods.base.SSLMethod.mask_generator`, on the
device; :mod:`sslbench.nn.masking`): ``num_targets`` target blocks (area 15-20% of the
patch grid, aspect ratio 0.75-1.5) and one context block (85-100%, square) from which every
target block is removed. Each kind keeps the same number of patches in every image of the
batch (the smallest, the others trimmed at random: the official collator trims too). An image
whose context keeps fewer than ``min_keep`` patches keeps its whole context block, targets
included (the official collator relaxes the overlap constraint one block at a time instead).

Shapes, N images (N, 3, S, S), a grid of h × w = T patches, ViT width D, P prefix tokens (the
class token: timm's ViT has one, the official ViT none; it joins both encoders, which makes
the backbone evaluated the one trained): context indices (N, Kc), target indices
num_targets × (N, Kt); context encoder → (N, P + Kc, D), its patch tokens → predictor
(lightly's IJEPAPredictorTIMM, width ``predictor_dim``, ``predictor_depth`` blocks) →
predictions (num_targets · N, Kt, D), block-major as lightly's ``apply_masks`` gathers; target
encoder → (N, P + T, D) → patch tokens at the target indices (num_targets · N, Kt, D).
Loss: smooth L1 (the official code; ``loss: mse`` gives the paper's L2) between predictions
and layer-normed targets, averaged over every element.

Under DDP each process draws its own images' masks (its rank is in the generator's seed) and
trims them to its own smallest counts; its loss is the mean over its tokens, and DDP averages
the gradients: the global batch's step up to the per-process counts, as the official code's
(which all-reduces the loss for its logs only).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightly.models.modules import MaskedVisionTransformerTIMM
from lightly.models.modules.ijepa_timm import IJEPAPredictorTIMM
from lightly.models.utils import apply_masks
from torch import Tensor

from sslbench.errors import ConfigError
from sslbench.methods.base import LEARNING_VIT_RUN, TEST_VIT, Views
from sslbench.methods.ema import EMATargetMethod
from sslbench.nn.masking import indices_of, random_block_mask

#: Values of ``method.loss``: the official code's smooth L1, the paper's L2.
LOSSES: dict[str, Any] = {"smooth_l1": F.smooth_l1_loss, "mse": F.mse_loss}


class IJEPA(EMATargetMethod):
    """I-JEPA on a timm ViT: lightly's masked-ViT wrapper as the context encoder, its EMA
    copy as the target encoder, lightly's IJEPAPredictorTIMM as the predictor.

    ``self.backbone`` is the context encoder's ViT (the one evaluated); ``context_encoder``
    wraps it (the same parameters) to run it on the context patches only;
    ``backbone_target`` is the target encoder. The position embedding is a fixed 2-D sine-
    cosine one (the paper's; lightly's wrapper freezes it); other weights keep timm's init.

    Method keys (method/ijepa.yaml): num_targets, target_scale, target_aspect_ratio,
    context_scale, min_keep, predictor_depth, predictor_dim, loss, momentum, momentum_end.
    """

    lightly_transform = None
    #: The pipeline ops the paper applies: a random resized crop, nothing else.
    pipeline_ops: ClassVar[tuple[str, ...]] = ("resized_crop", "normalize")
    num_global_views = 1
    # The paper evaluates the average of the output patch tokens (of its target encoder;
    # sslbench evaluates self.backbone, the context encoder); the official ViT has no class token
    eval_pool = "avg"
    backbone_kinds = ("vit",)
    small_overrides = (
        *TEST_VIT,
        "method.predictor_depth=1", "method.predictor_dim=48",
    )  # fmt: skip
    # 3 epochs with a tenth of them warming up (40 of 300 in the official config)
    learning_run_overrides = LEARNING_VIT_RUN

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.num_targets = int(method["num_targets"])
        self.target_scale = tuple(float(s) for s in method["target_scale"])
        self.target_aspect_ratio = tuple(float(a) for a in method["target_aspect_ratio"])
        self.context_scale = tuple(float(s) for s in method["context_scale"])
        self.min_keep = int(method["min_keep"])
        if method["loss"] not in LOSSES:
            raise ConfigError(f"unknown method.loss '{method['loss']}'; valid: {', '.join(LOSSES)}")
        self.distance = LOSSES[method["loss"]]
        vit = self.backbone
        self.grid: tuple[int, int] = tuple(vit.patch_embed.grid_size)
        self.prefix = int(vit.num_prefix_tokens)
        # timm's init kept (trunc. normal, std 0.02: the official code's); the position
        # embedding becomes the paper's fixed sine-cosine one. The wrapper's mask token is
        # unused (the context is selected, not masked): frozen, out of the optimiser.
        self.context_encoder = MaskedVisionTransformerTIMM(
            vit=vit, weight_initialization="skip", pos_embed_initialization="sincos"
        )
        self.context_encoder.mask_token.requires_grad_(False)
        self.backbone_target = self.add_target("backbone")
        heads = int(vit.blocks[0].attn.num_heads)  # the official predictor: the encoder's
        dim = int(method["predictor_dim"])
        if dim % heads:
            raise ConfigError(
                f"method.predictor_dim={dim} must be a multiple of the backbone's {heads} "
                "attention heads (the predictor has as many)"
            )
        self.predictor = IJEPAPredictorTIMM(
            num_patches=self.grid[0] * self.grid[1],
            depth=int(method["predictor_depth"]),
            mlp_dim=int(vit.embed_dim),
            predictor_embed_dim=dim,
            num_heads=heads,
        )

    def masks(self, batch_size: int) -> tuple[Tensor, list[Tensor]]:
        """This step's context indices (N, Kc) and ``num_targets`` target indices (N, Kt),
        patch indices in [0, T) drawn per image on the device (two host syncs: the counts)."""
        generator = self.mask_generator()
        targets = torch.stack([
            random_block_mask(
                batch_size, self.grid, self.target_scale, self.target_aspect_ratio, generator
            ).flatten(1)
            for _ in range(self.num_targets)
        ])  # fmt: skip
        block = random_block_mask(
            batch_size, self.grid, self.context_scale, (1.0, 1.0), generator
        ).flatten(1)
        context = block & ~targets.any(dim=0)
        enough = context.sum(dim=1, keepdim=True) >= self.min_keep
        context = torch.where(enough, context, block)
        # one count for all target blocks: the predictor's blocks are batched together
        target_idx = indices_of(targets.flatten(0, 1), generator).chunk(self.num_targets)
        return indices_of(context, generator), list(target_idx)

    def training_loss(self, views: Views) -> Tensor:
        images = views.global_views[0]
        context_idx, target_idx = self.masks(images.shape[0])
        with torch.no_grad():
            tokens = self.backbone_target.forward_features(images)[:, self.prefix :]
            targets = apply_masks(tokens, target_idx)  # (num_targets · N, Kt, D)
        prefix = torch.arange(self.prefix, device=images.device).expand(images.shape[0], -1)
        keep = torch.cat([prefix, context_idx + self.prefix], dim=1)
        context = self.context_encoder.encode(images, idx_keep=keep)[:, self.prefix :]
        self.monitor_embeddings(context.mean(dim=1))
        predictions = self.predictor(context, context_idx, target_idx)
        return self.float32_loss(self._loss, predictions, targets)

    def _loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        targets = F.layer_norm(targets, (targets.shape[-1],))  # official: over features
        return self.distance(predictions, targets)
