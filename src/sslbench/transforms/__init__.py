"""Batched, device-agnostic augmentations: per-op parameters, tensor ops and pipelines.

``params`` is torch-free and imported eagerly: the config validator imports
``sslbench.transforms.params`` before torch, and importing a submodule runs this file first.
The torch-based names (from ``ops`` and ``pipeline``) are therefore loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .params import (
    OP_PARAMS,
    ColorJitterParams,
    FlipParams,
    GaussianBlurParams,
    GrayscaleParams,
    NormalizeParams,
    ResizedCropParams,
    Rotate90Params,
    parse_pipeline_spec,
)

if TYPE_CHECKING:  # static analysers see the lazy names as ordinary imports
    from .ops import (
        GEOMETRIC_OPS,
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
        normalize,
        resized_crop,
        rgb_to_hsv,
        rotate90,
        sample_crop_boxes,
        to_grayscale,
    )
    from .pipeline import Pipeline, make_generator


def __getattr__(name: str) -> Any:
    """Import torch-based names from their submodule on first use (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "pipeline" if name in ("Pipeline", "make_generator") else "ops"
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "GEOMETRIC_OPS",
    "OPS",
    "OP_PARAMS",
    "ColorJitterParams",
    "FlipParams",
    "GaussianBlurParams",
    "GrayscaleParams",
    "NormalizeParams",
    "Pipeline",
    "ResizedCropParams",
    "Rotate90Params",
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
    "make_generator",
    "normalize",
    "parse_pipeline_spec",
    "resized_crop",
    "rgb_to_hsv",
    "rotate90",
    "sample_crop_boxes",
    "to_grayscale",
]
