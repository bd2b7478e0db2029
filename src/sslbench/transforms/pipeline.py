"""A pipeline of batched ops built from a config mapping, and seeding of its generators.

A ``Pipeline`` turns cached uint8 squares (N, 3, S, S) plus their original aspect ratios into
augmented float32 views (N, 3, size, size): first a random resized crop (or a centre view when
the spec has no crop), then the other ops in spec order, all on the batch's device. A
transform config may define several variants of its ops, one per global view (BYOL's
asymmetric blur and solarisation): ``view_pipelines`` builds one ``Pipeline`` per variant.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .crops import (
    box_coordinates,
    center_boxes,
    center_view,
    crop_to_boxes,
    sample_crop_boxes,
)
from .params import (
    GEOMETRIC_OPS,
    LABELLED_OPS,
    NormalizeParams,
    ResizedCropParams,
    execution_order,
    parse_pipeline_spec,
    view_specs,
)
from .photometric import normalize
from .registry import OPS

#: Output values (3 * size * size per view) augmented at a time on the CPU: about 12 MB of
#: float32, which the ops pass back and forth while it is still in cache.
CPU_CHUNK_ELEMENTS = 3 * 2**20


@dataclass
class ViewBatch:
    """One augmented view of each image of a batch.

    ``images``: float32 (N, 3, size, size); ``boxes``: (N, 4) crop boxes ``(x0, y0, x1, y1)``
    in normalised original-image coordinates; ``coords``: (N, 2, size, size) original-image
    positions of the pixels, or None (NaN where a rotation filled a corner); ``labels``:
    pretext-task labels by op entry (``lorot``: (N,) rotation class, ``region_confusion``:
    (N, grid * grid) permutation).
    """

    images: Tensor
    boxes: Tensor
    coords: Tensor | None = None
    labels: dict[str, Tensor] = field(default_factory=dict)


class Pipeline:
    """Batched augmentation pipeline, e.g.
    ``Pipeline({"resized_crop": {"scale": [0.2, 1.0]}, "hflip": None, "normalize": None}, 32)``.

    ``ops`` maps entry names to parameter mappings (see ``parse_pipeline_spec``); ``size`` is the
    output side. ``resized_crop``, if present, must be the first entry and appear once;
    ``normalize`` always runs last, wherever it is listed.
    """

    def __init__(self, ops: Mapping[str, Mapping[str, Any] | None], size: int) -> None:
        self.size = int(size)
        self.spec = parse_pipeline_spec(ops)
        crops = [i for i, (_, op, _) in enumerate(self.spec) if op == "resized_crop"]
        if crops not in ([], [0]):
            raise ValueError("op 'resized_crop' must be the first op of a transform, used once")
        self.crop: ResizedCropParams | None = self.spec[0][2] if crops else None
        self.steps = execution_order(self.spec)
        norms = [params for _, op, params in self.spec if op == "normalize"]
        self.normalize: NormalizeParams | None = norms[-1] if norms else None
        self._check_size()

    def _check_size(self) -> None:
        """Ops that cut a view into cells need enough pixels: fail now, not mid-run."""
        for entry, op, params in self.steps:
            if op == "region_confusion" and self.size < params.grid:
                raise ValueError(
                    f"{entry}: a {params.grid}x{params.grid} grid needs views of at least "
                    f"{params.grid} px, these are {self.size} px; lower its grid"
                )
            if op == "lorot" and params.variant == "I" and params.min_side > self.size:
                raise ValueError(
                    f"{entry}: min_side {params.min_side} exceeds the {self.size}-px view"
                )

    def __call__(self, images: Tensor, aspect: Tensor, gen: torch.Generator) -> Tensor:
        """Augment images[N, 3, S, S] (uint8 or float) with original aspect[N] (width / height).

        ``gen`` must be on the images' device. Returns float32 (N, 3, size, size).
        """
        return self.views(images, aspect, gen).images

    def views(
        self, images: Tensor, aspect: Tensor, gen: torch.Generator, *, coordinates: bool = False
    ) -> ViewBatch:
        """One view of each image, with its crop box, pretext labels and (with
        ``coordinates``) its coordinate map, moved by every geometric op exactly as the
        pixels are (see ``box_coordinates``).

        On the CPU the batch goes through in chunks of about ``CPU_CHUNK_ELEMENTS`` output
        values, which stay in the processor's cache from op to op (SimCLR's pipeline 2x
        faster at 224 px, the same at 128 px: benchmarks/augment_throughput.py
        --cpu-chunk-elements, docs/benchmarks.md); the chunks draw from ``gen`` in turn, so a
        batch's views depend only on the seed.
        """
        chunk = max(1, CPU_CHUNK_ELEMENTS // (3 * self.size * self.size))
        if images.device.type != "cpu" or images.shape[0] <= chunk:
            return self._views(images, aspect, gen, coordinates)
        parts = [
            self._views(images[i : i + chunk], aspect[i : i + chunk], gen, coordinates)
            for i in range(0, images.shape[0], chunk)
        ]
        return ViewBatch(
            images=torch.cat([part.images for part in parts]),
            boxes=torch.cat([part.boxes for part in parts]),
            coords=torch.cat([p.coords for p in parts if p.coords is not None])
            if coordinates
            else None,
            labels={key: torch.cat([p.labels[key] for p in parts]) for key in parts[0].labels},
        )

    def _views(
        self, images: Tensor, aspect: Tensor, gen: torch.Generator, coordinates: bool
    ) -> ViewBatch:
        aspect = aspect.to(images.device, torch.float32)
        if self.crop is not None:
            boxes = sample_crop_boxes(aspect, gen, self.crop)
        else:
            boxes = center_boxes(aspect)
        x = crop_to_boxes(images, boxes, self.size)
        coords = box_coordinates(boxes, aspect, self.size) if coordinates else None
        labels: dict[str, Tensor] = {}
        for entry, op, params in self.steps:
            moves_coords = coords is not None and op in GEOMETRIC_OPS
            # One call on pixels and coordinates together: the same random draw moves both.
            out = OPS[op](torch.cat((x, coords), dim=1) if moves_coords else x, gen, params)
            if op in LABELLED_OPS:
                out, labels[entry] = out
            x, coords = (out[:, :3], out[:, 3:]) if moves_coords else (out, coords)
        return ViewBatch(x, boxes, coords, labels)

    def with_crop(self, scale: Sequence[float], size: int) -> Pipeline:
        """The same ops with another crop scale and output size, e.g. for multi-crop local
        views (SwAV, VICRegL); the crop's aspect-ratio range is kept."""
        spec = {entry: dataclasses.asdict(params) | ({"op": op} if entry != op else {})
                for entry, op, params in self.spec}  # fmt: skip
        ratio = list(self.crop.ratio) if self.crop is not None else [3 / 4, 4 / 3]
        crop = {"resized_crop": {"scale": list(scale), "ratio": ratio}}
        spec.pop("resized_crop", None)
        return Pipeline(crop | spec, size)

    def keeping(self, ops: Sequence[str]) -> Pipeline:
        """The same pipeline with only the entries whose op is in ``ops`` (the others
        dropped), e.g. MAE's crop and flip of a run's SimCLR pipeline."""
        spec = {entry: dataclasses.asdict(params) | ({"op": op} if entry != op else {})
                for entry, op, params in self.spec if op in ops}  # fmt: skip
        return Pipeline(spec, self.size)

    def eval_view(self, images: Tensor, aspect: Tensor) -> Tensor:
        """Deterministic evaluation view: centre square, resized, then this pipeline's normalize
        (if any). images[N, 3, S, S], aspect[N] -> float32 (N, 3, size, size)."""
        x = center_view(images, aspect, self.size)
        return x if self.normalize is None else normalize(x, None, self.normalize)

    def describe(self) -> str:
        """Multi-line summary: output size, then one line per op with its parameters."""
        lines = [f"Pipeline(size={self.size})"]
        if self.crop is None:
            lines.append("  center_view (no resized_crop)")
        for entry, op, params in self.spec:
            name = entry if entry == op else f"{entry} ({op})"
            lines.append(f"  {name}: {params}")
        return "\n".join(lines)

    __repr__ = describe


