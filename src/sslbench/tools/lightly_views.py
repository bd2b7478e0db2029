"""lightly's per-image transforms at a run's settings: the reference data path.

lightly's benchmarks (the study's code) make each image's views with a lightly transform on
a PIL image inside DataLoader workers. ``sslbench bench`` (its ``lightly`` row) and
``benchmarks/lightly_reference.py`` feed the same cached images through those transforms,
set to the run's pipeline where lightly has an equal one. Each method class names its
transform (``SSLMethod.lightly_transform``), one of :data:`TRANSFORMS`:

- ``"pipeline"`` (two-view methods): ``SimCLRTransform`` for the ``simclr`` pipeline,
  ``BYOLTransform`` (its two asymmetric views) for ``byol``;
- ``"SwaVTransform"`` (global and local crops); ``"DINOTransform"`` (BYOL's two asymmetric
  global views and local crops); ``"FastSiamTransform"`` (four SimCLR-style views);
  ``"SMoGTransform"`` (SMoG's two asymmetric views, BYOL-style); ``"VICRegLTransform"``
  (crops and their location grids); ``"IBOTTransform"`` (DINO's views); ``"MSNTransform"``
  (SimCLR-style random and focal views).

Other pipelines (baseline, LoRot, DCL, ...), a method whose class names None (lightly has
none) and a name not in :data:`TRANSFORMS` are each a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightly.transforms import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
    DINOTransform,
    FastSiamTransform,
    IBOTTransform,
    MSNTransform,
    SimCLRTransform,
    SMoGTransform,
    SwaVTransform,
    VICRegLTransform,
)
from lightly.transforms.utils import IMAGENET_NORMALIZE
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslbench.methods import method_class
from sslbench.methods.base import Views
from sslbench.nn.backbones import feature_map_shape

#: Pipelines with an equal lightly transform (for the two-view methods).
LIGHTLY_PIPELINES = ("simclr", "byol")

#: The run's pipeline that a multi-view lightly transform's views are made of.
PIPELINE_OF_TRANSFORM = {
    "DINOTransform": "byol", "FastSiamTransform": "simclr", "SMoGTransform": "byol",
    "IBOTTransform": "byol", "MSNTransform": "simclr",
}  # fmt: skip

#: A lightly transform: one PIL image in, its views (and, for VICRegL, their grids) out.
ImageTransform = Callable[[Image.Image], list[Tensor]]


class PILViews(Dataset):
    """Items ``indices`` of a cached uint8 split (N, 3, S, S), each turned into a PIL image
    and then into views by a lightly transform: ``(list of views, label)``."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, transform: ImageTransform
    ) -> None:
        self.images, self.labels, self.indices = images, labels, indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[list[Tensor], int]:
        j = self.indices[i]
        image = Image.fromarray(np.ascontiguousarray(self.images[j].transpose(1, 2, 0)), "RGB")
        return self.transform(image), int(self.labels[j])


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"lightly's transforms cannot match this pipeline: {message}")


def simclr_view_parameters(cfg: DictConfig) -> dict[str, Any]:
    """lightly transform keywords equal to the run's SimCLR-style ops (crop, flip, colour
    jitter, greyscale, blur, normalisation)."""
    ops = cfg.transform.ops
    crop, jitter, blur = ops.resized_crop, ops.color_jitter, ops.gaussian_blur
    _require(crop.scale[1] == 1.0, f"largest crop scale {crop.scale[1]} (lightly: 1)")
    _require(
        abs(crop.ratio[0] - 0.75) < 1e-6 and abs(crop.ratio[1] - 4 / 3) < 1e-6,
        f"crop ratio {list(crop.ratio)} (lightly: [3/4, 4/3])",
    )
    _require(list(ops.normalize.mean) == IMAGENET_NORMALIZE["mean"], "not ImageNet's mean")
    return {
        "hf_prob": ops.hflip.p,
        "cj_prob": jitter.p,
        "cj_strength": 1.0,
        "cj_bright": jitter.brightness,
        "cj_contrast": jitter.contrast,
        "cj_sat": jitter.saturation,
        "cj_hue": jitter.hue,
        "random_gray_scale": ops.grayscale.p,
        # sslbench skips the blur on images of skip_at_or_below px or less (SimCLR's 32)
        "gaussian_blur": 0.0 if cfg.image_size <= blur.skip_at_or_below else blur.p,
        "sigmas": tuple(blur.sigma),
        "normalize": IMAGENET_NORMALIZE,
    }


def flip_and_colour(view: dict[str, Any]) -> dict[str, Any]:
    """The flip, colour jitter and greyscale keywords of :func:`simclr_view_parameters`, as
    the multi-crop transforms (DINO's, VICRegL's) take them."""
    keys = ("hf_prob", "cj_prob", "cj_strength", "cj_bright", "cj_contrast", "cj_sat",
            "cj_hue", "random_gray_scale")  # fmt: skip
    return {key: view[key] for key in keys}


