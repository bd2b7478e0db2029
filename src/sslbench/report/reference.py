"""Published numbers beside ours: ``sslbench report --reference study|lightly``.

A reference is a set of published cells and the protocol that produced them. The tables
ask it, through :class:`Reference`, which accuracy tables get its columns (the metric it
scores: the linear probe or kNN), its cell for a row and pipeline (its value, and its
minutes and GB for the cost table), and the remarks a reader needs under the table (a
dataset it has no numbers for, runs trained otherwise than its protocol). Two exist:
study_reference.StudyReference (the study sslbench grows out of: linear top-1) and
lightly_reference.LightlyReference (lightly's Imagenette benchmark: kNN top-1); the
package's ``REFERENCES`` names them. A reference cell never stands beside a row with a
pretext task or a reference row (supervised, random init): neither published one.
"""

from __future__ import annotations

import csv
import io
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

from sslbench.report.model import RowKey, SectionKey


@dataclass(frozen=True)
class ReferenceCell:
    """One published cell."""

    top1: float  # the published top-1 of the metric the reference scores (linear or kNN)
    top5: float | None = None
    minutes: float | None = None  # its pretraining minutes and peak GPU memory (GB)
    peak_gpu_gb: float | None = None
    note: str | None = None  # e.g. "at or below chance (10 classes): a failed run"


@dataclass(frozen=True)
class Protocol:
    """What every published run shared: the report says when ours differ."""

    datasets: tuple[str, ...]  # sslbench's names of the datasets it has numbers for
    backbone: str
    image_size: int
    epochs: tuple[int, ...]  # the budgets it published
    batch_size: int

    def describe(self) -> str:
        """ "resnet18 at 224 px for 200 epochs, batch 256"."""
        epochs = " or ".join(str(e) for e in self.epochs)
        size = f"{self.image_size} px"
        return f"{self.backbone} at {size} for {epochs} epochs, batch {self.batch_size}"

    def differences(self, key: SectionKey, *, epochs: bool = True) -> list[str]:
        """How a section's runs were trained otherwise ("backbone resnet50", "128 px")."""
        found = []
        if key.backbone != self.backbone:
            found.append(f"backbone {key.backbone or '?'}")
        if key.image_size != self.image_size:
            found.append(f"{key.image_size} px")
        if epochs and key.epochs not in self.epochs:
            found.append(f"{key.epochs} epochs")
        if key.batch_size != self.batch_size:
            found.append(f"batch {key.batch_size}")
        return found


class Reference(ABC):
    """A source of published cells, as the tables ask it."""

    name: ClassVar[str]  # the --reference choice, and its columns' name ("simclr study")
    subject: ClassVar[str]  # the source at a sentence's start: "The study"
    owner: ClassVar[str]  # its possessive: "the study's", "lightly's"
    scores: ClassVar[str]  # what its top1 is: "linear" (the linear probe) or "knn"
    metric: ClassVar[str]  # the results.json field it stands beside: linear_top1, knn_top1
    protocol: ClassVar[Protocol]
    legend: ClassVar[str]  # one line for the top of the report

    def kinds(self, dataset: str) -> tuple[str, ...]:
        """The accuracy tables (their kind) that get its value and Δ beside each pipeline;
        the first is the table of ``metric``, the one its long-form Δ is taken in."""
        return ("top1",) if self.scores == "linear" else ("knn",)

    def cell(self, key: SectionKey, row: RowKey, transform: str) -> ReferenceCell | None:
        """Its cell for a row and pipeline of a section; none for a row with a pretext
        task or a reference row (supervised, random init)."""
        if row.pretext is not None or row.bound is not None:
            return None
        return self.lookup(key, row, transform)

    @abstractmethod
    def lookup(self, key: SectionKey, row: RowKey, transform: str) -> ReferenceCell | None:
        """Its cell for an SSL method's row, if it published one."""

    @abstractmethod
    def remarks(self, key: SectionKey) -> list[str]:
        """Lines under each table with its columns: what a reader must know to judge Δ."""

    def cost_remarks(self, key: SectionKey) -> list[str]:
        """Lines under the cost table with its minutes / GB."""
        return []

    @staticmethod
    def value(cell: ReferenceCell, kind: str) -> float | None:
        """Its value for a table of ``kind``."""
        return cell.top5 if kind == "top5" else cell.top1

    def no_numbers(self, dataset: str) -> list[str]:
        """The remark for a dataset it has no numbers for (else none)."""
        if dataset in self.protocol.datasets:
            return []
        names = ", ".join(sorted(self.protocol.datasets))
        return [f"{self.subject} has no numbers for {dataset} (it ran {names})."]

    def record(
        self, key: SectionKey, row: RowKey, transform: str, ours: float | None
    ) -> dict[str, Any]:
        """Its long-form fields (CSV, JSON) for a cell whose mean of ``metric`` is ``ours``."""
        cell = self.cell(key, row, transform)
        value = None if cell is None else cell.top1
        return {
            "reference": self.name,
            "reference_metric": self.metric,
            "reference_value": value,
            "reference_diff": None if value is None or ours is None else round(ours - value, 6),
            "reference_minutes": None if cell is None else cell.minutes,
            "reference_peak_gpu_gb": None if cell is None else cell.peak_gpu_gb,
            "reference_note": None if cell is None else cell.note,
        }


#: The study's own long-form columns, older than the generic ones (StudyReference fills them).
STUDY_RECORD_FIELDS = ("study_top1", "study_top5", "diff", "study_note")
#: The long-form fields of :meth:`Reference.record` (empty without --reference).
RECORD_FIELDS = (
    "reference", "reference_metric", "reference_value", "reference_diff",
    "reference_minutes", "reference_peak_gpu_gb", "reference_note",
)  # fmt: skip


def alpha_key(alpha: float | None) -> float | None:
    """α as a lookup key: 0.5 (results.json) and "0.50" (a CSV) meet."""
    return None if alpha is None else round(float(alpha), 6)


def optional_float(text: str | None) -> float | None:
    """A CSV field as a number; None when empty or not finite."""
    if text is None or not text.strip():
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def package_csv(name: str) -> Iterator[dict[str, str]]:
    """The rows of a CSV file shipped in this package."""
    text = resources.files("sslbench.report").joinpath(name).read_text("utf-8")
    yield from csv.DictReader(io.StringIO(text))
