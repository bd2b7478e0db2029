"""What a grid will cost, said before it runs (``sslbench pretrain -m ... --dry-run``).

Three things a list of folders does not say: the device the runs would use (no GPU means a
CPU, hopeless at 224 px), the data that must be downloaded first (name and size, from the
catalogue), and the expected time. The time is an estimate and says where it comes from:

1. epochs measured on this machine: ``epoch_seconds`` in the ``metrics.csv`` of run folders
   beside the grid's (same method, pipeline, pretext task, dataset, backbone, image size,
   batch size and device; a run folder's own epochs first), per training image;
2. else the figures the docs give for ResNet-18: one H200's epochs at the study's protocol
   (docs/grids.md), or a 2-core CPU's images/s by image size (docs/benchmarks.md);
3. else none, and the line says how many runs have none.

Nothing here imports torch or downloads anything: a dry run stays a fraction of a minute.
"""

from __future__ import annotations

import csv
import os
import socket
import statistics
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sslbench.data.catalog import CATALOG
from sslbench.data.listing import cache_estimate, human_bytes
from sslbench.data.listing import status as data_status
from sslbench.host import available_cores
from sslbench.pretext import pretext_name
from sslbench.run.results import TIME_FORMAT, read_results

#: One NVIDIA H200, the study's protocol (ResNet-18, 224 px, batch 256, bf16 autocast) on
#: imagenette2's 9,469 training images: (first, steady) epoch seconds of each method with the
#: baseline pipeline (docs/grids.md; benchmarks/results/study_time_h200.jsonl, 2026-11-30).
H200_EPOCH_SECONDS: dict[str, tuple[float, float]] = {
    "simclr": (7.94, 6.53), "simsiam": (7.40, 6.40), "swav": (9.30, 8.14),
    "byol": (7.56, 7.03), "barlowtwins": (6.91, 6.28), "vicreg": (7.56, 6.57),
    "vicregl": (16.05, 14.23),
}  # fmt: skip
H200_IMAGES = 9_469

#: A pipeline's epoch time relative to the baseline pipeline's, measured with SimCLR on the
#: H200 (docs/grids.md).
PIPELINE_FACTORS: dict[str, float] = {
    "baseline": 1.0, "simclr": 0.97, "orthogonality": 0.81, "lorot": 0.79, "dcl": 0.80,
}  # fmt: skip

#: Start-up, cache opening and evaluation of a study run on the H200, minutes (docs/grids.md).
H200_RUN_OVERHEAD_MIN = 0.5

#: ResNet-18's training images/s by image size on the 2-core CPU: SimCLR with its pipeline,
#: batch 128 (docs/benchmarks.md, "How cost grows", 2026-12-01).
CPU_RESNET18_IMAGES_PER_S: dict[int, float] = {32: 200.0, 64: 57.0, 128: 14.8, 224: 4.2}

#: Image size from which a CPU is called slow: 128 px trains 15 images/s on 2 cores.
SLOW_ON_CPU_PX = 128

#: What the summary says of each source of the docs' figures.
SOURCES = {
    "h200": "one NVIDIA H200's epochs at the study's protocol (docs/grids.md, 2026-11-30), "
    "plus half a minute a run of start-up and evaluation",
    "cpu": "a 2-core CPU's ResNet-18 images/s at that size (SimCLR; docs/benchmarks.md, "
    "2026-12-01) x each method's and pipeline's cost relative to SimCLR's on an H200 "
    "(docs/grids.md); pretraining only",
}


@dataclass(frozen=True)
class Estimate:
    """A run's expected minutes, and where they come from: a key of :data:`SOURCES`, or
    ``here`` (epochs measured on this machine)."""

    minutes: float
    source: str


@dataclass(frozen=True)
class Measured:
    """A run folder's measured epochs on this machine."""

    kind: tuple[Any, ...]  # what a run must share with it to be timed by it (:func:`kind_of`)
    seconds_per_image: float  # a steady epoch's seconds per training image
    images: int  # its training images
    epochs_done: int  # 0 once completed: its epochs are no longer to run
    overhead_seconds: float | None  # a completed run's time outside its epochs
    folder: Path


# ---------------------------------------------------------------- the device


