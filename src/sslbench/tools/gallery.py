"""``sslbench gallery``: a PNG grid of what an augmentation pipeline does to real images.

One row per image (a few images of different classes from the run's seeded, class-stratified
training subset): the original (centre view at ``image_size``), then augmented global views
(view i from the transform's variant ``i % variants``), then the method's local views if it
has any (SwAV, VICRegL). Views are shown un-normalised; views with pretext labels (LoRot,
region confusion) get a caption saying what the label means, and a transform with several
view variants (BYOL's two) names each view's variant and what sets it apart. Imported only by
the command line, after validation.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from sslbench.run.results import atomic_write_bytes
from sslbench.transforms import Pipeline, center_view, make_generator
from sslbench.transforms.pipeline import local_view_pipeline, view_pipelines

#: Images drawn from when the config sets no ``dataset.max_train``: enough for every class.
POOL_SIZE = 1000
#: Stream id of the gallery's generator (training streams are (seed, rank, epoch, step)).
GALLERY_STREAM = 0x6A11E7
#: Names of pretext ops in captions.
SHORT_NAMES = {"region_confusion": "region confusion"}
#: Names of ops in the notes on view variants.
OP_NAMES = {"gaussian_blur": "blur", "color_jitter": "colour jitter", "resized_crop": "crop"}
#: LoRot-E's quadrants by label q (sslbench.transforms.geometric.lorot).
QUARTERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def pick_images(labels: np.ndarray, indices: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` of ``indices``: the first of each distinct label in order (so different
    classes show), then the next unused ones if there are fewer labels than ``n``."""
    chosen: list[int] = []
    seen: set[int] = set()
    for i in indices:
        label = int(labels[i])
        if label not in seen:
            seen.add(label)
            chosen.append(int(i))
            if len(chosen) == n:
                return np.asarray(chosen, dtype=np.int64)
    taken = set(chosen)
    chosen += [int(i) for i in indices if int(i) not in taken][: n - len(chosen)]
    return np.asarray(chosen, dtype=np.int64)


def for_display(views: Tensor, pipeline: Pipeline) -> np.ndarray:
    """float32 (N, 3, H, W) views -> (N, H, W, 3) in [0, 1], undoing the pipeline's normalize."""
    x = views.detach().to("cpu", torch.float32)
    norm = pipeline.normalize
    if norm is not None:
        mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
        x = x * std + mean
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


def _turned(k: int) -> str:
    # torch.rot90 over (height, width): counter-clockwise as the picture is shown
    return "not turned" if k == 0 else f"turned {90 * k}° ccw"


def caption(name: str, op: str, params: Any, labels: Tensor, row: int) -> str:
    """A caption for one sample's pretext label, saying what the label means: LoRot's
    ``lorot k=3`` / ``patch turned 270° ccw`` (k quarter turns of a square patch; LoRot-E:
    ``lorot q=1 k=3`` / ``top-right quarter`` / ``turned 270° ccw``, the quadrant q turned),
    region confusion's ``17 of 49 tiles moved`` (tiles out of place in the shuffled grid)."""
    short = SHORT_NAMES.get(op, op if name == op else name)
    value = labels[row]
    if value.ndim == 0:  # a class: LoRot's k, or 4 * quadrant + k for LoRot-E
        v = int(value)
        if op == "lorot" and getattr(params, "variant", None) == "E":
            q, k = divmod(v, 4)
            return f"{short} q={q} k={k}\n{QUARTERS[q]} quarter\n{_turned(k)}"
        return f"{short} k={v}\npatch {_turned(v)}" if op == "lorot" else f"{short} {v}"
    flat = value.reshape(-1)
    if not flat.is_floating_point() and flat.numel() > 1:  # a permutation of tiles
        moved = int((flat != torch.arange(flat.numel(), dtype=flat.dtype)).sum())
        if moved == 0:
            return f"{short}\nnot shuffled"
        return f"{short}\n{moved} of {flat.numel()} tiles moved"
    return short


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(_value, v)) + "]"
    return str(v)


def variant_notes(pipelines: Sequence[Pipeline]) -> list[str]:
    """What sets each global-view variant apart, one note per pipeline (none for a single
    one): the op parameters whose values differ between the variants, e.g. BYOL's
    ``blur p=1, solarize p=0`` and ``blur p=0.1, solarize p=0.2``. A blur on views at or
    below its ``skip_at_or_below`` side does nothing, so its differences are left out there
    (BYOL's 32 px views differ in solarisation only)."""
    if len(pipelines) < 2:
        return []
    specs = [{entry: (op, params) for entry, op, params in p.spec} for p in pipelines]
    notes: list[list[str]] = [[] for _ in pipelines]
    for entry in dict.fromkeys(e for spec in specs for e in spec):
        present = [spec.get(entry) for spec in specs]
        op = next(found[0] for found in present if found is not None)
        values = [None if f is None else dataclasses.asdict(f[1]) for f in present]
        if op == "gaussian_blur" and all(
            v is None or size <= v["skip_at_or_below"]
            for v, size in zip(values, (p.size for p in pipelines), strict=True)
        ):
            continue
        shown = [v for v in values if v is not None]
        keys = [k for k in shown[0] if any(v[k] != shown[0][k] for v in shown)]
        if not keys and len(shown) == len(values):
            continue  # the same in every variant
        label = OP_NAMES.get(op, op.replace("_", " ")) if entry == op else entry
        for note, v in zip(notes, values, strict=True):
            settings = "" if v is None else " ".join(f"{k}={_value(v[k])}" for k in keys)
            note.append(f"no {label}" if v is None else f"{label} {settings}".rstrip())
    return [", ".join(note) or "the shared ops" for note in notes]


