"""Parameters of the batched augmentation ops, and parsing of a pipeline spec.

This module must not import torch: the command-line validator imports it to check a
config before torch is loaded. One dataclass per op; each can also serve as an OmegaConf
structured config, which is why list fields are typed ``typing.List`` rather than ``list``.
"""

# ruff: noqa: UP006, UP035  (OmegaConf structured configs need typing.List, not builtin list[...])

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, List


@dataclass
class ResizedCropParams:
    """Random resized crop, sampled in original-image coordinates (SimCLR defaults)."""

    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # crop area / image area
    ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # crop width / height


@dataclass
class FlipParams:
    """Random flip (used by ``hflip``)."""

    p: float = 0.5  # probability of flipping each sample


@dataclass
class ColorJitterParams:
    """Colour jitter with torchvision semantics, adjustments applied in random order."""

    p: float = 0.8  # probability of jittering each sample at all
    brightness: float = 0.4  # factor ~ U[max(0, 1-b), 1+b]
    contrast: float = 0.4  # factor ~ U[max(0, 1-c), 1+c]
    saturation: float = 0.4  # factor ~ U[max(0, 1-s), 1+s]
    hue: float = 0.1  # hue shift ~ U[-h, h], in turns of the colour wheel, h <= 0.5


@dataclass
class GrayscaleParams:
    """Random conversion to (3-channel) grayscale."""

    p: float = 0.2  # probability of converting each sample


@dataclass
class GaussianBlurParams:
    """Random Gaussian blur with a kernel proportional to the image side."""

    p: float = 0.5  # probability of blurring each sample
    sigma: List[float] = field(default_factory=lambda: [0.1, 2.0])  # sigma ~ U[lo, hi] pixels
    kernel_fraction: float = 0.1  # kernel size = nearest odd integer >= 3 to this * side
    skip_at_or_below: int = 32  # no blur at all when the side is <= this (CIFAR-sized images)


@dataclass
class NormalizeParams:
    """Per-channel normalisation (x - mean) / std; ImageNet statistics by default."""

    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # RGB means
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])  # RGB std devs


@dataclass
class Rotate90Params:
    """Random rotation of the whole (square) view by k quarter turns."""

    p: float = 0.5  # probability of rotating each sample
    # k ~ uniform{1, ..., max_quarter_turns}: 1 is lightly's RandomRotate (90 degrees only),
    # 3 draws any of the three rotations
    max_quarter_turns: int = 1


# Registry of valid op names; the key of a spec entry (or its ``op:`` field) must be one of these.
OP_PARAMS: dict[str, type] = {
    "resized_crop": ResizedCropParams,
    "hflip": FlipParams,
    "rotate90": Rotate90Params,
    "color_jitter": ColorJitterParams,
    "grayscale": GrayscaleParams,
    "gaussian_blur": GaussianBlurParams,
    "normalize": NormalizeParams,
}


def _is_number(v: Any) -> bool:
    # bool is an int subclass, but `p: true` in a YAML file is a mistake, not a probability.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _coerce(entry: str, op: str, name: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default; return it as that type."""
    where = f"parameter {name!r} of op {op!r} (entry {entry!r})"
    if isinstance(default, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"{where} must be a list of {len(default)} numbers, got {value!r}")
        items = list(value)
        if len(items) != len(default) or not all(_is_number(v) for v in items):
            raise ValueError(f"{where} must be a list of {len(default)} numbers, got {items!r}")
        return [float(v) for v in items]
    if isinstance(default, int):
        if not _is_number(value) or int(value) != value:
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if not _is_number(value):
        raise ValueError(f"{where} must be a number, got {value!r}")
    return float(value)


def _check_ranges(entry: str, op: str, params: Any) -> None:
    """Reject values that would make an op meaningless (probabilities outside [0, 1], ...)."""

    def fail(name: str, rule: str) -> None:
        value = getattr(params, name)
        raise ValueError(f"parameter {name!r} of op {op!r} (entry {entry!r}) {rule}, got {value}")

    if hasattr(params, "p") and not 0.0 <= params.p <= 1.0:
        fail("p", "must be in [0, 1]")
    for name in ("brightness", "contrast", "saturation"):
        if hasattr(params, name) and getattr(params, name) < 0:
            fail(name, "must be >= 0")
    if hasattr(params, "hue") and not 0.0 <= params.hue <= 0.5:
        fail("hue", "must be in [0, 0.5]")
    for name, low in (("scale", 0.0), ("ratio", 0.0), ("sigma", 0.0)):
        if hasattr(params, name):
            lo, hi = getattr(params, name)
            if not low < lo <= hi:
                fail(name, f"must be [lo, hi] with {low} < lo <= hi")
    if op == "resized_crop" and params.scale[1] > 1.0:
        fail("scale", "must not exceed 1")
    if hasattr(params, "kernel_fraction") and params.kernel_fraction <= 0:
        fail("kernel_fraction", "must be > 0")
    if hasattr(params, "max_quarter_turns") and not 1 <= params.max_quarter_turns <= 3:
        fail("max_quarter_turns", "must be 1, 2 or 3")
    if hasattr(params, "std") and min(params.std) <= 0:
        fail("std", "must be > 0")


def parse_pipeline_spec(
    ops: Mapping[str, Mapping[str, Any] | None],
) -> list[tuple[str, str, Any]]:
    """Turn an ordered ``{entry: {param: value}}`` mapping into ``(entry, op, params)`` triples.

    An entry's op is its key, unless its mapping has an ``op:`` field (so an op can be used
    twice, e.g. ``flip_again: {op: hflip, p: 0.5}``). ``None`` means all defaults. Errors are
    one-line ``ValueError`` messages that name the valid choices, for the config validator.
    """
    valid_ops = ", ".join(sorted(OP_PARAMS))
    parsed: list[tuple[str, str, Any]] = []
    for entry, cfg in ops.items():
        cfg = {} if cfg is None else cfg
        if not isinstance(cfg, Mapping):
            raise ValueError(f"transform entry {entry!r} must be a mapping of parameters or null")
        op = cfg.get("op", entry)
        if not isinstance(op, str) or op not in OP_PARAMS:
            raise ValueError(f"unknown op {op!r} in transform; valid ops: {valid_ops}")
        cls = OP_PARAMS[op]
        defaults = dataclasses.asdict(cls())
        kwargs: dict[str, Any] = {}
        for name, value in cfg.items():
            if name == "op":
                continue
            if name not in defaults:
                raise ValueError(
                    f"unknown parameter {name!r} for op {op!r} (entry {entry!r}); "
                    f"valid parameters: {', '.join(sorted(defaults))}"
                )
            kwargs[name] = _coerce(entry, op, name, value, defaults[name])
        params = cls(**kwargs)
        _check_ranges(entry, op, params)
        parsed.append((str(entry), op, params))
    return parsed
