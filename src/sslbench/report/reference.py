"""The study's published numbers, for ``sslbench report --reference study``.

``study_results.csv`` (package data, a copy of the team's ../shared/study_results.csv)
holds every published cell of the study sslbench grows out of: ResNet-18 at 224 px,
200 epochs, batch 256, linear probe top-1 (and top-5 on NABirds), pretraining minutes and
peak GPU memory. Its dataset names are the study's; here they become sslbench's.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

#: The study's dataset names -> sslbench's.
STUDY_DATASETS = {
    "imagenette": "imagenette2",
    "imagenette2-160": "imagenette2-160",
    "imagewoof": "imagewoof2",
    "nabirds": "nabirds",
}

#: What every study run shared (its text, ../shared/study/): the report says when yours differ.
STUDY_BACKBONE = "resnet18"
STUDY_IMAGE_SIZE = 224
STUDY_EPOCHS = 200
STUDY_BATCH_SIZE = 256


@dataclass(frozen=True)
class StudyCell:
    """One published cell of the study."""

    top1: float
    top5: float | None
    minutes: float | None
    peak_gpu_gb: float | None
    note: str | None  # e.g. "at or below chance (10 classes): a failed run"


def alpha_key(alpha: float | None) -> float | None:
    """α as a lookup key: 0.5 (results.json) and "0.50" (the study's CSV) meet."""
    return None if alpha is None else round(float(alpha), 6)


def _optional_float(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    value = float(text)
    return value if math.isfinite(value) else None


@cache
def study_cells() -> dict[tuple[str, str, float | None, str], StudyCell]:
    """(sslbench dataset, method, α key, transform) -> the study's cell."""
    text = resources.files("sslbench.report").joinpath("study_results.csv").read_text("utf-8")
    cells: dict[tuple[str, str, float | None, str], StudyCell] = {}
    for row in csv.DictReader(io.StringIO(text)):
        dataset = STUDY_DATASETS[row["dataset"]]
        key = (dataset, row["method"], alpha_key(_optional_float(row["alpha"])), row["transform"])
        top1 = _optional_float(row["top1"])
        if top1 is None:
            continue
        cells[key] = StudyCell(
            top1=top1,
            top5=_optional_float(row["top5"]),
            minutes=_optional_float(row["minutes"]),
            peak_gpu_gb=_optional_float(row["peak_gpu_gb"]),
            note=row["note"].strip() or None,
        )
    return cells


def study_cell(dataset: str, method: str, alpha: float | None, transform: str) -> StudyCell | None:
    return study_cells().get((dataset, method, alpha_key(alpha), transform))


def study_has_dataset(dataset: str) -> bool:
    return dataset in STUDY_DATASETS.values()


def study_has_top5(dataset: str) -> bool:
    return any(k[0] == dataset and c.top5 is not None for k, c in study_cells().items())