def _captions(pipeline: Pipeline, labels: Mapping[str, Tensor], row: int) -> str:
    ops = {entry: (op, params) for entry, op, params in pipeline.spec}
    notes = []
    for name, value in labels.items():
        op, params = ops.get(name, (name, None))
        notes.append(caption(name, op, params, value.detach().cpu(), row))
    return "\n".join(notes)


def make_gallery(cfg: DictConfig, out: Path, n_images: int = 4, n_views: int = 6) -> Path:
    """Draw the views of ``cfg.transform`` (and ``cfg.method``'s local views) to a PNG.

    Rows are ``n_images`` images of different classes from the seeded, class-stratified
    training subset of ``cfg.dataset``; columns the original, ``n_views`` global views and
    the method's local views. Deterministic for a given config and seed. The file is written
    to a temporary name in ``out``'s folder and renamed into place; returns ``out``.
    """
    from sslbench.data.splits import open_data  # Lightning, timm: only when drawing

    out = Path(out)
    if n_images < 1 or n_views < 1:
        raise ValueError(f"need at least one image and one view, got {n_images} and {n_views}")
    cfg = copy.deepcopy(cfg)
    if cfg.dataset.max_train is None:
        OmegaConf.update(cfg, "dataset.max_train", max(POOL_SIZE, n_images), merge=False)
    data = open_data(cfg, progress=False)
    train = data.train
    idx = pick_images(train.labels, data.train_indices, n_images)
    images = torch.from_numpy(np.ascontiguousarray(train.images[idx]))
    aspect = torch.from_numpy(train.aspect[idx])
    size = int(cfg.image_size)

    transform: dict[str, Any] = OmegaConf.to_container(cfg.transform, resolve=True)
    pipelines = view_pipelines(transform, size)
    n_local, local = local_view_pipeline(pipelines[0], cfg.method.get("local_views"))

    variants = variant_notes(pipelines)
    letters = [chr(ord("A") + v) if v < 26 else str(v + 1) for v in range(len(variants))]
    gen = make_generator(int(cfg.seed), "cpu", GALLERY_STREAM)
    columns: list[tuple[str, np.ndarray, list[str]]] = []
    originals = center_view(images, aspect, size)
    columns.append(("original", originals.clamp(0, 1).permute(0, 2, 3, 1).numpy(), []))
    with torch.no_grad():
        for i in range(n_views):
            pipeline = pipelines[i % len(pipelines)]
            batch = pipeline.views(images, aspect, gen)
            notes = [_captions(pipeline, batch.labels, r) for r in range(len(idx))]
            name = f"view {i + 1}" + (f" ({letters[i % len(letters)]})" if letters else "")
            columns.append((name, for_display(batch.images, pipeline), notes))
        if local is not None:
            for i in range(n_local):
                batch = local.views(images, aspect, gen)
                notes = [_captions(local, batch.labels, r) for r in range(len(idx))]
                columns.append((f"local {i + 1}", for_display(batch.images, local), notes))

    classes = list(train.classes)
    row_names = [
        classes[int(train.labels[i])] if 0 <= int(train.labels[i]) < len(classes) else f"#{i}"
        for i in idx
    ]
    title = f"transform={transform.get('name', '?')} on {cfg.dataset.name}, {size} px"
    if n_local > 0:
        title += f", method={cfg.method.name} local views"
    title += f", seed {cfg.seed}"
    # which variant a view column is (its letter) and what the variant changes
    for letter, note in zip(letters, variants, strict=True):
        title += f"\nview {letter}: {note}"
    _draw(columns, row_names, title, out)
    return out


def _draw(
    columns: list[tuple[str, np.ndarray, list[str]]], row_names: list[str], title: str, out: Path
) -> None:
    n_rows, n_cols = len(row_names), len(columns)
    note_lines = max((note.count("\n") + 1 for _, _, notes in columns for note in notes if note),
                     default=0)  # fmt: skip
    cell = 1.3
    fig = Figure(
        figsize=(n_cols * cell + 0.4, n_rows * (cell + 0.15 * note_lines) + 0.5),
        dpi=100,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for c, (name, pictures, notes) in enumerate(columns):
        for r in range(n_rows):
            ax = axes[r, c]
            ax.imshow(pictures[r], interpolation="nearest", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(row_names[r], fontsize=8)
            if notes and notes[r]:
                ax.set_xlabel(notes[r], fontsize=7)
    fig.suptitle(title, fontsize=10)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    # results' writer: temporary file and rename, readable by others as the run's files are
    atomic_write_bytes(out, png.getvalue())
