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
    """Random flip (used by ``hflip`` and ``vflip``)."""

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
    """Random Gaussian blur, sigma ~ U[sigma] per sample, truncated by one of two rules.

    ``kernel: fraction`` (SimCLR's): the kernel side is the odd integer nearest to
    ``kernel_fraction`` x the view side, whatever sigma (3 taps at 32 px, so sigma 2 blurs
    like about 0.8). ``kernel: sigma``: each sample's kernel is 2 * ceil(3 sigma) + 1 taps,
    about PIL's untruncated GaussianBlur, which lightly's per-image transforms use.
    """

    p: float = 0.5  # probability of blurring each sample
    sigma: List[float] = field(default_factory=lambda: [0.1, 2.0])  # sigma ~ U[lo, hi] pixels
    kernel: str = field(default="fraction", metadata={"choices": ("fraction", "sigma")})
    kernel_fraction: float = 0.1  # kernel: fraction: nearest odd integer >= 3 to this * side
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


@dataclass
class RotateParams:
    """Random rotation by an arbitrary angle about the view's centre (torchvision semantics:
    positive angles turn counter-clockwise, bilinear interpolation, corners filled)."""

    p: float = 0.5  # probability of rotating each sample
    degrees: List[float] = field(default_factory=lambda: [-30.0, 30.0])  # angle ~ U[lo, hi]
    fill: float = 0.0  # value of the corners that the rotation uncovers (0 black, 1 white)


@dataclass
class SolarizeParams:
    """Random solarisation: pixels at or above the threshold are inverted (x -> 1 - x)."""

    p: float = 0.2  # probability of solarising each sample
    threshold: float = 0.5  # in [0, 1]; BYOL uses 0.5 (128 of 255)


@dataclass
class LoRotParams:
    """LoRot (Moon et al. 2022, "Tailoring Self-Supervision for Supervised Learning"): rotate a
    local square region of each view by k quarter turns, k ~ uniform{0..3}; returns the label.

    ``variant: I`` (LoRot-I) draws a square of side r ~ uniform{min_side .. max_fraction *
    side} at a uniform position, label k (4 classes). ``variant: E`` (LoRot-E) rotates one of
    the four quadrants, label 4 * quadrant + k (16 classes).
    """

    variant: str = field(default="I", metadata={"choices": ("I", "E")})
    min_side: int = 2  # LoRot-I: smallest region side in pixels (authors' code: 2)
    max_fraction: float = 0.5  # LoRot-I: largest region side as a fraction of the view side
    # The authors' code draws one region per mini-batch, shared by its samples; the study
    # transformed each image on its own (lightly's per-image transforms): one per sample.
    per_sample_region: bool = True


@dataclass
class RegionConfusionParams:
    """DCL's region confusion mechanism (Chen et al. 2019, "Destruction and Construction
    Learning for Fine-grained Image Recognition"): cut the view into grid x grid patches and
    jitter their order within a neighbourhood of k cells, row-wise then column-wise (sort
    i + U(-k, k)), so no patch moves 2k cells or more along either axis; returns the
    permutation. k = 0 leaves the view unchanged.
    """

    p: float = 1.0  # probability of shuffling each sample (DCL: every "destructed" image)
    grid: int = 7  # N of the N x N grid (DCL's code: 7 x 7 at 448 px)
    k: int = 2  # neighbourhood (DCL: 1 <= k < N; their code's default 2)


# Registry of valid op names; the key of a spec entry (or its ``op:`` field) must be one of these.
OP_PARAMS: dict[str, type] = {
    "resized_crop": ResizedCropParams,
    "hflip": FlipParams,
    "vflip": FlipParams,
    "rotate90": Rotate90Params,
    "rotate": RotateParams,
    "color_jitter": ColorJitterParams,
    "grayscale": GrayscaleParams,
    "gaussian_blur": GaussianBlurParams,
    "solarize": SolarizeParams,
    "normalize": NormalizeParams,
    "lorot": LoRotParams,
    "region_confusion": RegionConfusionParams,
}

#: Ops that move pixels; the pipeline applies them to the coordinate map as well.
GEOMETRIC_OPS: frozenset[str] = frozenset(
    {"hflip", "vflip", "rotate90", "rotate", "lorot", "region_confusion"}
)

