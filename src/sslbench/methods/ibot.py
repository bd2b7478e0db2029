"""iBOT: Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"
(https://arxiv.org/abs/2111.07832), on a ViT.

DINO (:mod:`sslbench.methods.dino`, which this extends) plus masked image modelling with an
online tokenizer: the student sees its two global views with some patches replaced by a
learnable mask token, and learns to give, at each masked patch, the distribution that the
teacher (the EMA of the student) gives for that patch of the unmasked view. The [CLS]
outputs are trained as in DINO, across views (teacher: the 2 global views; student: the
masked global views and the local views). One DINO head serves the [CLS] token and the patch
tokens (the paper's shared head, ``shared_head``).

Masks (:func:`ibot_masks`): each global view of each image is masked with probability 0.5,
then with a prediction ratio r drawn from U(0.1, 0.5) (official code: ``--pred_ratio 0 0.3
--pred_ratio_var 0 0.2``), by BEiT's block-wise rule (official ``loader.ImageFolderMask``):
rectangles of at least (min(h, w) // 3)² patches and of aspect ratio log-uniform in
(0.3, 1/0.3) are added while the masked count stays within r·h·w. Approximation: BEiT draws
blocks one image at a time until r·h·w is reached or 10 tries of one block fail; here every
image of the batch draws ``mask_attempts`` blocks together (each one rectangle per image of
sslbench.nn.masking.random_block_mask, of area up to the image's remaining budget) and keeps
those that fit, on the device, from the step's mask generator: on average 98.7% of r·h·w at
14×14 patches with 10 tries, never more than r·h·w (as BEiT).

Shapes, with 2 global views (N, 3, S, S) of h×w = T patches and L local views: tokens
(N, 1 + T, D) per global view (student: masked, teacher: not) → [CLS] (N, D) → head → (N, K);
patch tokens at the M masked positions of both views (M, D) → head → (M, K) → lightly's
IBOTPatchLoss (per image, the mean over its masked patches of H(softmax((t − c₂)/τt),
softmax(s/τs)), averaged over the 2N view-images, 0 for an unmasked one); [CLS] outputs
teacher 2 × (N, K), student (2 + L) × (N, K) → lightly's DINOLoss. Loss: λ₁·cls + λ₂·patch.

Under DDP: masks are drawn per process (the generator is seeded with the rank), so a DDP
step is not the whole batch's step with the same masks; both centres are all-reduced
(lightly's Center). lightly's patch centre is the mean teacher output over the masked
patches (DINOv2's); the official code's is over all patches.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightly.loss import IBOTPatchLoss
from lightly.models.modules import MaskedVisionTransformerTIMM
from lightly.models.modules.heads import DINOProjectionHead
from torch import Tensor

from sslbench.methods.base import LEARNING_VIT, TEST_VIT, Views
from sslbench.methods.dino import DINO
from sslbench.nn.masking import random_block_mask


def prediction_ratios(
    count: int, generator: torch.Generator, probability: float, ratio: tuple[float, float]
) -> Tensor:
    """Each image's prediction ratio (count,): U(ratio) with ``probability``, else 0 (no
    patch masked), on the generator's device."""
    draw = torch.rand(2, count, generator=generator, device=generator.device)
    drawn = ratio[0] + (ratio[1] - ratio[0]) * draw[0]
    return torch.where(draw[1] < probability, drawn, torch.zeros_like(drawn))


