"""Batched, device-agnostic augmentations: per-op parameters, tensor ops and pipelines.

``params`` is torch-free and imported eagerly: the config validator imports
``sslbench.transforms.params`` before torch, and importing a submodule runs this file first.
The torch-based names (from ``crops``, ``geometric``, ``photometric``, ``registry`` and
``pipeline``) are therefore loaded on first access.
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
    from .crops import (
        box_coordinates,
        center_boxes,
        center_view,
        crop_to_boxes,
        resized_crop,
        sample_crop_boxes,
    )
    from .geometric import (
        hflip,
        jittered_order,
        lorot,
        region_confusion,
        rotate,
        rotate90,
        rotate_image,
        rotate_region,
        shuffle_patches,
        vflip,
    )
    from .photometric import (
        adjust_brightness,
        adjust_contrast,
        adjust_hue,
        adjust_saturation,
        blur_kernel_size,
        color_jitter,
        gaussian_blur,
        gaussian_blur_op,
        grayscale,
        hsv_to_rgb,
        normalize,
        rgb_to_hsv,
        solarize,
        solarize_image,
        to_grayscale,
    )
    from .pipeline import (
        Pipeline,
        ViewBatch,
        local_view_pipeline,
        make_generator,
        view_pipelines,
    )
    from .registry import OPS


def __getattr__(name: str) -> Any:
    """Import torch-based names from their submodule on first use (PEP 562)."""
    module = _LAZY_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


#: The submodule of each torch-based name (the same names as the TYPE_CHECKING imports).
_LAZY_MODULES: dict[str, str] = {
    **dict.fromkeys(
        (
            "box_coordinates",
            "center_boxes",
            "center_view",
            "crop_to_boxes",
            "resized_crop",
            "sample_crop_boxes",
        ),
        "crops",
    ),
    **dict.fromkeys(
        (
            "hflip",
            "jittered_order",
            "lorot",
            "region_confusion",
            "rotate",
            "rotate90",
            "rotate_image",
            "rotate_region",
            "shuffle_patches",
            "vflip",
        ),
        "geometric",
    ),
    **dict.fromkeys(
        (
            "adjust_brightness",
            "adjust_contrast",
            "adjust_hue",
            "adjust_saturation",
            "blur_kernel_size",
            "color_jitter",
            "gaussian_blur",
            "gaussian_blur_op",
            "grayscale",
            "hsv_to_rgb",
            "normalize",
            "rgb_to_hsv",
            "solarize",
            "solarize_image",
            "to_grayscale",
        ),
        "photometric",
    ),
    **dict.fromkeys(
        ("Pipeline", "ViewBatch", "local_view_pipeline", "make_generator", "view_pipelines"),
        "pipeline",
    ),
    "OPS": "registry",
}

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