#: Ops that compute each output pixel from the same pixel alone: after a labelled op they
#: leave its label true (a pretext task may undo the op, or read where its region went).
POINTWISE_OPS: frozenset[str] = frozenset({"color_jitter", "grayscale", "solarize", "normalize"})

#: Ops that return pretext-task labels beside the views (LoRot's rotation class, DCL's
#: permutation); a pipeline may contain at most one of each.
LABELLED_OPS: frozenset[str] = frozenset({"lorot", "region_confusion"})


def _is_number(v: Any) -> bool:
    # bool is an int subclass, but `p: true` in a YAML file is a mistake, not a probability.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _coerce(
    entry: str, op: str, name: str, value: Any, default: Any, choices: Sequence[str] = ()
) -> Any:
    """Check ``value`` against the type of the field's default; return it as that type."""
    where = f"parameter {name!r} of op {op!r} (entry {entry!r})"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, str):
        if value not in choices:
            raise ValueError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
        return value
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
    if hasattr(params, "threshold") and not 0.0 <= params.threshold <= 1.0:
        fail("threshold", "must be in [0, 1]")
    if hasattr(params, "fill") and not 0.0 <= params.fill <= 1.0:
        fail("fill", "must be in [0, 1]")
    if op == "lorot":
        if params.min_side < 1:
            fail("min_side", "must be >= 1")
        if not 0.0 < params.max_fraction <= 1.0:
            fail("max_fraction", "must be in (0, 1]")
    if op == "region_confusion":
        if params.grid < 1:
            fail("grid", "must be >= 1")
        if not 0 <= params.k < max(1, params.grid):
            fail("k", f"must be in [0, grid) = [0, {params.grid})")
    if hasattr(params, "degrees"):
        lo, hi = params.degrees
        if not -360.0 <= lo <= hi <= 360.0:
            fail("degrees", "must be [lo, hi] with -360 <= lo <= hi <= 360")
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
        choices = {f.name: f.metadata.get("choices", ()) for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in cfg.items():
            if name == "op":
                continue
            if name not in defaults:
                raise ValueError(
                    f"unknown parameter {name!r} for op {op!r} (entry {entry!r}); "
                    f"valid parameters: {', '.join(sorted(defaults))}"
                )
            kwargs[name] = _coerce(entry, op, name, value, defaults[name], choices[name])
        params = cls(**kwargs)
        _check_ranges(entry, op, params)
        parsed.append((str(entry), op, params))
    for op in LABELLED_OPS:
        if sum(parsed_op == op for _, parsed_op, _ in parsed) > 1:
            raise ValueError(f"op {op!r} may appear only once in a transform (it returns labels)")
    return parsed


def execution_order(spec: Sequence[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    """The steps of a parsed spec after the crop, in the order a pipeline runs them: as
    listed, ``normalize`` last wherever it is listed (a pipeline that extends another through
    a YAML defaults list gets its new ops appended after the parent's normalize)."""
    steps = [step for step in spec if step[1] not in ("resized_crop", "normalize")]
    return steps + [step for step in spec if step[1] == "normalize"]


def view_specs(transform: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The op spec of each global-view variant of a transform config.

    ``transform["ops"]`` is the spec shared by all views; ``transform["views"]``, if given, is
    a list with one mapping per variant, ``{entry: {param: value}}``, overriding parameters of
    existing entries (BYOL's asymmetric blur and solarisation). Global view i uses variant
    ``i % len(variants)``. Each variant is checked with ``parse_pipeline_spec``.
    """
    ops = transform.get("ops") or {}
    if not isinstance(ops, Mapping) or not ops:
        raise ValueError("a transform needs an 'ops' mapping of op entries to parameters")
    overrides = transform.get("views") or [{}]
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise ValueError("transform 'views' must be a list of per-view overrides")
    specs = []
    for number, view in enumerate(overrides, start=1):
        view = view or {}
        if not isinstance(view, Mapping):
            raise ValueError(f"transform view {number} must map op entries to parameters")
        spec = {entry: dict(cfg or {}) for entry, cfg in ops.items()}
        for entry, changes in view.items():
            if entry not in spec:
                raise ValueError(
                    f"transform view {number} overrides unknown entry {entry!r}; "
                    f"entries: {', '.join(map(str, spec))}"
                )
            if not isinstance(changes, Mapping):
                raise ValueError(f"transform view {number}: {entry!r} must map parameters")
            spec[entry].update(changes)
        parse_pipeline_spec(spec)
        specs.append(spec)
    return specs