def local_view_pipeline(
    pipeline: Pipeline, local_views: Mapping[str, Any] | None
) -> tuple[int, Pipeline | None]:
    """A method's local views (its YAML's ``local_views``: count, size_ratio, scale): how many,
    and the pipeline that makes them, the global ``pipeline``'s ops with a smaller crop of
    side ``size_ratio * pipeline.size``. (0, None) when the method has none."""
    local = dict(local_views or {})
    count = int(local.get("count", 0) or 0)
    if count <= 0:
        return 0, None
    size = max(1, round(pipeline.size * float(local["size_ratio"])))
    return count, pipeline.with_crop(local["scale"], size)


def view_pipelines(transform: Mapping[str, Any], size: int) -> list[Pipeline]:
    """One ``Pipeline`` per global-view variant of a transform config (its ``ops``, changed
    by each entry of its optional ``views`` list); global view i uses ``[i % len]``."""
    return [Pipeline(spec, size) for spec in view_specs(transform)]


def stream_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed for the stream (seed, *stream), e.g. (seed, rank, worker, epoch).

    The integers are hashed (BLAKE2b), so nearby ids give unrelated streams rather than
    overlapping ones, and (1, 2) differs from (2, 1) and from (1, 2, 0).
    """
    data = b"".join((int(v) % 2**64).to_bytes(8, "little") for v in (seed, *stream))
    digest = hashlib.blake2b(data, digest_size=8, person=b"sslbench.gen").digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def make_generator(seed: int, device: torch.device | str, *stream: int) -> torch.Generator:
    """A generator on ``device`` seeded from (seed, *stream) (see :func:`stream_seed`)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(seed, *stream))
    return gen
