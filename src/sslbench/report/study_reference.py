"""The study's published numbers, for ``sslbench report --reference study``.

``study_results.csv`` (package data, a copy of the team's ../shared/study_results.csv)
holds every published cell of the study sslbench grows out of: ResNet-18 at 224 px,
200 epochs, batch 256, linear probe top-1 (and top-5 on NABirds), pretraining minutes and
peak GPU memory, per dataset, method (VICRegL per α) and augmentation pipeline. Its
dataset names are the study's; here they become sslbench's.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sslbench.report.model import RowKey, SectionKey
from sslbench.report.reference import (
    Protocol,
    Reference,
    ReferenceCell,
    alpha_key,
    optional_float,
    package_csv,
)

#: The study's dataset names -> sslbench's.
STUDY_DATASETS = {
    "imagenette": "imagenette2",
    "imagenette2-160": "imagenette2-160",
    "imagewoof": "imagewoof2",
    "nabirds": "nabirds",
}

#: What every study run shared (its text, ../shared/study/).
STUDY_PROTOCOL = Protocol(
    datasets=tuple(STUDY_DATASETS.values()),
    backbone="resnet18",
    image_size=224,
    epochs=(200,),
    batch_size=256,
)


@cache
def study_cells() -> dict[tuple[str, str, float | None, str], ReferenceCell]:
    """(sslbench dataset, method, α key, transform) -> the study's cell."""
    cells: dict[tuple[str, str, float | None, str], ReferenceCell] = {}
    for row in package_csv("study_results.csv"):
        dataset = STUDY_DATASETS[row["dataset"]]
        key = (dataset, row["method"], alpha_key(optional_float(row["alpha"])), row["transform"])
        top1 = optional_float(row["top1"])
        if top1 is None:
            continue
        cells[key] = ReferenceCell(
            top1=top1,
            top5=optional_float(row["top5"]),
            minutes=optional_float(row["minutes"]),
            peak_gpu_gb=optional_float(row["peak_gpu_gb"]),
            note=row["note"].strip() or None,
        )
    return cells


def study_cell(
    dataset: str, method: str, alpha: float | None, transform: str
) -> ReferenceCell | None:
    return study_cells().get((dataset, method, alpha_key(alpha), transform))


def study_has_top5(dataset: str) -> bool:
    return any(k[0] == dataset and c.top5 is not None for k, c in study_cells().items())


class StudyReference(Reference):
    """The study: linear-probe top-1 (top-5 on NABirds) per method, α and pipeline."""

    name = "study"
    subject = "The study"
    owner = "the study's"
    scores = "linear"
    metric = "linear_top1"
    protocol = STUDY_PROTOCOL
    legend = (
        "study: the published value of the study (ResNet-18, 224 px, 200 epochs, batch 256); "
        "Δ: yours − the study's."
    )

    def kinds(self, dataset: str) -> tuple[str, ...]:
        return ("top1", "top5") if study_has_top5(dataset) else ("top1",)

    def lookup(self, key: SectionKey, row: RowKey, transform: str) -> ReferenceCell | None:
        return study_cell(key.dataset, row.method, row.alpha, transform)

    def remarks(self, key: SectionKey) -> list[str]:
        missing = self.no_numbers(key.dataset)
        if missing:
            return missing
        differences = self.protocol.differences(key)
        if not differences:
            return []
        return [
            f"The study trained {self.protocol.describe()}; these runs differ "
            f"({', '.join(differences)}), so the difference is no reproduction check."
        ]

    def record(
        self, key: SectionKey, row: RowKey, transform: str, ours: float | None
    ) -> dict[str, Any]:
        """The generic fields, and the study's own columns (kept where CSV readers look)."""
        cell = self.cell(key, row, transform)
        fields = super().record(key, row, transform, ours)
        fields.update(
            {
                "study_top1": None if cell is None else cell.top1,
                "study_top5": None if cell is None else cell.top5,
                "diff": fields["reference_diff"],
                "study_note": None if cell is None else cell.note,
            }
        )
        return fields
