"""DCL: Chen et al. 2019, "Destruction and Construction Learning for Fine-grained Image
Recognition" (CVPR, https://openaccess.thecvf.com/content_CVPR_2019/html/Chen_Destruction_and_Construction_Learning_for_Fine-Grained_Image_Recognition_CVPR_2019_paper.html;
code JDAI-CV/DCL).

The transform's ``region_confusion`` op shuffles an N × N grid of patches of each view
(destruction). DCL trains on each destructed image beside its original; here the original
is the first global view with its shuffle undone (the inverse permutation of its patches:
exactly the view without the op, since only pointwise ops may follow it), one more
backbone forward per step. Two heads learn from every shuffled view and that original:

- adversarial: a linear layer on the pooled features tells shuffled from original
  (2 classes; cross-entropy with both classes weighted equally, as DCL's batches hold as
  many originals as destructed images);
- construction, the paper's region alignment network: a 1 × 1 convolution of the feature
  map to 2 channels (row, column), average-pooled to N × N, tanh; L1 to the original row
  and column of the patch each cell shows, scaled to [-1, 1] (DCL's code regresses one
  flat index with tanh on centred targets; the paper two coordinates).

Shapes: feature maps (N, C, h, w) → pooled (N, C) → logits (N, 2); feature map → (N, 2, h, w)
→ pooled (N, 2, N_g, N_g) → positions (N, 2, N_g²) against permutation (N, N_g²).

Example::

    sslbench pretrain method=simclr transform=dcl pretext=dcl
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.nn.backbones import feature_map_shape
from sslbench.pretext.base import PretextInputs, PretextTask, class_balanced_mean, single_value
from sslbench.transforms.geometric import shuffle_patches

log = logging.getLogger(__name__)


def unshuffle(views: Tensor, permutation: Tensor, grid: int) -> Tensor:
    """Undo ``shuffle_patches(x, permutation, grid)``: its inverse permutation of the patches."""
    return shuffle_patches(views, torch.argsort(permutation, dim=1), grid)


def patch_positions(permutation: Tensor, grid: int) -> Tensor:
    """(N, 2, grid²): the original (row, column) of the patch each cell shows, scaled to
    [-1, 1] (cell centres: (2i + 1) / grid - 1)."""
    rows, cols = permutation // grid, permutation % grid
    return (2.0 * torch.stack((rows, cols), dim=1).float() + 1.0) / grid - 1.0


class DCL(PretextTask):
    """DCL's adversarial and construction heads. Pretext keys (pretext/dcl.yaml): weight,
    adversarial_weight, construction_weight."""

    accuracy_means = "shuffled vs original, class-balanced (chance 0.5)"
    chance = 0.5

    def __init__(
        self,
        cfg: dict[str, Any],
        *,
        op_params: Any,
        feature_dim: int,
        backbone: nn.Module,
        view_size: int,
    ) -> None:
        super().__init__(
            cfg, op_params=op_params, feature_dim=feature_dim, backbone=backbone,
            view_size=view_size,
        )  # fmt: skip
        self.grid = int(single_value("region_confusion", "grid", op_params))
        self.adversarial_weight = float(cfg["adversarial_weight"])
        self.construction_weight = float(cfg["construction_weight"])
        self.adversarial_head = nn.Linear(feature_dim, 2)
        self.alignment = nn.Conv2d(feature_dim, 2, kernel_size=1)  # region alignment network
        shape = feature_map_shape(backbone, view_size, spatial=True)
        if len(shape) != 3:
            raise ValueError(
                f"pretext=dcl regresses patch positions from a (C, h, w) feature map; the "
                f"backbone gives {shape} per image: use a CNN such as resnet18 or a ViT"
            )
        h, w = shape[1:]
        if min(h, w) < self.grid:
            log.warning(
                "pretext=dcl: the %dx%d feature map of %d-px views is coarser than the %dx%d "
                "grid, so the construction head cannot place every patch; a larger image_size, "
                "backbone.small_stem=true or a smaller transform.ops.region_confusion.grid helps",
                h, w, view_size, self.grid, self.grid,
            )  # fmt: skip

    def forward(self, inputs: PretextInputs) -> tuple[Tensor, dict[str, Tensor]]:
        g = self.grid
        original = unshuffle(inputs.views[0], inputs.labels[0], g)
        cells = torch.arange(g * g, device=original.device)
        maps = [*inputs.feature_maps, inputs.encode(original)]
        permutation = torch.cat([*inputs.labels, cells.expand(original.shape[0], -1)])  # (M, g²)

        shuffled = (permutation != cells).any(dim=1)
        target = shuffled.long()  # 1: shuffled, 0: original
        logits = self.adversarial_head(torch.cat([inputs.pool(m) for m in maps])).float()
        adversarial = class_balanced_mean(
            F.cross_entropy(logits, target, reduction="none"), target, 2
        )
        accuracy = class_balanced_mean((logits.argmax(dim=1) == target).float(), target, 2)

        cells = [F.adaptive_avg_pool2d(self.alignment(inputs.spatial(m)).float(), (g, g))
                 for m in maps]  # fmt: skip
        predicted = torch.tanh(torch.cat(cells)).flatten(2)  # (M, 2, g²)
        error = (predicted - patch_positions(permutation, g)).abs()
        construction = error.mean()
        loss = self.adversarial_weight * adversarial + self.construction_weight * construction
        return loss, {
            "accuracy": accuracy.detach(),
            "loss": loss.detach(),
            "adversarial_loss": adversarial.detach(),
            "construction_loss": construction.detach(),
            "position_error": construction.detach() * g / 2,  # in cells
        }