def local_side(cfg: DictConfig) -> int:
    """sslbench's local crop side: round(image_size * size_ratio) (SwAV: 14, VICRegL: 16)."""
    return max(1, round(cfg.image_size * float(cfg.method.local_views.size_ratio)))


def two_view_transform(cfg: DictConfig) -> ImageTransform:
    """The lightly transform equal to the run's two-view pipeline (simclr or byol)."""
    name = cfg.transform.name
    if name == "simclr":
        return SimCLRTransform(
            input_size=cfg.image_size,
            min_scale=cfg.transform.ops.resized_crop.scale[0],
            **simclr_view_parameters(cfg),
        )
    if name == "byol":
        view = simclr_view_parameters(cfg)
        common = {k: v for k, v in view.items() if k != "gaussian_blur"}
        common.update(input_size=cfg.image_size, min_scale=cfg.transform.ops.resized_crop.scale[0])
        skip = cfg.image_size <= cfg.transform.ops.gaussian_blur.skip_at_or_below
        return BYOLTransform(
            view_1_transform=BYOLView1Transform(
                **common, gaussian_blur=0.0 if skip else 1.0, solarization_prob=0.0
            ),
            view_2_transform=BYOLView2Transform(
                **common, gaussian_blur=0.0 if skip else 0.1, solarization_prob=0.2
            ),
        )
    raise ValueError(
        f"lightly has no transform equal to pipeline '{name}'; "
        f"valid: {', '.join(LIGHTLY_PIPELINES)}"
    )


def swav_transform(cfg: DictConfig) -> ImageTransform:
    """lightly's multi-crop transform at the run's global and local crop settings."""
    local = cfg.method.local_views
    return SwaVTransform(
        crop_sizes=(cfg.image_size, local_side(cfg)),
        crop_counts=(2, local.count),
        crop_min_scales=(cfg.transform.ops.resized_crop.scale[0], local.scale[0]),
        crop_max_scales=(1.0, local.scale[1]),
        **simclr_view_parameters(cfg),
    )


def dino_transform(cfg: DictConfig) -> ImageTransform:
    """lightly's DINO transform at the run's settings: its two global views are BYOL's
    (blur 1.0 / 0.1, solarisation on the second), so the run's pipeline must be ``byol``;
    local crops as the method's ``local_views`` (lightly blurs them with p 0.5)."""
    name, own = cfg.transform.name, PIPELINE_OF_TRANSFORM["DINOTransform"]
    _require(name == own, f"DINO's global views are {own}'s, not pipeline '{name}'")
    skip = cfg.image_size <= cfg.transform.ops.gaussian_blur.skip_at_or_below
    return dino_crops_transform(cfg, (0.0, 0.0, 0.0) if skip else (1.0, 0.1, 0.5), 0.2)


def dino_crops_transform(
    cfg: DictConfig,
    gaussian_blur: tuple[float, float, float],
    solarization_prob: float,
    transform: type[DINOTransform] | type[IBOTTransform] = DINOTransform,
) -> ImageTransform:
    """lightly's DINOTransform (or iBOT's, which takes its arguments) with the run's crops,
    flips and colour, and the given blur probabilities (global view 1, global view 2, local
    crops) and solarisation."""
    view = simclr_view_parameters(cfg)
    local = cfg.method.local_views
    return transform(
        global_crop_size=cfg.image_size,
        global_crop_scale=(cfg.transform.ops.resized_crop.scale[0], 1.0),
        local_crop_size=local_side(cfg),
        local_crop_scale=tuple(local.scale),
        n_local_views=local.count,
        **flip_and_colour(view),
        gaussian_blur=gaussian_blur,
        sigmas=view["sigmas"],
        solarization_prob=solarization_prob,
        normalize=view["normalize"],
    )


def ibot_transform(cfg: DictConfig) -> ImageTransform:
    """lightly's iBOT transform at the run's settings: DINO's views (BYOL's two global views,
    local crops as the method's ``local_views``), so the run's pipeline must be ``byol``."""
    name, own = cfg.transform.name, PIPELINE_OF_TRANSFORM["IBOTTransform"]
    _require(name == own, f"iBOT's global views are {own}'s, not pipeline '{name}'")
    skip = cfg.image_size <= cfg.transform.ops.gaussian_blur.skip_at_or_below
    return dino_crops_transform(cfg, (0.0, 0.0, 0.0) if skip else (1.0, 0.1, 0.5), 0.2,
                                IBOTTransform)  # fmt: skip


