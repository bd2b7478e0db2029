"""SimMIM: Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling"
(https://arxiv.org/abs/2111.09886); official code microsoft/SimMIM (models/simmim.py,
data/data_simmim.py).

One view per image. The image is cut into square blocks of ``mask_patch_size`` pixels
(32 in the paper, Sec. 3.1: "random masking with a moderately large masked patch size"),
and a random 60% of each image's blocks is masked, drawn per sample from the step's
:meth:`~sslbench.methods.base.SSLMethod.mask_generator`: the ViT's patch tokens inside a
masked block are replaced by one learnt mask token (lightly's ``MaskedVisionTransformerTIMM``
with ``mask=``, wrapping the run's ViT, ``self.backbone``, whose parameters it shares), and
the encoder sees every token. A one-layer prediction head (a linear layer from the token
dimension to p²·3, the paper's Table 3 default, the official 1×1 convolution) regresses each
patch's pixels. Loss: the L1 distance on the masked patches only (Sec. 3.3, Table 5), the
mean over their pixels and channels, as the official code's.

Targets: the view's own pixels, ImageNet-normalised by the pipeline, as the official code's
inputs and targets are (data_simmim.py normalises; models/simmim.py compares with them).

Shapes, with N images of side S, patch side p, T = (S/p)² patches, blocks of b = B/p patches
a side (mask_patch_size B): view (N, 3, S, S) → mask (N, T) (whole b×b blocks) → encoder
tokens (N, 1 + T, D) → predictions (N, T, p²·3), compared where masked with the target
patches (N, T, p²·3).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerTIMM
from torch import Tensor, nn

from sslbench.errors import ConfigError
from sslbench.methods.base import LEARNING_VIT_RUN, TEST_VIT, SSLMethod, Views
from sslbench.nn.masking import random_token_mask


def block_side(mask_patch_size: int | None, patch_size: int, grid: int) -> int:
    """The side of a mask block in patches: ``mask_patch_size`` pixels (None: one patch),
    which must be a whole number of the ViT's patches that tiles its ``grid`` of patches in
    two or more blocks (one block, the whole view, would leave nothing or all unmasked)."""
    pixels = patch_size if mask_patch_size is None else int(mask_patch_size)
    sides = [m for m in range(1, grid) if grid % m == 0] or [1]
    if pixels % patch_size or pixels // patch_size not in sides:
        valid = [patch_size * m for m in sides]
        raise ConfigError(
            f"method.mask_patch_size={mask_patch_size} px: a mask block must be a whole "
            f"number of the ViT's {patch_size}-px patches that tiles the "
            f"{grid * patch_size}-px view; valid: null (= {patch_size}), "
            f"{', '.join(map(str, valid))}"
        )
    return pixels // patch_size


def random_block_grid_mask(
    batch_size: int, grid: int, block: int, mask_ratio: float, generator: torch.Generator
) -> Tensor:
    """SimMIM's mask (N, grid²), True where masked: the grid of patches tiled by blocks of
    block × block patches, of which each sample masks the same count, a uniformly random
    subset: blocks − int(blocks · (1 − mask_ratio)) of them (the official MaskGenerator's
    ceil(blocks · mask_ratio)), row-major."""
    side = grid // block
    _, idx_mask = random_token_mask(batch_size, side * side, mask_ratio, generator)
    blocks = torch.zeros(batch_size, side * side, dtype=torch.bool, device=idx_mask.device)
    blocks.scatter_(1, idx_mask, True)
    patches = blocks.view(batch_size, side, side).repeat_interleave(block, dim=1)
    return patches.repeat_interleave(block, dim=2).flatten(1)


def masked_l1(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error of (N, T, P) predictions over the masked (N, T) patches only."""
    per_patch = (predicted - target).abs().mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


class SimMIM(SSLMethod):
    """SimMIM on the run's ViT: lightly's masked ViT (mask tokens in place), a linear
    prediction head, masks drawn per sample from the step's generator.

    Method keys (method/simmim.yaml): mask_ratio, mask_patch_size.
    """

    lightly_transform = None
    num_global_views = 1
    #: The paper's augmentation (Sec. 4.1, official SimMIMTransform): a random resized crop
    #: and a horizontal flip, then normalisation; the run's other ops are not applied.
    pipeline_ops = ("resized_crop", "hflip", "normalize")
    # The paper scores its ViT-B by fine-tuning, whose official config pools the patch
    # tokens (configs/vit_base__800ep/simmim_finetune: USE_MEAN_POOLING True); the loss
    # never reads the class token.
    eval_pool = "avg"
    backbone_kinds = ("vit",)
    small_overrides = TEST_VIT
    # 3 epochs: a tenth of them warms up (as 10 of 100 in the paper).
    learning_run_overrides = LEARNING_VIT_RUN

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        vit = self.backbone
        self.mask_ratio = float(method["mask_ratio"])
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.grid = int(vit.patch_embed.grid_size[0])
        self.block = block_side(method.get("mask_patch_size"), self.patch_size, self.grid)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        mask_token = nn.Parameter(torch.zeros(1, 1, vit.embed_dim))
        # the official VisionTransformerForSimMIM's init of its mask token
        nn.init.trunc_normal_(mask_token, std=0.02, a=-0.02, b=0.02)
        # timm's own initialisation of the ViT is kept (truncated normal, std 0.02, as the
        # official BEiT-style ViT), with a learnt absolute position embedding
        self.encoder = MaskedVisionTransformerTIMM(
            vit=vit, mask_token=mask_token, weight_initialization="skip",
            pos_embed_initialization="skip",
        )  # fmt: skip
        self.prediction_head = nn.Linear(
            vit.embed_dim, self.patch_size**2 * vit.patch_embed.proj.in_channels
        )

    def draw_mask(self, batch_size: int) -> Tensor:
        """This step's mask (N, T) of the patches, True in masked blocks."""
        return random_block_grid_mask(
            batch_size, self.grid, self.block, self.mask_ratio, self.mask_generator()
        )

    def predict(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(predicted pixels (N, T, p²·3) of every patch, patch tokens (N, T, D)) of views
        ``images`` with the patches of ``mask`` (N, T) replaced by the mask token."""
        prefix = mask.new_zeros(mask.shape[0], self.num_prefix_tokens)
        tokens = self.encoder.encode(images, mask=torch.cat([prefix, mask], dim=1))
        patch_tokens = tokens[:, self.num_prefix_tokens :]
        return self.prediction_head(patch_tokens), patch_tokens

    def training_loss(self, views: Views) -> Tensor:
        images = views.global_views[0]
        mask = self.draw_mask(images.shape[0])
        predicted, patch_tokens = self.predict(images, mask)
        self.monitor_embeddings(patch_tokens.mean(dim=1))  # what eval_pool "avg" reads
        return self.float32_loss(self._loss, predicted, images, mask)

    def _loss(self, predicted: Tensor, images: Tensor, mask: Tensor) -> Tensor:
        return masked_l1(predicted, utils.patchify(images, self.patch_size), mask.float())