def gpu_names() -> list[str]:
    """The GPUs a run started here could use (``nvidia-smi -L``, narrowed by
    ``CUDA_VISIBLE_DEVICES``), found without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        lines = out.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        lines = []
    # "GPU 0: NVIDIA H200 (UUID: GPU-...)"
    names = [line.split(":", 1)[1].split("(UUID")[0].strip()
             for line in lines if line.startswith("GPU ") and ":" in line]  # fmt: skip
    if visible is None:
        return names
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    return [names[int(i)] if i.isdigit() and int(i) < len(names) else f"GPU {i}" for i in ids]


def device_of(cfg: DictConfig, gpus: Sequence[str]) -> str:
    """``gpu`` or ``cpu``, as the run would pick (``device=auto``: a GPU when there is one),
    or ``none`` for ``device=cuda`` without a GPU."""
    if cfg.device == "cpu":
        return "cpu"
    if gpus:
        return "gpu"
    return "none" if cfg.device == "cuda" else "cpu"


def device_line(cfgs: Sequence[DictConfig], gpus: Sequence[str]) -> str:
    """``device: ...``: what the runs would train on, and a word when that is hopeless."""
    kinds = Counter(device_of(cfg, gpus) for cfg in cfgs)
    parts = []
    if kinds["gpu"]:
        more = f" (and {len(gpus) - 1} more GPUs)" if len(gpus) > 1 else ""
        parts.append(f"GPU, {gpus[0]}{more}")
    if kinds["cpu"]:
        asked = {str(cfg.device) for cfg in cfgs if device_of(cfg, gpus) == "cpu"}
        why = "device=cpu" if gpus or asked == {"cpu"} else "no GPU found here"
        largest = max(int(cfg.image_size) for cfg in cfgs if device_of(cfg, gpus) == "cpu")
        slow = ""
        if largest >= SLOW_ON_CPU_PX:
            slow = (f"; {largest} px on a CPU is slow (ResNet-18 at 224 px trains about "
                    f"{CPU_RESNET18_IMAGES_PER_S[224]:g} images/s on 2 cores, "
                    "docs/benchmarks.md): such runs are meant for a GPU")  # fmt: skip
        parts.append(f"CPU ({why}, {available_cores()} cores){slow}")
    if kinds["none"]:
        parts.append("device=cuda but no GPU found here: those runs would fail (device=auto or "
                     "cpu runs them on the CPU)")  # fmt: skip
    return "device: " + "; ".join(parts)


# ---------------------------------------------------------------- the data


def _bytes(size: int | None) -> str:
    return "size unknown" if size is None else human_bytes(size)


def data_lines(cfgs: Sequence[DictConfig]) -> list[str]:
    """What must be downloaded before the runs can start (name, size, how), and which data
    is here already; as ``sslbench datasets list`` finds it, without downloading."""
    lines, ready = [], []
    for name, path, size in dict.fromkeys(
        (str(cfg.dataset.name), cfg.dataset.path, int(cfg.image_size)) for cfg in cfgs
    ):
        if path is not None:
            if not Path(str(path)).expanduser().exists():
                lines.append(f"data: dataset.path={path} ({name}) does not exist")
            else:
                ready.append(f"{name} from {path}")
            continue
        state = data_status(name)
        if state != "not downloaded":
            ready.append(f"{name} ({state})")
            continue
        info = CATALOG[name]
        if info.archive is None:
            how = (f"by hand after accepting its terms at {info.homepage}, then "
                   "dataset.path=FILE_OR_FOLDER" if name == "nabirds"
                   else "the first run fetches it (docs/datasets.md)")  # fmt: skip
            lines.append(f"download first: {name}, {how}")
            continue
        cache = cache_estimate(info)
        then = ""
        if cache is not None and size == info.default_image_size:
            then = f", then its decode-once cache takes {_bytes(cache[1])} at {cache[0]} px"
        lines.append(
            f"download first: {name}, {_bytes(info.archive.size or info.approx_bytes)}{then} "
            f"(sslbench datasets prepare {name}; else the first run fetches it)"
        )
    if ready:
        lines.append(f"data here: {', '.join(dict.fromkeys(ready))}")
    return lines


# ---------------------------------------------------------------- the time


def planned_images(dataset: str, max_train: int | None) -> int | None:
    """The training images a run pretrains on, from the catalogue's published counts."""
    info = CATALOG.get(dataset)
    total = None
    if info is not None and info.train is not None:
        total = info.train + (info.unlabeled or 0)  # STL-10 pretrains on train + unlabeled
    if max_train is None:
        return total
    return max_train if total is None else min(int(max_train), total)