def msn_transform(cfg: DictConfig) -> ImageTransform:
    """lightly's MSN transform: its random views (target and anchor) and focal views all
    SimCLR-style with the run's ops; the focal views as the method's ``local_views``."""
    name, own = cfg.transform.name, PIPELINE_OF_TRANSFORM["MSNTransform"]
    _require(name == own, f"MSN's views are {own}'s, not pipeline '{name}'")
    view = simclr_view_parameters(cfg)
    local = cfg.method.local_views
    return MSNTransform(
        random_size=cfg.image_size,
        focal_size=local_side(cfg),
        random_views=method_class(cfg.method.name).num_global_views,
        focal_views=local.count,
        random_crop_scale=(cfg.transform.ops.resized_crop.scale[0], 1.0),
        focal_crop_scale=tuple(local.scale),
        **flip_and_colour(view),
        gaussian_blur=view["gaussian_blur"],
        sigmas=view["sigmas"],
        normalize=view["normalize"],
    )


def fastsiam_transform(cfg: DictConfig) -> ImageTransform:
    """lightly's FastSiam transform: the method's global views, each from the run's
    SimCLR-style pipeline."""
    name, own = cfg.transform.name, PIPELINE_OF_TRANSFORM["FastSiamTransform"]
    _require(name == own, f"FastSiam's views are {own}'s, not pipeline '{name}'")
    view = simclr_view_parameters(cfg)
    return FastSiamTransform(
        num_views=method_class(cfg.method.name).num_global_views,
        input_size=cfg.image_size,
        min_scale=cfg.transform.ops.resized_crop.scale[0],
        **view,
    )


def view_probability(cfg: DictConfig, view: int, op: str) -> float:
    """The probability of op ``op`` in global view ``view`` of the run's pipeline: the
    view's own entry under ``transform.views`` (view i uses entry i mod their count), else
    the shared one under ``transform.ops``."""
    views = cfg.transform.get("views") or [{}]
    own = views[view % len(views)].get(op) or {}
    return float(own.get("p", cfg.transform.ops[op].p))


def smog_transform(cfg: DictConfig) -> ImageTransform:
    """lightly's SMoG transform as lightly's Imagenette benchmark sets it: one crop of the
    run's size per crop category (two global views, no local crops), each with the blur and
    solarisation of its view in the run's ``byol`` pipeline (lightly's defaults: blur 0.5 /
    0.1, solarisation 0 / 0.2)."""
    name, own = cfg.transform.name, PIPELINE_OF_TRANSFORM["SMoGTransform"]
    _require(name == own, f"SMoG's views are {own}'s, not pipeline '{name}'")
    views = method_class(cfg.method.name).num_global_views
    _require(views == 2, f"{views} global views (SMoGTransform's benchmark setting: 2)")
    view = simclr_view_parameters(cfg)
    skip = cfg.image_size <= cfg.transform.ops.gaussian_blur.skip_at_or_below
    blur = [0.0 if skip else view_probability(cfg, i, "gaussian_blur") for i in range(2)]
    solarize = [view_probability(cfg, i, "solarize") for i in range(2)]
    min_scale = cfg.transform.ops.resized_crop.scale[0]
    return SMoGTransform(
        crop_sizes=(cfg.image_size, cfg.image_size),
        crop_counts=(1, 1),
        crop_min_scales=(min_scale, min_scale),
        crop_max_scales=(1.0, 1.0),
        gaussian_blur_probs=(blur[0], blur[1]),
        gaussian_blur_sigmas=view["sigmas"],
        solarize_probs=(solarize[0], solarize[1]),
        **flip_and_colour(view),
        normalize=view["normalize"],
    )


def vicregl_grid_sides(cfg: DictConfig, backbone: nn.Module) -> tuple[int, int]:
    """Sides of the backbone's feature maps of global and local crops: lightly's location
    grids must have them (4x4 and 2x2 in lightly's 128-px benchmark)."""
    sides = []
    for side in (cfg.image_size, local_side(cfg)):
        _, h, w = feature_map_shape(backbone, side)
        _require(h == w, f"feature maps must be square, got {h}x{w}")
        sides.append(h)
    return sides[0], sides[1]


def vicregl_transform(cfg: DictConfig, global_grid: int, local_grid: int) -> ImageTransform:
    """lightly's VICRegL transform (views, then their location grids) at the run's crop and
    colour settings, without solarisation (sslbench's pipeline has none)."""
    view = simclr_view_parameters(cfg)
    return VICRegLTransform(
        global_crop_size=cfg.image_size,
        local_crop_size=local_side(cfg),
        n_global_views=2,
        n_local_views=cfg.method.local_views.count,
        global_crop_scale=(cfg.transform.ops.resized_crop.scale[0], 1.0),
        local_crop_scale=tuple(cfg.method.local_views.scale),
        global_grid_size=global_grid,
        local_grid_size=local_grid,
        global_gaussian_blur_prob=view["gaussian_blur"],
        local_gaussian_blur_prob=view["gaussian_blur"],
        global_gaussian_blur_sigmas=view["sigmas"],
        local_gaussian_blur_sigmas=view["sigmas"],
        global_solarize_prob=0.0,
        local_solarize_prob=0.0,
        **flip_and_colour(view),
        normalize=view["normalize"],
    )


