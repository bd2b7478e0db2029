"""``sslbench gallery``: a PNG grid of what an augmentation pipeline does to real images.

One row per image (a few images of different classes from the run's seeded, class-stratified
training subset): the original (centre view at ``image_size``), then augmented global views
(view i from the transform's variant ``i % variants``), then the method's local views if it
has any (SwAV, VICRegL). Views are shown un-normalised; views with pretext labels (LoRot,
region confusion) get a short caption. Imported only by the command line, after validation.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from sslbench.transforms import Pipeline, center_view, make_generator
from sslbench.transforms.pipeline import local_view_pipeline, view_pipelines

#: Images drawn from when the config sets no ``dataset.max_train``: enough for every class.
POOL_SIZE = 1000
#: Stream id of the gallery's generator (training streams are (seed, rank, epoch, step)).
GALLERY_STREAM = 0x6A11E7
#: Short names of pretext ops in captions.
SHORT_NAMES = {"region_confusion": "rcm"}


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


def caption(name: str, op: str, params: Any, labels: Tensor, row: int) -> str:
    """A short caption for one sample's pretext label, e.g. ``lorot k=2``, ``lorot q=1 k=3``
    (LoRot-E: quadrant and quarter turns) or ``rcm moved 17/49`` (tiles out of place)."""
    short = SHORT_NAMES.get(op, op if name == op else name)
    value = labels[row]
    if value.ndim == 0:  # a class: LoRot's k, or 4 * quadrant + k for LoRot-E
        v = int(value)
        if op == "lorot" and getattr(params, "variant", None) == "E":
            return f"{short} q={v // 4} k={v % 4}"
        return f"{short} k={v}" if op == "lorot" else f"{short} {v}"
    flat = value.reshape(-1)
    if not flat.is_floating_point() and flat.numel() > 1:  # a permutation of tiles
        moved = int((flat != torch.arange(flat.numel(), dtype=flat.dtype)).sum())
        return f"{short} moved {moved}/{flat.numel()}"
    return short


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
    from sslbench.train import open_data  # Lightning, timm: only when drawing

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

    gen = make_generator(int(cfg.seed), "cpu", GALLERY_STREAM)
    columns: list[tuple[str, np.ndarray, list[str]]] = []
    originals = center_view(images, aspect, size)
    columns.append(("original", originals.clamp(0, 1).permute(0, 2, 3, 1).numpy(), []))
    with torch.no_grad():
        for i in range(n_views):
            pipeline = pipelines[i % len(pipelines)]
            batch = pipeline.views(images, aspect, gen)
            notes = [_captions(pipeline, batch.labels, r) for r in range(len(idx))]
            columns.append((f"view {i + 1}", for_display(batch.images, pipeline), notes))
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
