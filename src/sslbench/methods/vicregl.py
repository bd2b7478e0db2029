"""VICRegL: Bardes et al. 2022, "VICRegL: Self-Supervised Learning of Local Visual Features"
(https://arxiv.org/abs/2210.01571).

VICReg (variance, invariance, covariance) applied twice: globally on the pooled features of
every view, and locally on the backbone's feature map, where each cell of one view is matched
with cells of another view that are near it in the original image (location matching, from
the views' coordinate maps) or near it in feature space (feature matching). ``alpha`` weighs
the two: ``alpha * global + (1 - alpha) * local``.

Shapes, for a view batch (N, 3, S, S) and a backbone with feature map (N, C, h, w):
pooled features (N, C) → projection (N, output_dim); feature map permuted to (N, h, w, C) →
local projection (N, h, w, local_output_dim); coordinate map (N, 2, S, S) → location grid
(N, h, w, 2), the original-image position of each feature cell's centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import VICRegLLoss
from lightly.models.modules.heads import BarlowTwinsProjectionHead, VicRegLLocalProjectionHead
from torch import Tensor

from sslbench.errors import ConfigError
from sslbench.methods.base import SSLMethod, Views
from sslbench.nn.backbones import feature_map_shape

#: lightly's VICRegLLoss defaults (VICRegL's 20 / 4 matches at 7x7 / 3x3 feature maps).
MAX_MATCHES = (20, 4)

#: Feature cells that show mostly rotation fill have no place in the original picture. View v
#: puts them at (1 + v) * NOWHERE on both axes: at least NOWHERE from every real location
#: (within a few units of the origin) and from the fill cells of every other view, so the
#: location matching ranks every pair with a fill cell after every pair of real cells.
NOWHERE = 1.0e4


def location_grid(coords: Tensor, map_size: Sequence[int], view_index: int = 0) -> Tensor:
    """Original-image positions (N, h, w, 2) of the centres of an (h, w) feature map's cells,
    from a view's coordinate map (N, 2, S, S).

    The coordinate map of a crop is affine in the pixel position, so its average over a cell
    is its value at the cell's centre; a flip mirrors the map and so permutes the cells. After
    LoRot or a DCL shuffle a cell may hold pixels from several places: its location is their
    mean. Pixels that a rotation filled are NaN in the map and left out of the mean; a cell
    that is more than half fill is put at ``(1 + view_index) * NOWHERE``: one place per view,
    so that two views' fill cells are never near each other (at one common place they were
    at distance 0 and matched first).
    """
    h, w = int(map_size[0]), int(map_size[1])
    coords = coords.float()
    known = ~torch.isnan(coords[:, :1])
    total = F.adaptive_avg_pool2d(torch.nan_to_num(coords, nan=0.0), (h, w))
    share = F.adaptive_avg_pool2d(known.float(), (h, w))
    grid = torch.where(share >= 0.5, total / share.clamp_min(1e-6), (1 + view_index) * NOWHERE)
    return grid.permute(0, 2, 3, 1)


def derive_num_matches(
    global_map: Sequence[int], local_map: Sequence[int] | None
) -> tuple[int, int]:
    """lightly's ``num_matches`` for the real feature maps: (min(20, h*w), min(4, lh*lw)).

    The first number of matches selects cells of a global view, the second of the view it
    is compared with (a global or a local view), so neither may exceed that map's cell count:
    7x7 / 3x3 (224 / 96 px) gives lightly's (20, 4), 4x4 / 2x2 (128 / 64 px) the (16, 4) of
    lightly's Imagenette benchmark.
    """
    cells = int(global_map[0]) * int(global_map[1])
    local_cells = cells if local_map is None else int(local_map[0]) * int(local_map[1])
    return min(MAX_MATCHES[0], cells), min(MAX_MATCHES[1], local_cells)


class VICRegL(SSLMethod):
    """VICRegL with lightly's projection heads and VICRegLLoss.

    Method keys (method/vicregl.yaml): alpha, hidden_dim, output_dim, local_hidden_dim,
    local_output_dim, lambda_param, mu_param, nu_param, num_matches, gather_distributed,
    local_views.

    The backbone must expose timm's ``forward_features`` (a (N, C, h, w) map, as CNNs give)
    and ``forward_head(..., pre_logits=True)`` (pooled features).
    """

    lightly_transform = "VICRegLTransform"
    # its local loss matches cells of a (N, C, h, w) feature map (the paper: ConvNeXt, ResNet)
    backbone_kinds = ("cnn",)
    # Location grids need feature maps larger than 1x1: the small-image stem (stride 8) gives
    # 4x4 at 32 px and 2x2 for 16-px local crops.
    small_overrides = (
        "method.hidden_dim=64", "method.output_dim=64", "backbone.small_stem=true",
        "method.local_views.count=2",
    )  # fmt: skip
    # The small stem costs ~10x, hence fewer images.
    learning_run_overrides = (
        "epochs=2",
        "method.optimizer.warmup_epochs=0.3",
        "backbone.small_stem=true",
        "dataset.max_train=1000",
        "method.local_views.count=2",
        "method.local_views.size_ratio=0.5",
    )  # fmt: skip

    needs_coordinates = True

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        self.projection_head = BarlowTwinsProjectionHead(
            self.feature_dim, method["hidden_dim"], method["output_dim"]
        )
        self.local_projection_head = VicRegLLocalProjectionHead(
            self.feature_dim, method["local_hidden_dim"], method["local_output_dim"]
        )
        # Known before training, so that a too small map fails before any data is cached.
        self.global_map_size, self.local_map_size = self._feature_map_sizes()
        if method["num_matches"] is None:
            num_matches = derive_num_matches(self.global_map_size, self.local_map_size)
        else:
            num_matches = self._explicit_num_matches(method["num_matches"])
        self.criterion = VICRegLLoss(
            lambda_param=method["lambda_param"],
            mu_param=method["mu_param"],
            nu_param=method["nu_param"],
            alpha=method["alpha"],
            gather_distributed=method["gather_distributed"],
            num_matches=num_matches,
        )

    # -- construction checks ---------------------------------------------------------------
    @property
    def backbone_name(self) -> str:
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        return str(cfg.get("architecture") or type(self.backbone).__name__)

    def _feature_map_sizes(self) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """(h, w) of the backbone's feature map for the global and the local views."""
        sides = [("global", self.pipeline.size)]
        if self.local_pipeline is not None:
            sides.append(("local", self.local_pipeline.size))
        sizes = []
        for kind, side in sides:
            shape = feature_map_shape(self.backbone, side)
            if len(shape) != 3 or shape[0] != self.feature_dim:
                raise ConfigError(
                    f"VICRegL needs a (N, C, h, w) feature map from forward_features, but "
                    f"{self.backbone_name} gives shape {(1, *shape)}; use a CNN "
                    f"backbone such as resnet18"
                )
            h, w = shape[1:]
            if h * w < 2:
                raise ConfigError(
                    f"VICRegL needs feature maps larger than 1x1, but "
                    f"{self.backbone_name} gives {h}x{w} for the {side}-px {kind} views "
                    f"(image_size={self.pipeline.size}); use a larger image_size or "
                    f"backbone.small_stem=true"
                )
            sizes.append((int(h), int(w)))
        return sizes[0], (sizes[1] if len(sizes) > 1 else None)

    @staticmethod
    def _explicit_num_matches(value: Any) -> tuple[int, int]:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not all(isinstance(v, int) and v > 0 for v in value)
        ):
            raise ValueError(
                f"method.num_matches must be null or two positive integers "
                f"[global, local], got {value!r}"
            )
        return int(value[0]), int(value[1])

    # -- training ---------------------------------------------------------------------------
    def encode(self, views: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """(projection (N, output_dim), local projection (N, h, w, local_output_dim)) per
        view, each view on its own (lightly's benchmark, VICRegL's code) or, with
        ``method.joint_forward``, the views together."""
        n = views[0].shape[0]
        fmaps = self.forward_views(self.feature_map, views)  # (N, C, h, w) each
        fmap = torch.cat(fmaps)
        pooled = self.backbone.forward_head(fmap, pre_logits=True)  # (V*N, C)
        # The global head has batch norm: per view, or over all views like the backbone.
        z = torch.cat(self.forward_views(self.projection_head, list(pooled.split(n))))
        # The local head (Linear + LayerNorm) acts on each cell's C features.
        z_local = self.local_projection_head(fmap.permute(0, 2, 3, 1))
        return list(zip(z.split(n), z_local.split(n), strict=True))

    @staticmethod
    @torch.no_grad()
    def grids(
        coords: list[Tensor], features: list[tuple[Tensor, Tensor]], first_view: int = 0
    ) -> list[Tensor]:
        """Each view's location grid, at the cells of its local projection's (h, w) map;
        ``first_view`` numbers the views (global ones first) so each has its own fill place."""
        return [
            location_grid(c, z_local.shape[1:3], first_view + i)
            for i, (c, (_, z_local)) in enumerate(zip(coords, features, strict=True))
        ]

    def training_loss(self, views: Views) -> Tensor:
        assert views.global_coords is not None and views.local_coords is not None
        global_features = self.encode(views.global_views)
        global_grids = self.grids(views.global_coords, global_features)
        local_features = local_grids = None
        if views.local_views:
            local_features = self.encode(views.local_views)
            local_grids = self.grids(views.local_coords, local_features, len(global_grids))
        self.monitor_embeddings(global_features[0][0])
        # VICReg's variance and covariance terms are not bf16-safe: the loss runs in float32.
        return self.float32_loss(
            self.criterion, global_features, global_grids, local_features, local_grids
        )