def kind_of(method: Any, transform: Any, pretext: Any, dataset: Any, backbone: Any,
            image_size: Any, batch_size: Any, device: str) -> tuple[Any, ...]:  # fmt: skip
    """What two runs must share for one's measured epochs to time the other's."""
    return (str(method), str(transform), pretext, str(dataset), str(backbone),
            int(image_size), int(batch_size), device)  # fmt: skip


def _cfg_kind(cfg: DictConfig, device: str) -> tuple[Any, ...]:
    pretext = pretext_name(cfg.get("pretext"))
    return kind_of(cfg.method.name, cfg.transform.get("name"), pretext, cfg.dataset.name,
                   cfg.backbone.name, cfg.image_size, cfg.batch_size, device)  # fmt: skip


def _epoch_seconds(folder: Path) -> list[float]:
    try:
        with open(folder / "metrics.csv", newline="") as handle:
            return [float(row["epoch_seconds"]) for row in csv.DictReader(handle)
                    if row.get("epoch_seconds")]  # fmt: skip
    except (OSError, ValueError, KeyError):
        return []


def _overhead(results: dict[str, Any], epoch_seconds: float) -> float | None:
    """A completed run's seconds outside its epochs (start-up, cache, evaluation)."""
    try:
        started, finished = (datetime.strptime(str(results[key]), TIME_FORMAT)
                             for key in ("started_at", "finished_at"))  # fmt: skip
    except (KeyError, ValueError):
        return None
    return max(0.0, (finished - started).total_seconds() - epoch_seconds)


def measured_here(roots: Sequence[Path]) -> dict[Path, Measured]:
    """The run folders in ``roots`` that ran on this machine (``process.host`` in their
    results.json) and logged epochs, by folder."""
    host = socket.gethostname()
    found: dict[Path, Measured] = {}
    for root in roots:
        for results_file in sorted(Path(root).glob("*/results.json")):
            folder = results_file.parent
            try:
                results = read_results(folder)
            except (OSError, ValueError):
                continue
            process = results.get("process")
            epochs = _epoch_seconds(folder)
            images = results.get("train_images") or planned_images(
                str(results.get("dataset")), results.get("max_train")
            )
            if not isinstance(process, dict) or process.get("host") != host or not epochs:
                continue
            if not images or results.get("image_size") is None:
                continue
            steady = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
            device = "gpu" if results.get("peak_gpu_memory_bytes") else "cpu"
            kind = kind_of(results.get("method"), results.get("transform"),
                           results.get("pretext"), results.get("dataset"),
                           results.get("backbone"), results["image_size"],
                           results.get("batch_size") or 0, device)  # fmt: skip
            completed = results.get("status") == "completed"
            overhead = _overhead(results, sum(epochs)) if completed else None
            done = 0 if completed else len(epochs)
            found[folder] = Measured(kind, steady / images, int(images), done, overhead, folder)
    return found


def gpu_reference(cfg: DictConfig) -> Estimate | None:
    """The run's time on one H200 by the docs' figures (None where they do not apply)."""
    images = planned_images(str(cfg.dataset.name), cfg.dataset.max_train)
    return None if images is None else _reference(cfg, "gpu", images)


def _reference(cfg: DictConfig, device: str, images: int) -> Estimate | None:
    """The docs' figures for this run, for ResNet-18 (the study's backbone) only."""
    method, pipeline = str(cfg.method.name), str(cfg.transform.get("name"))
    if (cfg.backbone.name != "resnet18" or method not in H200_EPOCH_SECONDS
            or pipeline not in PIPELINE_FACTORS or pretext_name(cfg.get("pretext"))):  # fmt: skip
        return None  # pretext heads were not measured
    first, steady = H200_EPOCH_SECONDS[method]
    factor = PIPELINE_FACTORS[pipeline] * images / H200_IMAGES
    if device == "gpu":
        if cfg.image_size != 224 or cfg.batch_size != 256:
            return None
        seconds = (first + (cfg.epochs - 1) * steady) * factor
        return Estimate(seconds / 60 + H200_RUN_OVERHEAD_MIN, "h200")
    if device != "cpu":
        return None
    # the nearest measured size, scaled by pixels (cost grew as the pixels did: 48x for 49x)
    side = min(CPU_RESNET18_IMAGES_PER_S, key=lambda s: abs(s - cfg.image_size))
    per_image = (cfg.image_size / side) ** 2 / CPU_RESNET18_IMAGES_PER_S[side]
    relative = (steady / H200_EPOCH_SECONDS["simclr"][1]) * (
        PIPELINE_FACTORS[pipeline] / PIPELINE_FACTORS["simclr"]
    )
    return Estimate(per_image * relative * images * cfg.epochs / 60, "cpu")


