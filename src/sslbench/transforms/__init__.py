"""Batched, device-agnostic augmentations: per-op parameters, tensor ops and pipelines.

``params`` is torch-free and imported eagerly: the config validator imports
``sslbench.transforms.params`` before torch, and importing a submodule runs this file first.
The torch-based names (from ``ops`` and ``pipeline``) are therefore loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .params import (
    GEOMETRIC_OPS,
    LABELLED_OPS,
    OP_PARAMS,
    POINTWISE_OPS,
    ColorJitterParams,
    FlipParams,
    GaussianBlurParams,
    GrayscaleParams,
    LoRotParams,
    NormalizeParams,
    RegionConfusionParams,
    ResizedCropParams,
    Rotate90Params,
    RotateParams,
    SolarizeParams,
    parse_pipeline_spec,
    view_specs,
)

if TYPE_CHECKING:  # static analysers see the lazy names as ordinary imports
    from .ops import (
        OPS,
        adjust_brightness,
        adjust_contrast,
        adjust_hue,
        adjust_saturation,
        blur_kernel_size,
        box_coordinates,
        center_boxes,
        center_view,
        color_jitter,
        crop_to_boxes,
        gaussian_blur,
        gaussian_blur_op,
        grayscale,
        hflip,
        hsv_to_rgb,
        jittered_order,
        lorot,
        normalize,
        region_confusion,
        resized_crop,
        rgb_to_hsv,
        rotate,
        rotate90,
        rotate_image,
        rotate_region,
        sample_crop_boxes,
        shuffle_patches,
        solarize,
        solarize_image,
        to_grayscale,
        vflip,
    )
    from .pipeline import (
        Pipeline,
        ViewBatch,
        local_view_pipeline,
        make_generator,
        view_pipelines,
    )


def __getattr__(name: str) -> Any:
    """Import torch-based names from their submodule on first use (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "pipeline" if name in _PIPELINE_NAMES else "ops"
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


_PIPELINE_NAMES = (
    "Pipeline",
    "ViewBatch",
    "local_view_pipeline",
    "make_generator",
    "view_pipelines",
)

__all__ = [
    "ColorJitterParams",
    "FlipParams",
    "GEOMETRIC_OPS",
    "GaussianBlurParams",
    "GrayscaleParams",
    "LABELLED_OPS",
    "LoRotParams",
    "POINTWISE_OPS",
    "NormalizeParams",
    "OPS",
    "OP_PARAMS",
    "Pipeline",
    "RegionConfusionParams",
    "ResizedCropParams",
    "Rotate90Params",
    "RotateParams",
    "SolarizeParams",
    "ViewBatch",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "box_coordinates",
    "center_boxes",
    "center_view",
    "color_jitter",
    "crop_to_boxes",
    "gaussian_blur",
    "gaussian_blur_op",
    "grayscale",
    "hflip",
    "hsv_to_rgb",
    "jittered_order",
    "local_view_pipeline",
    "lorot",
    "make_generator",
    "normalize",
    "parse_pipeline_spec",
    "region_confusion",
    "resized_crop",
    "rgb_to_hsv",
    "rotate",
    "rotate90",
    "rotate_image",
    "rotate_region",
    "sample_crop_boxes",
    "shuffle_patches",
    "solarize",
    "solarize_image",
    "to_grayscale",
    "vflip",
    "view_pipelines",
    "view_specs",
]
