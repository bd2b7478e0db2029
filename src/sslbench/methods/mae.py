"""MAE: He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners"
(https://arxiv.org/abs/2111.06377); official code facebookresearch/mae (models_mae.py).

One view per image, cut into T patches (the ViT's patch embedding). A random 75% of each
image's patches is dropped, drawn per sample (:func:`sslbench.nn.masking.random_token_mask`,
from the step's :meth:`~sslbench.methods.base.SSLMethod.mask_generator`); the encoder, the
run's ViT (``self.backbone``, wrapped by lightly's ``MaskedVisionTransformerTIMM``, which
shares its parameters), sees only the kept patches and the class token. A light decoder
(lightly's ``MaskedVisionTransformerDecoderTIMM``, which replaces the ``MAEDecoderTIMM``
deprecated in lightly 1.6, between two linear layers; 8 blocks of width 512 in the paper) gets
the encoded tokens back in their places, a shared learnt mask token in every dropped place,
fixed 2-d sin-cos position embeddings on all, and a linear layer predicts each dropped
patch's pixels. Loss: the mean squared error over the dropped patches only.

Targets: the view's own patches. The views arrive ImageNet-normalised from the pipeline, as
the official code's inputs do (its targets are ``patchify(imgs)`` of the normalised images);
with ``norm_pix_loss`` (the paper's default, Table 1d "pixel (w/ norm)") each target patch is
further normalised by its own mean and variance over its pixels and channels.

Initialisation (the official ``initialize_weights``, done by lightly's wrapper): linear layers
and the patch embedding xavier-uniform, the class token N(0, 0.02), the encoder's position
embedding a fixed 2-d sin-cos table (``requires_grad`` False, as in the paper). The
exported backbone is the plain timm ViT with these weights.

Shapes, with N images of side S, patch side p, T = (S/p)² patches, K = T·(1 − mask_ratio)
kept: view (N, 3, S, S) → encoder tokens (N, 1 + K, D) → decoder tokens (N, 1 + T, D_dec) →
predictions (N, T − K, p²·3) against target patches (N, T − K, p²·3).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerTIMM
from lightly.models.modules.masked_vision_transformer_decoder_timm import (
    MaskedVisionTransformerDecoderTIMM,
)
from lightly.models.modules.masked_vision_transformer_timm import init_weights
from torch import Tensor, nn
from torch.nn import functional as F

from sslbench.methods.base import LEARNING_VIT_RUN, TEST_VIT, SSLMethod, Views
from sslbench.nn.masking import random_token_mask


def with_prefix(idx: Tensor, num_prefix_tokens: int) -> Tensor:
    """Patch-token indices (N, k) in [0, T) as indices of the ViT's token sequence, with the
    prefix (class) tokens' indices first: (N, num_prefix_tokens + k)."""
    prefix = torch.arange(num_prefix_tokens, device=idx.device).expand(idx.shape[0], -1)
    return torch.cat([prefix, idx + num_prefix_tokens], dim=1)


class MAE(SSLMethod):
    """Masked autoencoder on the run's ViT: lightly's masked-ViT encoder and ViT decoder,
    masks drawn per sample from the step's generator.

    Method keys (method/mae.yaml): mask_ratio, norm_pix_loss, decoder_dim, decoder_depth,
    decoder_num_heads, decoder_mlp_ratio.
    """

    lightly_transform = None
    num_global_views = 1
    #: The paper's augmentation (Table 1e, official main_pretrain.py): a random resized crop
    #: and a horizontal flip, then normalisation; the run's other ops are not applied.
    pipeline_ops = ("resized_crop", "hflip", "normalize")
    # The paper's linear probe reads the class token (appendix A; official main_linprobe.py:
    # global_pool False), as lightly's MAE benchmark's online classifier does.
    eval_pool = "cls"
    backbone_kinds = ("vit",)
    small_overrides = (
        *TEST_VIT,
        "method.decoder_dim=64", "method.decoder_depth=1", "method.decoder_num_heads=2",
    )  # fmt: skip
    # 3 epochs: a tenth of them warms up (40 of 800 in the paper would keep the lr near 0).
    learning_run_overrides = LEARNING_VIT_RUN

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        vit = self.backbone
        self.mask_ratio = float(method["mask_ratio"])
        self.norm_pix_loss = bool(method["norm_pix_loss"])
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        # MAE's initialisation of the ViT (see the module docstring).
        self.encoder = MaskedVisionTransformerTIMM(vit=vit)
        # The encoder never sees a mask token (dropped patches are left out): no parameter
        # that gets no gradient is left to the optimiser.
        self.encoder.mask_token.requires_grad_(False)
        decoder_dim = int(method["decoder_dim"])
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches,
            embed_dim=decoder_dim,
            depth=int(method["decoder_depth"]),
            num_heads=int(method["decoder_num_heads"]),
            num_prefix_tokens=self.num_prefix_tokens,
            mlp_ratio=float(method["decoder_mlp_ratio"]),
        )
        self.decoder_pred = nn.Linear(
            decoder_dim, self.patch_size**2 * vit.patch_embed.proj.in_channels
        )
        for layer in (self.decoder_embed, self.decoder_pred):
            init_weights(layer)  # the official code's: xavier-uniform weight, zero bias

    def draw_mask(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """(idx_keep (N, K), idx_mask (N, T − K)): each image's kept and dropped patches
        (indices in [0, T), no class token), from this step's mask generator."""
        num_patches = self.encoder.vit.patch_embed.num_patches
        return random_token_mask(batch_size, num_patches, self.mask_ratio, self.mask_generator())

    def reconstruct(
        self, images: Tensor, idx_keep: Tensor, idx_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(predicted pixels (N, T − K, p²·3) of the dropped patches, the encoder's tokens
        (N, 1 + K, D)) of views ``images`` with patches ``idx_keep`` kept."""
        keep = with_prefix(idx_keep, self.num_prefix_tokens)
        encoded = self.encoder.encode(images, idx_keep=keep)
        tokens = self.decoder_embed(encoded)
        full = utils.repeat_token(
            self.decoder.mask_token, (images.shape[0], self.decoder.sequence_length)
        )
        full = utils.set_at_index(full, keep, tokens.type_as(full))
        decoded = self.decoder(full)  # position embeddings, blocks, final norm
        masked = utils.get_at_index(decoded, idx_mask + self.num_prefix_tokens)
        return self.decoder_pred(masked), encoded

    def target_patches(self, images: Tensor, idx_mask: Tensor) -> Tensor:
        """The dropped patches' pixels (N, T − K, p²·3) of the (ImageNet-normalised) views,
        each normalised by its own mean and variance with ``norm_pix_loss``."""
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask)
        # the official code's per-patch normalisation (unbiased variance, eps 1e-6)
        return utils.normalize_mean_var(target) if self.norm_pix_loss else target

    def training_loss(self, views: Views) -> Tensor:
        images = views.global_views[0]
        idx_keep, idx_mask = self.draw_mask(images.shape[0])
        predicted, encoded = self.reconstruct(images, idx_keep, idx_mask)
        self.monitor_embeddings(encoded[:, 0])  # the class token of the kept patches
        return self.float32_loss(self._loss, predicted, images, idx_mask)

    def _loss(self, predicted: Tensor, images: Tensor, idx_mask: Tensor) -> Tensor:
        # the mean over the dropped patches (the official code's mask-weighted mean)
        return F.mse_loss(predicted, self.target_patches(images, idx_mask))