def block_masks(
    ratios: Tensor,
    grid: tuple[int, int],
    generator: torch.Generator,
    aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 10,
) -> Tensor:
    """BEiT's block-wise masks (N, h, w), True where masked, about ``ratios`` (N,) of each
    image's patches (never more): ``attempts`` rounds, each drawing one rectangle per image
    of area between (min(h, w) // 3)² patches and what the image may still mask, kept where
    it masks new patches without passing the image's budget. No host sync."""
    height, width = grid
    total = height * width
    smallest = max(1, (min(height, width) // 3) ** 2) / total  # BEiT's min_num_patches
    budget = ratios.float() * total
    mask = torch.zeros(ratios.shape[0], height, width, dtype=torch.bool, device=ratios.device)
    count = torch.zeros_like(budget)
    for _ in range(attempts):
        remaining = budget - count
        largest = remaining.clamp(min=0.0) / total
        # per-image area bounds
        scale = (torch.minimum(largest, torch.full_like(largest, smallest)), largest)
        block = random_block_mask(ratios.shape[0], grid, scale, aspect_ratio, generator)
        new = (block & ~mask).flatten(1).sum(dim=1).float()
        keep = (new > 0) & (new <= remaining)
        mask |= block & keep.view(-1, 1, 1)
        count = count + new * keep
    return mask


def ibot_masks(
    count: int,
    grid: tuple[int, int],
    generator: torch.Generator,
    *,
    probability: float,
    ratio: tuple[float, float],
    aspect_ratio: tuple[float, float],
    attempts: int,
) -> Tensor:
    """iBOT's masks (count, h, w) of ``count`` view-images: :func:`prediction_ratios` then
    :func:`block_masks`. If none of them masks a patch (likely only for tiny batches), the
    first image's first patch is masked, so that the patch loss and its centre are defined."""
    ratios = prediction_ratios(count, generator, probability, ratio)
    mask = block_masks(ratios, grid, generator, aspect_ratio, attempts)
    mask[0, 0, 0] = mask[0, 0, 0] | ~mask.any()  # on the device: no host sync
    return mask


def teacher_temperature(epoch: int, start: float, end: float, warmup_epochs: int) -> float:
    """The teacher temperature at ``epoch``: linear from ``start`` to ``end`` over the first
    ``warmup_epochs`` epochs (np.linspace, as DINOLoss and iBOT's code), then ``end``."""
    if epoch >= warmup_epochs:
        return end
    return start + (end - start) * epoch / max(1, warmup_epochs - 1)


class IBOT(DINO):
    """iBOT: DINO's student, teacher, head and [CLS] loss (inherited), the student's ViT
    wrapped in lightly's MaskedVisionTransformerTIMM (sharing its parameters, plus a mask
    token starting at 0 as in the official code), and lightly's IBOTPatchLoss.

    Method keys (method/ibot.yaml): DINO's, and shared_head, patch_output_dim (the patch
    head's when not shared), warmup_teacher_patch_temp, teacher_patch_temp,
    patch_center_momentum, cls_loss_weight, patch_loss_weight, mask_probability, mask_ratio,
    mask_aspect_ratio, mask_attempts.
    """

    lightly_transform = "IBOTTransform"
    small_overrides = (
        *TEST_VIT, "method.hidden_dim=64",
        "method.bottleneck_dim=32", "method.output_dim=64", "method.patch_output_dim=64",
        "method.local_views.count=2", "method.local_views.size_ratio=0.5",
    )  # fmt: skip
    # Local crops of half the side (the patches must tile them), two of them, narrower heads
    # and a warm-up of a tenth of the run (10 of 100 epochs in the paper): minutes on a CPU.
    learning_run_overrides = (
        "epochs=3", *LEARNING_VIT,
        "method.local_views.count=2", "method.local_views.size_ratio=0.5",
        "method.output_dim=1024", "method.optimizer.warmup_epochs=0.3",
    )  # fmt: skip
    eval_pool = "cls"
    backbone_kinds = ("vit",)

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        # Parameters shared with self.backbone (the one evaluated), which stays timm's ViT
        # as built: lightly's MAE initialisation and sin-cos position embedding are skipped.
        self.student_vit = MaskedVisionTransformerTIMM(
            vit=self.backbone, weight_initialization="skip", pos_embed_initialization="skip"
        )
        self.shared_head = bool(method["shared_head"])
        patch_dim = int(method["output_dim" if self.shared_head else "patch_output_dim"])
        if not self.shared_head:
            with torch.no_grad():  # weight_norm: see DINO.__init__
                self.patch_head = DINOProjectionHead(
                    input_dim=self.feature_dim,
                    hidden_dim=method["hidden_dim"],
                    bottleneck_dim=method["bottleneck_dim"],
                    output_dim=patch_dim,
                    batch_norm=method["batch_norm"],
                    norm_last_layer=method["norm_last_layer"],
                    freeze_last_layer=int(method.get("freeze_last_layer", -1)),
                )
            self.patch_head_target = self.add_target("patch_head")
        self.patch_criterion = IBOTPatchLoss(
            output_dim=patch_dim,
            teacher_temp=method["teacher_patch_temp"],
            student_temp=method["student_temp"],
            center_momentum=method["patch_center_momentum"],
        )
        self.cls_loss_weight = float(method["cls_loss_weight"])
        self.patch_loss_weight = float(method["patch_loss_weight"])
        self.mask_args: dict[str, Any] = {
            "probability": float(method["mask_probability"]),
            "ratio": tuple(float(r) for r in method["mask_ratio"]),
            "aspect_ratio": tuple(float(a) for a in method["mask_aspect_ratio"]),
            "attempts": int(method["mask_attempts"]),
        }

    def on_after_backward(self) -> None:
        super().on_after_backward()
        if not self.shared_head:
            self.patch_head.cancel_last_layer_gradients(self.current_epoch)

    def student_patch_head(self) -> DINOProjectionHead:
        """The student's head of the patch tokens: the [CLS] one with ``shared_head``."""
        return self.projection_head if self.shared_head else self.patch_head

    def teacher_patch_head(self) -> DINOProjectionHead:
        """The teacher's head of the patch tokens (the EMA of the student's)."""
        return self.projection_head_target if self.shared_head else self.patch_head_target

    def global_view_masks(self, views: Views) -> list[Tensor]:
        """One (N, h, w) patch mask per global view, drawn from the step's mask generator."""
        first = views.global_views[0]
        patch = self.backbone.patch_embed.patch_size
        grid = (first.shape[-2] // patch[0], first.shape[-1] // patch[1])
        count = len(views.global_views) * first.shape[0]
        masks = ibot_masks(count, grid, self.mask_generator(), **self.mask_args)
        return list(masks.split(first.shape[0]))

    def patch_outputs(
        self, head: DINOProjectionHead, tokens: list[Tensor], masks: list[Tensor]
    ) -> Tensor:
        """``head`` of the patch tokens at the masked positions of every global view: (M, K),
        view by view, image by image (the order of ``torch.cat(masks)[mask]``)."""
        prefix = self.backbone.num_prefix_tokens
        patches = [t[:, prefix:][m.flatten(1)] for t, m in zip(tokens, masks, strict=True)]
        return head(torch.cat(patches))

    def student_global_tokens(self, views: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        """The student's tokens (N, 1 + T, D) of each masked global view (one call per view,
        or with ``joint_forward`` one for all)."""
        prefix = self.backbone.num_prefix_tokens
        token_masks = [
            torch.cat([m.new_zeros(m.shape[0], prefix), m.flatten(1)], dim=1) for m in masks
        ]
        if not self.joint_forward:
            return [
                self.student_vit.encode(x, mask=m) for x, m in zip(views, token_masks, strict=True)
            ]
        tokens = self.student_vit.encode(torch.cat(views), mask=torch.cat(token_masks))
        return list(tokens.split([x.shape[0] for x in views]))

    def training_loss(self, views: Views) -> Tensor:
        masks = self.global_view_masks(views)
        with torch.no_grad():
            teacher_tokens = self.forward_views(
                self.backbone_target.forward_features, views.global_views
            )
            teacher_cls = [self.projection_head_target(t[:, 0]) for t in teacher_tokens]
            teacher_patch = self.patch_outputs(self.teacher_patch_head(), teacher_tokens, masks)
        student_tokens = self.student_global_tokens(views.global_views, masks)
        student_cls = [self.projection_head(t[:, 0]) for t in student_tokens]
        student_cls += self.forward_views(
            lambda x: self.projection_head(self.feature_map(x)[:, 0]), views.local_views
        )
        student_patch = self.patch_outputs(self.student_patch_head(), student_tokens, masks)
        self.monitor_embeddings(student_cls[0])
        cls_loss = self.float32_loss(
            partial(self.criterion, epoch=self.current_epoch), teacher_cls, student_cls
        )
        method = self.method_cfg
        patch_temp = teacher_temperature(
            self.current_epoch, float(method["warmup_teacher_patch_temp"]),
            float(method["teacher_patch_temp"]), int(method["warmup_teacher_temp_epochs"]),
        )  # fmt: skip
        patch_loss = self.float32_loss(
            partial(self.patch_criterion, teacher_temp=patch_temp),
            teacher_patch, student_patch, torch.cat(masks),
        )  # fmt: skip
        if self._trainer is not None:  # unit tests call this without a Trainer
            n = views.global_views[0].shape[0]
            self.log("cls_loss", cls_loss, on_step=False, on_epoch=True, batch_size=n)
            self.log("patch_loss", patch_loss, on_step=False, on_epoch=True, batch_size=n)
        return self.cls_loss_weight * cls_loss + self.patch_loss_weight * patch_loss