def pipeline_transform(cfg: DictConfig, backbone: nn.Module) -> ImageTransform:
    """A two-view method's lightly transform: the one equal to the run's pipeline."""
    return two_view_transform(cfg)


def swav_multicrop_transform(cfg: DictConfig, backbone: nn.Module) -> ImageTransform:
    """SwAV's lightly transform (the backbone plays no part)."""
    return swav_transform(cfg)


def dino_multicrop_transform(cfg: DictConfig, backbone: nn.Module) -> ImageTransform:
    """DINO's lightly transform (the backbone plays no part)."""
    return dino_transform(cfg)


def ibot_multicrop_transform(cfg: DictConfig, backbone: nn.Module) -> ImageTransform:
    """iBOT's lightly transform (the backbone plays no part)."""
    return ibot_transform(cfg)


def msn_multicrop_transform(cfg: DictConfig, backbone: nn.Module) -> ImageTransform:
    """MSN's lightly transform (the backbone plays no part)."""
    return msn_transform(cfg)


def fastsiam_multiview_transform(cfg: DictConfig, backbone: nn.Module) -> ImageTransform:
    """FastSiam's lightly transform (the backbone plays no part)."""
    return fastsiam_transform(cfg)


def smog_views_transform(cfg: DictConfig, backbone: nn.Module) -> ImageTransform:
    """SMoG's lightly transform (the backbone plays no part)."""
    return smog_transform(cfg)


def vicregl_grid_transform(cfg: DictConfig, backbone: nn.Module) -> ImageTransform:
    """VICRegL's lightly transform, its grids the sides of the backbone's feature maps."""
    return vicregl_transform(cfg, *vicregl_grid_sides(cfg, backbone))


#: The lightly transforms that a method class can name (``SSLMethod.lightly_transform``),
#: each built from the run's config and backbone.
TRANSFORMS: dict[str, Callable[[DictConfig, nn.Module], ImageTransform]] = {
    "pipeline": pipeline_transform,
    "SwaVTransform": swav_multicrop_transform,
    "DINOTransform": dino_multicrop_transform,
    "IBOTTransform": ibot_multicrop_transform,
    "MSNTransform": msn_multicrop_transform,
    "FastSiamTransform": fastsiam_multiview_transform,
    "SMoGTransform": smog_views_transform,
    "VICRegLTransform": vicregl_grid_transform,
}


def lightly_transform(cfg: DictConfig, backbone: nn.Module) -> tuple[ImageTransform, str]:
    """The run's views as lightly makes them, and the transform's name, from the transform
    that the run's method class names."""
    method = cfg.method.name
    cls = method_class(method)
    # No default on SSLMethod: a method that does not say must fail here, not fall through
    # to two views (a multi-crop method's lightly row would silently drop its local views).
    if not hasattr(cls, "lightly_transform"):
        raise ValueError(
            f"method '{method}' does not name its lightly transform: set "
            f"{cls.__name__}.lightly_transform (one of {', '.join(TRANSFORMS)}, or None)"
        )
    name = cls.lightly_transform
    if name is None:
        raise ValueError(f"lightly has no reference transform for method '{method}'")
    if name not in TRANSFORMS:
        raise ValueError(
            f"method '{method}' names lightly transform '{name}', which sslbench cannot "
            f"build; valid: {', '.join(TRANSFORMS)}"
        )
    transform = TRANSFORMS[name](cfg, backbone)
    return transform, type(transform).__name__


def grids_to_coordinates(grids: Tensor, side: int) -> Tensor:
    """lightly's location grids (N, g, g, 2) as sslbench's coordinate maps (N, 2, side,
    side): each grid cell's location over the pixels of its cell, so that pooling the map
    to the g x g feature map gives the grid back."""
    return F.interpolate(grids.permute(0, 3, 1, 2).float(), size=(side, side), mode="nearest")


def collate_views(
    items: list[tuple[list[Tensor], int]], num_global: int, num_local: int, with_grids: bool
) -> Views:
    """Stack per-image views into the method's batch of views: global views, local views
    and (VICRegL) coordinate maps from lightly's grids."""
    per_view = [torch.stack(views) for views in zip(*(item[0] for item in items), strict=True)]
    n_views = num_global + num_local
    views, grids = per_view[:n_views], per_view[n_views:]
    batch = Views(global_views=views[:num_global], local_views=views[num_global:])
    if with_grids:
        coords = [grids_to_coordinates(g, v.shape[-1]) for g, v in zip(grids, views, strict=True)]
        batch.global_coords, batch.local_coords = coords[:num_global], coords[num_global:]
    return batch
