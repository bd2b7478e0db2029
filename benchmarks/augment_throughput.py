"""Augmentation throughput: sslbench's batched pipelines vs lightly's per-image transforms.

For each pipeline (``src/sslbench/conf/transform/NAME.yaml``, composed as a run composes it)
this measures views per second:

- **sslbench batched**: ``Pipeline.views`` on a whole batch of cached uint8 squares, on
  ``--device`` (the batch is already there: no host-to-device copy is timed; on CUDA the clock
  is read after ``torch.cuda.synchronize()``). One call makes ONE view of every image of the
  batch; methods make two global views per image, so images/s here are views/s. Pipelines
  with per-view variants (BYOL) alternate them call by call.
- **per-image reference**, always on the CPU, at the same settings: lightly's transforms
  (``SimCLRTransform``, ``BYOLTransform``) for the colour-distortion pipelines whose every op
  lightly has, else a torchvision v2 ``Compose`` of the same ops (lightly has no crop-and-flip
  transform; its PIL blur and solarisation are used where a pipeline has them);
  LoRot and DCL's region confusion have no lightly or torchvision op, so a few lines of
  per-image tensor code here stand in for them (labelled "own"). Each call makes the two
  views of one PIL image, as lightly's transforms do. Measured twice: in the main process
  (one torch thread: one core), and through a ``DataLoader`` with ``--workers`` workers and a
  collate that just stacks (how lightly's transforms are run), timed from the creation of its
  iterator to the end of a whole round of worker batches.

The input imitates the imagenette2-160 cache: ``--batch-size`` smooth random pictures (noise
upsampled at three scales, so outputs look image-like while blur and jitter cost what they
cost on photos) with aspects (width / height) uniform in [0.75, 4/3], stored squashed into
``--cache-side`` squares for sslbench, and un-squashed to that short side as PIL images for
the per-image side, so that both crop the same pictures. Output: ``--size`` (128, as lightly's
Imagenette benchmark), ImageNet-normalised float32 views on both sides. Each cell runs one
warm-up batch (the DataLoader: its workers' start), then batches until ``--seconds`` have
passed.

One JSON line per measurement goes to ``--out``; a Markdown table for docs/benchmarks.md goes
to stdout, followed by every parameter the per-image reference could not match. Run (about
20 s per pipeline with the defaults; one torch process at a time on a shared machine):

    .venv/bin/python benchmarks/augment_throughput.py [--device cuda] [--pipelines a b]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from lightly.transforms import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
    SimCLRTransform,
    SimCLRViewTransform,
)
from lightly.transforms.gaussian_blur import GaussianBlur
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.transforms.solarize import RandomSolarization
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from sslbench.config import compose
from sslbench.config.schema import group_options
from sslbench.run.results import git_sha, versions
from sslbench.transforms import pipeline as pipeline_module
from sslbench.transforms.pipeline import Pipeline, make_generator, view_pipelines

#: Table order; any other transform config follows, sorted.
ORDER = ["baseline", "simclr", "byol", "orthogonality", "lorot", "dcl", "baseline_lorot",
         "baseline_dcl"]  # fmt: skip
VIEWS_PER_IMAGE = 2  # the per-image reference makes two views per call, as lightly's transforms


# -- input: a synthetic imagenette2-160-like cache ------------------------------------------
def synthetic_cache(n: int, side: int, seed: int) -> tuple[Tensor, Tensor]:
    """n smooth random pictures as cached uint8 squares (n, 3, side, side), and their original
    aspects (width / height) uniform in [0.75, 4/3]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, side, side)
    for cells, weight in ((4, 0.5), (16, 0.3), (side // 2, 0.2)):  # coarse to fine
        noise = 0.6 * torch.rand(n, 1, cells, cells, generator=gen)  # shared: luminance
        noise = noise + 0.4 * torch.rand(n, 3, cells, cells, generator=gen)  # colour
        x += weight * F.interpolate(noise, size=(side, side), mode="bicubic", align_corners=False)
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    images = ((x - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
    aspect = 0.75 + (4 / 3 - 0.75) * torch.rand(n, generator=gen)
    return images, aspect


def pil_pictures(images: Tensor, aspect: Tensor) -> list[Image.Image]:
    """The cached squares un-squashed to their original aspect, short side = the cache side."""
    side = images.shape[-1]
    pictures = []
    for square, a in zip(images, aspect.tolist(), strict=True):
        size = (round(side * a), side) if a >= 1 else (side, round(side / a))
        picture = Image.fromarray(square.permute(1, 2, 0).numpy(), "RGB")
        pictures.append(picture.resize(size, Image.Resampling.BILINEAR))
    return pictures


# -- the clock -------------------------------------------------------------------------------
def no_sync() -> None:
    """Nothing to wait for (CPU work is done when the call returns)."""


def measure(step: Callable[[], int], seconds: float, sync: Callable[[], None]) -> tuple[int, float]:
    """Run ``step`` (returns the views it made) once to warm up, then until ``seconds`` have
    passed; returns (views, seconds) of the timed part. ``sync`` runs before each clock read."""
    step()
    sync()
    views, start = 0, time.perf_counter()
    while True:
        views += step()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return views, elapsed


# -- sslbench: batched views on the device ---------------------------------------------------
def load_transform(name: str) -> dict[str, Any]:
    """The transform config ``conf/transform/NAME.yaml`` as a run composes it (Hydra: its
    ``defaults`` list, e.g. baseline_lorot = baseline + lorot), as a plain dict."""
    return OmegaConf.to_container(compose([f"transform={name}"]).transform, resolve=True)


def sslbench_step(
    pipelines: Sequence[Pipeline], images: Tensor, aspect: Tensor, gen: torch.Generator
) -> Callable[[], int]:
    """One call: one view of the whole batch, by the view variants in turn (BYOL's two)."""
    calls = 0

    def step() -> int:
        nonlocal calls
        views = pipelines[calls % len(pipelines)].views(images, aspect, gen).images
        calls += 1
        return views.shape[0]

    return step


# -- per-image reference: lightly's transforms, else torchvision's ---------------------------
class QuarterTurns:
    """k quarter turns, k ~ uniform{1..max_turns}, with probability p (sslbench's rotate90;
    lightly's RandomRotate is the case max_turns = 1)."""

    def __init__(self, p: float, max_turns: int) -> None:
        self.p, self.max_turns = p, max_turns

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        return v2.functional.rotate(image, 90.0 * random.randint(1, self.max_turns))


class OwnLoRot:
    """LoRot on one normalised view (3, H, W): a square region rotated by k quarter turns,
    k ~ uniform{0..3} (no lightly op; the same draws as sslbench's ``lorot``, per image)."""

    def __init__(self, variant: str, min_side: int, max_fraction: float) -> None:
        self.variant, self.min_side, self.max_fraction = variant, min_side, max_fraction

    def __call__(self, view: Tensor) -> Tensor:
        side, k = view.shape[-1], random.randrange(4)
        if self.variant == "E":  # one of the four quadrants
            r, quadrant = side // 2, random.randrange(4)
            top, left = (quadrant // 2) * (side - r), (quadrant % 2) * (side - r)
        else:
            largest = max(1, min(side, math.floor(self.max_fraction * side)))
            r = random.randint(min(self.min_side, largest), largest)
            top, left = random.randint(0, side - r), random.randint(0, side - r)
        region = view[:, top : top + r, left : left + r]
        view[:, top : top + r, left : left + r] = torch.rot90(region, k, dims=(1, 2))
        return view


class OwnRegionConfusion:
    """DCL's region confusion on one view (3, H, W), with probability p: the grid x grid patches'
    order jittered row by row, then column by column (sort i + U(-k, k)). No lightly op."""

    def __init__(self, p: float, grid: int, k: int) -> None:
        self.p, self.grid, self.k = p, grid, k

    def __call__(self, view: Tensor) -> Tensor:
        if random.random() >= self.p:
            return view
        g, (c, h, w) = self.grid, view.shape
        ph, pw = h // g, w // g

        def jittered() -> Tensor:  # (g, g): each row's order, sorted by i + U(-k, k)
            keys = np.arange(g) + np.random.uniform(-self.k, self.k, (g, g))
            return torch.from_numpy(np.argsort(keys, axis=1, kind="stable"))

        cols, rows = jittered(), jittered().T  # rows[i, j]: source row of (i, j) in column j
        patches = view[:, : g * ph, : g * pw].reshape(c, g, ph, g, pw)
        shuffled = patches[:, rows, :, cols.gather(0, rows), :]  # (g, g, c, ph, pw)
        view[:, : g * ph, : g * pw] = shuffled.permute(2, 0, 3, 1, 4).reshape(c, g * ph, g * pw)
        return view


#: sslbench ops that lightly's SimCLR/BYOL view transforms have, in lightly's fixed order.
LIGHTLY_ORDER = ["resized_crop", "hflip", "vflip", "rotate90", "rotate", "color_jitter",
                 "grayscale", "gaussian_blur", "solarize", "normalize"]  # fmt: skip


@dataclass
class Reference:
    """A per-image transform equal to a pipeline: PIL image -> list of normalised views."""

    transform: Callable[[Image.Image], list[Tensor]]
    kind: str  # "lightly" or "torchvision" (+ "own ..." for the pretext ops)
    description: str  # what exactly, for the JSON lines
    notes: list[str] = field(default_factory=list)  # parameters that could not be matched


def blur_notes(spec: list[tuple[str, str, Any]], size: int) -> list[str]:
    """What lightly's PIL blur does differently from sslbench's."""
    return [
        f"blur: lightly's PIL GaussianBlur(radius=sigma) (box-blur approximation, support "
        f"~3 sigma) vs sslbench's exact Gaussian, kernel {p.kernel_fraction:g} x {size} px"
        for _, op, p in spec
        if op == "gaussian_blur" and size > p.skip_at_or_below
    ]


def lightly_view_kwargs(spec: list[tuple[str, str, Any]], size: int) -> dict[str, Any] | None:
    """Keywords of lightly's SimCLR/BYOL view transform equal to one view's ops, or None when
    lightly cannot express them (another op, a crop ratio or top scale of its own, ...)."""
    ops = {op: params for _, op, params in spec}
    if len(ops) != len(spec) or not set(ops) <= set(LIGHTLY_ORDER) or "resized_crop" not in ops:
        return None
    crop = ops["resized_crop"]
    (lo, hi), tol = crop.ratio, 1e-5
    ratio_ok = math.isclose(lo, 3 / 4, rel_tol=tol) and math.isclose(hi, 4 / 3, rel_tol=tol)
    quarter_turns = getattr(ops.get("rotate90"), "max_quarter_turns", 1)
    if crop.scale[1] != 1.0 or not ratio_ok or quarter_turns != 1:
        return None
    if "rotate90" in ops and "rotate" in ops:
        return None
    if "rotate" in ops and ops["rotate"].fill != 0.0:
        return None
    jitter, blur = ops.get("color_jitter"), ops.get("gaussian_blur")
    kwargs: dict[str, Any] = {
        "input_size": size,
        "min_scale": crop.scale[0],
        "hf_prob": ops["hflip"].p if "hflip" in ops else 0.0,
        "vf_prob": ops["vflip"].p if "vflip" in ops else 0.0,
        "cj_prob": jitter.p if jitter else 0.0,
        "cj_strength": 1.0,
        "random_gray_scale": ops["grayscale"].p if "grayscale" in ops else 0.0,
        "gaussian_blur": blur.p if blur and size > blur.skip_at_or_below else 0.0,
        "normalize": None,
    }
    if jitter:
        kwargs |= {"cj_bright": jitter.brightness, "cj_contrast": jitter.contrast,
                   "cj_sat": jitter.saturation, "cj_hue": jitter.hue}  # fmt: skip
    if blur:
        kwargs["sigmas"] = tuple(blur.sigma)
    if "rotate90" in ops:
        kwargs |= {"rr_prob": ops["rotate90"].p, "rr_degrees": None}  # None: 90 degrees
    if "rotate" in ops:
        kwargs |= {"rr_prob": ops["rotate"].p, "rr_degrees": tuple(ops["rotate"].degrees)}
    if "solarize" in ops:
        kwargs["solarization_prob"] = ops["solarize"].p
    if "normalize" in ops:
        kwargs["normalize"] = {"mean": ops["normalize"].mean, "std": ops["normalize"].std}
    return kwargs


def order_note(spec: list[tuple[str, str, Any]]) -> list[str]:
    """A note when the pipeline's op order is not lightly's fixed one."""
    ours = [op for _, op, _ in spec]
    theirs = [op for op in LIGHTLY_ORDER if op in ours]
    return [] if ours == theirs else [f"op order: lightly's {theirs} vs sslbench's {ours}"]


def lightly_reference(specs: list[list[tuple[str, str, Any]]], size: int) -> Reference | None:
    """lightly's SimCLRTransform / BYOLTransform with the pipeline's parameters, or None when
    lightly lacks an op, or the pipeline has no colour jitter: lightly has no crop-and-flip
    transform (its SimCLRTransform with the colour ops off would cost the same)."""
    views = [specs[i % len(specs)] for i in range(VIEWS_PER_IMAGE)]
    kwargs = [lightly_view_kwargs(spec, size) for spec in views]
    if any(kw is None or kw["cj_prob"] == 0.0 for kw in kwargs):
        return None
    notes = {n for spec in views for n in order_note(spec) + blur_notes(spec, size)}
    for spec in views:
        for _, op, p in spec:
            if op == "solarize" and round(p.threshold * 255) != 128:
                notes.add(f"solarize: lightly's threshold 128/255 vs sslbench's {p.threshold:g}")
    if any("solarization_prob" in kw for kw in kwargs):  # BYOL's view transforms
        for kw in kwargs:  # a view without the op: none (lightly's default for view 2: 0.2)
            kw.setdefault("solarization_prob", 0.0)
        transform: Callable = BYOLTransform(
            BYOLView1Transform(**kwargs[0]), BYOLView2Transform(**kwargs[1])
        )
        name = "BYOLTransform(BYOLView1Transform(**v1), BYOLView2Transform(**v2))"
    elif kwargs[0] == kwargs[1]:
        transform, name = SimCLRTransform(**kwargs[0]), "SimCLRTransform(**v1)"
    else:
        transform = MultiViewTransform([SimCLRViewTransform(**kw) for kw in kwargs])
        name = "MultiViewTransform([SimCLRViewTransform(**v1), SimCLRViewTransform(**v2)])"
    described = f"lightly {name}, " + ", ".join(f"v{i + 1}={kw}" for i, kw in enumerate(kwargs))
    return Reference(transform, "lightly " + name.split("(")[0], described, sorted(notes))


def torchvision_view(spec: list[tuple[str, str, Any]], size: int) -> tuple[v2.Compose, list[str]]:
    """One view's ops as a torchvision v2 Compose on a PIL image (lightly's PIL blur and
    solarisation; own LoRot and region confusion on the normalised tensor); with its parts."""
    pil, tensor, names = [], [], []
    for _, op, p in spec:
        if op == "resized_crop":
            pil.append(v2.RandomResizedCrop(size, scale=tuple(p.scale), ratio=tuple(p.ratio)))
        elif op == "hflip":
            pil.append(v2.RandomHorizontalFlip(p.p))
        elif op == "vflip":
            pil.append(v2.RandomVerticalFlip(p.p))
        elif op == "rotate90":
            pil.append(QuarterTurns(p.p, p.max_quarter_turns))
        elif op == "rotate":
            fill = round(p.fill * 255)
            pil.append(v2.RandomApply([v2.RandomRotation(tuple(p.degrees), fill=fill)], p.p))
        elif op == "color_jitter":
            jitter = v2.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue)
            pil.append(v2.RandomApply([jitter], p.p))
        elif op == "grayscale":
            pil.append(v2.RandomGrayscale(p.p))
        elif op == "gaussian_blur":
            if size > p.skip_at_or_below:
                pil.append(GaussianBlur(prob=p.p, sigmas=tuple(p.sigma)))
        elif op == "solarize":
            pil.append(RandomSolarization(prob=p.p, threshold=round(p.threshold * 255)))
        elif op == "normalize":
            tensor.insert(0, v2.Normalize(p.mean, p.std))
        elif op == "lorot":
            tensor.append(OwnLoRot(p.variant, p.min_side, p.max_fraction))
        elif op == "region_confusion":
            tensor.append(OwnRegionConfusion(p.p, p.grid, p.k))
        else:
            raise ValueError(f"no per-image equivalent of op {op!r}")
        names.append(op)
    if not any(op == "resized_crop" for _, op, _ in spec):  # sslbench's centre view
        pil[:0] = [v2.Lambda(lambda im: v2.functional.center_crop(im, min(im.size))),
                   v2.Resize(size)]  # fmt: skip
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose([*pil, *to_tensor, *tensor]), names


def torchvision_reference(specs: list[list[tuple[str, str, Any]]], size: int) -> Reference:
    """The pipeline's ops as torchvision v2 Composes on PIL images, two views per call."""
    views = [specs[i % len(specs)] for i in range(VIEWS_PER_IMAGE)]
    composes, names = zip(*(torchvision_view(spec, size) for spec in views), strict=True)
    own = sorted({op for ops in names for op in ops if op in ("lorot", "region_confusion")})
    notes = sorted({n for spec in views for n in blur_notes(spec, size)})
    for op in own:
        notes.append(f"{op}: n/a in lightly and torchvision; this script's per-image version")
    for spec in views:
        for _, op, p in spec:
            if op == "lorot" and not p.per_sample_region:
                notes.append("lorot: one region per image (sslbench: one per batch)")
    kind = "torchvision" + "".join(f" + own {op}" for op in own)
    described = f"{kind}: " + " | ".join(repr(c) for c in composes)
    return Reference(MultiViewTransform(list(composes)), kind, described, sorted(set(notes)))


def per_image_reference(pipelines: Sequence[Pipeline], size: int) -> Reference:
    """lightly's transforms where lightly has every op of every view, else torchvision's."""
    specs = [pipeline.spec for pipeline in pipelines]
    return lightly_reference(specs, size) or torchvision_reference(specs, size)


def stack_views(items: list[list[Tensor]]) -> list[Tensor]:
    """Collate: the i-th views of every image stacked into one (B, 3, size, size) tensor."""
    return [torch.stack(views) for views in zip(*items, strict=True)]


def per_image_step(transform: Callable, pictures: list[Image.Image]) -> Callable[[], int]:
    """One call: both views of every picture, stacked as a DataLoader would."""

    def step() -> int:
        return sum(v.shape[0] for v in stack_views([transform(p) for p in pictures]))

    return step


class PictureViews(Dataset):
    """Item i: the views of picture i mod n; long enough never to run out."""

    def __init__(self, pictures: list[Image.Image], transform: Callable) -> None:
        self.pictures, self.transform = pictures, transform

    def __len__(self) -> int:
        return len(self.pictures) * 1_000_000

    def __getitem__(self, i: int) -> list[Tensor]:
        return self.transform(self.pictures[i % len(self.pictures)])


def measure_loader(
    transform: Callable, pictures: list[Image.Image], batch_size: int, workers: int, seconds: float
) -> tuple[int, float]:
    """Views and seconds through a DataLoader, timed from the creation of its iterator (worker
    start-up included: batches prefetched while a warm-up ran would count as free). The
    workers start together and take batches in turn, so stopping after a whole round of
    ``workers`` batches leaves no work done but not counted."""
    loader = DataLoader(PictureViews(pictures, transform), batch_size=batch_size,
                        num_workers=workers, collate_fn=stack_views)  # fmt: skip
    views, start = 0, time.perf_counter()
    for number, batch in enumerate(loader, start=1):
        views += sum(v.shape[0] for v in batch)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and number % max(1, workers) == 0:
            return views, elapsed
    raise AssertionError("unreachable: the dataset is practically endless")


# -- records and the table -------------------------------------------------------------------
def host() -> str:
    """Platform, CPU model and count (and the GPU when there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs{gpu}"


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The Markdown table (one row per pipeline), then what the references could not match."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(r["pipeline"], {})[r["cell"]] = r
    workers = f"{args.workers} workers"
    print(f"\nviews/s (a method makes 2 views per image): {args.batch_size} synthetic "
          f"{args.cache_side}-px cache images -> {args.size}-px views; sslbench on "
          f"{args.device} with {args.threads} torch threads (data already there), per-image "
          "on the CPU\n")  # fmt: skip
    print(f"| pipeline | sslbench batched ({args.device}) | per-image, 1 process (1 core) | "
          f"per-image, {workers} | ratio | per-image reference |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, row in cells.items():
        ours = row.get("sslbench", {}).get("views_per_second")
        one = row.get("per_image", {}).get("views_per_second")
        loader = row.get("loader", {}).get("views_per_second")
        ratio = ours / loader if ours and loader else None
        kind = row.get("per_image", row.get("loader", {})).get("reference_kind", "—")
        ratio_text = "—" if ratio is None else f"{ratio:.1f}×"
        print(f"| {name} | {rate(ours)} | {rate(one)} | {rate(loader)} | {ratio_text} | {kind} |")
    print(f"\nratio = sslbench batched / per-image with {workers}. Not matched by the per-image "
          "reference:")  # fmt: skip
    for name, row in cells.items():
        for note in row.get("per_image", row.get("loader", {})).get("notes", []):
            print(f"- {name}: {note}")


def measure_pipeline(
    name: str,
    args: argparse.Namespace,
    data: tuple[Tensor, Tensor],
    pictures: list[Image.Image],
    gen: torch.Generator,
) -> list[dict[str, Any]]:
    """The pipeline's cells: sslbench batched, then per-image in 1 process and with workers.

    Each cell is timed ``--repeats`` times, the cells taking turns, and reported by the median
    rate: on a shared 2-core VM the same cell varies by tens of percent from minute to minute,
    and turns spread that over all cells alike."""
    pipelines = view_pipelines(load_transform(name), args.size)
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else no_sync
    about = {"device": args.device, "data_on_device": True, "view_variants": len(pipelines),
             "views_per_call": args.batch_size}  # fmt: skip
    ours = sslbench_step(pipelines, *data, gen)
    cells: dict[str, tuple[str, dict[str, Any], Callable[[], tuple[int, float]]]] = {
        "sslbench": ("sslbench batched", about, lambda: measure(ours, args.seconds, sync)),
    }
    if not args.skip_per_image:
        ref = per_image_reference(pipelines, args.size)
        about = {"device": "cpu", "reference": ref.description, "reference_kind": ref.kind,
                 "notes": ref.notes, "views_per_call": VIEWS_PER_IMAGE}  # fmt: skip
        one_image = per_image_step(ref.transform, pictures)

        def one_core() -> tuple[int, float]:
            torch.set_num_threads(1)  # one core, as in a DataLoader worker
            try:
                return measure(one_image, args.seconds, no_sync)
            finally:
                torch.set_num_threads(args.threads)

        def loader() -> tuple[int, float]:
            return measure_loader(
                ref.transform, pictures, args.batch_size, args.workers, args.seconds
            )

        label = f"{ref.kind} per-image, {args.workers} DataLoader workers"
        cells["per_image"] = (f"{ref.kind} per-image", about | {"workers": 0}, one_core)
        cells["loader"] = (label, about | {"workers": args.workers}, loader)
    runs: dict[str, list[tuple[int, float]]] = {cell: [] for cell in cells}
    for _ in range(args.repeats):
        for cell, (_, _, run) in cells.items():
            runs[cell].append(run())
    rows = []
    for cell, (implementation, cell_about, _) in cells.items():
        rates = [views / seconds for views, seconds in runs[cell]]
        rows.append(
            {"pipeline": name, "cell": cell, "implementation": implementation, **cell_about,
             "views": sum(v for v, _ in runs[cell]), "seconds": sum(t for _, t in runs[cell]),
             "rates": rates, "views_per_second": statistics.median(rates)}
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = group_options("transform")
    default = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
    parser.add_argument("--pipelines", nargs="+", choices=names, default=default)
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for sslbench's side")
    parser.add_argument("--cache-side", type=int, default=160, help="S of the cached squares")
    parser.add_argument("--size", type=int, default=128, help="output view side")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed per cell and turn")
    parser.add_argument("--repeats", type=int, default=3, help="turns per cell (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-per-image", action="store_true", help="sslbench's side only")
    parser.add_argument("--cpu-chunk-elements", type=int, default=None,
                        help="views' values per CPU chunk (0: whole batch at once; "
                        "default: sslbench's CPU_CHUNK_ELEMENTS)")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/augment_throughput.jsonl")
    args = parser.parse_args()
    if args.cpu_chunk_elements is not None:  # 0: one chunk, i.e. no chunking
        pipeline_module.CPU_CHUNK_ELEMENTS = args.cpu_chunk_elements or 2**62
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    images, aspect = synthetic_cache(args.batch_size, args.cache_side, args.seed)
    pictures = pil_pictures(images, aspect)
    data = images.to(device), aspect.to(device)  # already on the device: no copy is timed
    gen = make_generator(args.seed, device, 0)
    base = {
        "benchmark": "augment_throughput",
        "date": time.strftime("%Y-%m-%d"),
        "host": host(),
        "versions": versions() | {"torchvision": torchvision.__version__},
        "git_sha": git_sha(),
        "threads": args.threads,
        "cpu_chunk_elements": pipeline_module.CPU_CHUNK_ELEMENTS,
        "cache_side": args.cache_side,
        "size": args.size,
        "batch_size": args.batch_size,
        "input": "synthetic smooth noise, aspect U[0.75, 4/3]",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.pipelines:
        for row in measure_pipeline(name, args, data, pictures, gen):
            rows.append(base | row)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(base | row) + "\n")
            spread = ", ".join(f"{r:,.0f}" for r in row["rates"])
            print(f"{name:<16} {row['implementation']:<56} {row['views_per_second']:>8,.0f} "
                  f"views/s (median of {spread})", flush=True)  # fmt: skip
    print_table(rows, args)


if __name__ == "__main__":
    main()
