"""lightly's Imagenette benchmark, for ``sslbench report --reference lightly``.

Source: the results table in the docstring of lightly's
``docs/source/getting_started/benchmarks/imagenette_benchmark.py``, "Results (4.5.2023)",
also rendered in lightly's documentation (Getting started, Benchmarks, ImageNette).
Protocol of those runs: imagenette2-160 (train 9,469 / val 3,925 images) resized to 128 px,
torchvision ResNet-18 from scratch (ViTs where named), batch 256, one A6000 GPU; a kNN
classifier (k=200, temperature 0.1) on the validation set after every epoch, and the table
reports the **best epoch's** kNN top-1 ("max_accuracy"), not the last epoch's. Runtime in
minutes and peak GPU memory in GB are lightly's. Each method ran with its own augmentation
pipeline (lightly's transform for it), so its value applies to whichever pipeline a run of
ours used. VICRegL used lightly's ``VICRegLLoss`` at its default α = 0.75.

``lightly_imagenette.csv`` (package data) holds that table: ``model`` (lightly's name),
``method`` (sslbench's name; ViT methods not in sslbench keep their lightly names),
``backbone``, ``batch_size``, ``epochs`` (200 or 800), ``knn_top1`` (a fraction),
``minutes``, ``peak_gpu_gb``. Its number stands beside our ``knn_top1`` (kNN at the same
k=200, T=0.1: sslbench's default setting), matched by method and epochs, on runs of
``imagenette2-160``.
"""

from __future__ import annotations

from functools import cache

from sslbench.report.model import RowKey, SectionKey
from sslbench.report.reference import (
    Protocol,
    Reference,
    ReferenceCell,
    alpha_key,
    optional_float,
    package_csv,
)

LIGHTLY_PROTOCOL = Protocol(
    datasets=("imagenette2-160",),
    backbone="resnet18",
    image_size=128,
    epochs=(200, 800),
    batch_size=256,
)
#: Methods with a parameter per row (VICRegL's α): the value lightly's runs used.
LIGHTLY_ALPHA = {"vicregl": 0.75}


@cache
def lightly_cells() -> dict[tuple[str, int], ReferenceCell]:
    """(sslbench method, epochs) -> lightly's cell (kNN top-1, minutes, GB)."""
    cells = {}
    for row in package_csv("lightly_imagenette.csv"):
        top1 = optional_float(row["knn_top1"])
        if top1 is None:
            continue
        backbone = row["backbone"]
        note = None
        if backbone != LIGHTLY_PROTOCOL.backbone:
            note = f"lightly: {row['model']} trained {backbone}"
        cells[(row["method"], int(row["epochs"]))] = ReferenceCell(
            top1=top1,
            minutes=optional_float(row["minutes"]),
            peak_gpu_gb=optional_float(row["peak_gpu_gb"]),
            note=note,
        )
    return cells


class LightlyReference(Reference):
    """lightly's Imagenette benchmark: kNN top-1 per method at 200 and 800 epochs."""

    name = "lightly"
    subject = "lightly's Imagenette benchmark"
    owner = "lightly's"
    scores = "knn"
    metric = "knn_top1"
    protocol = LIGHTLY_PROTOCOL
    legend = (
        "lightly: kNN top-1 of lightly's Imagenette benchmark (imagenette2-160 at 128 px, "
        "ResNet-18, batch 256, 200 or 800 epochs; k=200, T=0.1; the best epoch's); "
        "Δ: yours − lightly's."
    )

    def lookup(self, key: SectionKey, row: RowKey, transform: str) -> ReferenceCell | None:
        if key.dataset not in self.protocol.datasets:
            return None
        if row.alpha is not None and alpha_key(row.alpha) != alpha_key(
            LIGHTLY_ALPHA.get(row.method)
        ):
            return None
        return lightly_cells().get((row.method, key.epochs))

    def remarks(self, key: SectionKey) -> list[str]:
        missing = self.no_numbers(key.dataset)
        if missing:
            return missing
        epochs = " and ".join(str(e) for e in self.protocol.epochs)
        lines = []
        if key.epochs not in self.protocol.epochs:
            lines.append(
                f"lightly's benchmark exists only at {epochs} epochs; these runs trained "
                f"{key.epochs}: no lightly value beside them."
            )
        differences = self.protocol.differences(key, epochs=False)
        if differences:
            lines.append(
                f"lightly trained {self.protocol.describe()}; these runs differ "
                f"({', '.join(differences)}), so the difference is no reproduction check."
            )
        lines.extend(
            [
                "lightly ran each method with its own augmentation pipeline: its value stands "
                "beside every pipeline column, whichever pipeline the runs used.",
                "lightly reports the best epoch's kNN top-1 (kNN after every epoch), sslbench "
                "the last epoch's: Δ leans negative by the gap between the two.",
            ]
        )
        return lines

    def cost_remarks(self, key: SectionKey) -> list[str]:
        if self.no_numbers(key.dataset):
            return []
        return [
            "lightly's minutes / GB: one A6000 GPU, its kNN evaluation after every epoch included."
        ]