def estimate(cfg: DictConfig, device: str, measured: dict[Path, Measured]) -> Estimate | None:
    """The minutes the run still needs: from its own folder's epochs, else from runs like it
    measured here, else from the docs' figures; None when none applies."""
    kind = _cfg_kind(cfg, device)
    alike = [m for m in measured.values() if m.kind == kind]
    overheads = [m.overhead_seconds for m in alike if m.overhead_seconds is not None]
    overhead = statistics.median(overheads) if overheads else 0.0
    own = measured.get(Path(cfg.run_dir))
    if own is not None and own.kind == kind:
        left = max(0, int(cfg.epochs) - own.epochs_done)
        return Estimate((own.seconds_per_image * own.images * left + overhead) / 60, "here")
    images = planned_images(str(cfg.dataset.name), cfg.dataset.max_train)
    if images is None:
        return None
    if alike:
        per_image = statistics.median(m.seconds_per_image for m in alike)
        return Estimate((per_image * images * cfg.epochs + overhead) / 60, "here")
    return _reference(cfg, device, images)


def duration(minutes: float, days: bool = True) -> str:
    """``40 s``, ``22 min``, ``3.5 h``, ``125 h``; from 48 h with ``days``: ``6,245 h (260
    days)``."""
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 90:
        return f"{minutes:.0f} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} h"
    hours = f"{minutes / 60:,.0f} h"
    return f"{hours} ({minutes / 1440:,.0f} days)" if days else hours


def time_lines(
    estimates: Sequence[Estimate | None],
    roots: Sequence[Path],
    gpus: Sequence[str],
    jobs: int,
    on_gpu: Sequence[Estimate | None] = (),
) -> list[str]:
    """The grid's expected time, with the source of each part, for the runs to run;
    ``on_gpu``: the same runs' estimates on a GPU, said beside a CPU's when all have one."""
    if not estimates:
        return ["expected time: nothing to run"]
    known = [e for e in estimates if e is not None]
    total = sum(e.minutes for e in known)
    head = (f"expected time (an estimate, one run at a time): about {duration(total)} for "
            f"{len(known)} of the {len(estimates)} runs to run")  # fmt: skip
    if len(known) == len(estimates):
        head = (f"expected time (an estimate, one run at a time): about {duration(total)} for "
                f"the {len(estimates)} runs to run")  # fmt: skip
    lines = [head]
    counts = Counter(e.source for e in known)
    for source, count in counts.most_common():
        if source == "here":
            where = ", ".join(str(r) for r in roots)
            text = (f"epochs measured on this machine ({socket.gethostname()}) in {where}, "
                    "plus its completed runs' start-up and evaluation")  # fmt: skip
        else:
            text = SOURCES[source]
        if source == "h200" and gpus and "H200" not in gpus[0]:
            text += f"; this machine's GPU is {gpus[0]}"
        if source == "cpu":
            text += f"; this machine has {available_cores()} cores"
        lines.append(f"  {count} run{'s' if count > 1 else ''} from {text}")
    gpu_known = [e.minutes for e in on_gpu if e is not None]
    if not gpus and on_gpu and len(gpu_known) == len(on_gpu):
        lines.append(f"  on one GPU instead: about {duration(sum(gpu_known))} ({SOURCES['h200']})")
    if len(known) < len(estimates):
        lines.append(
            f"  {len(estimates) - len(known)} without an estimate: no run like them measured "
            "here, and the docs' figures are for ResNet-18 without a pretext head (on a GPU: "
            "224 px, batch 256)"
        )
    if jobs > 1:
        lines.append(
            f"  grid.jobs={jobs} runs {jobs} at once: on one H200, 2 SimCLR runs at once took "
            "1.85x less time (docs/grids.md); on a CPU they share its cores"
        )
    return lines
