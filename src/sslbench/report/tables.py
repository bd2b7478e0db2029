"""From runs to tables: which runs may be compared, averaged, and how each cell reads.

The rules, in order:
- Runs are compared only within a *section*: same dataset, backbone, epochs, image size,
  batch size and test subset (the SHA-256 of the evaluated test images). A run that was
  never evaluated (failed, interrupted) has no test subset of its own; it joins the
  section of the evaluated runs that share its dataset, sizes and test-subset settings
  (``dataset.max_test``, ``eval.subset_seed``), when exactly one such section exists.
- Within a section, rows are methods (VICRegL one row per α; with a pretext task, its own
  row: "simclr + pretext lorot"), columns are pipelines.
- Runs in one cell are averaged only when their configs differ in nothing but the seed
  (and the keys in collect.IGNORED_CONFIG_KEYS). Otherwise the row splits into variants,
  each labelled with the config keys that tell them apart.

The result is a renderer-independent model (Report > Section > Table > Cell), plus
long-form records (one per cell) for the CSV and JSON outputs.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sslbench.report import reference
from sslbench.report.collect import Run, TestSubset

#: Pipelines first in this order when present, then the others alphabetically.
PIPELINE_ORDER = ("baseline", "simclr", "orthogonality", "lorot", "dcl")
#: Methods first in this order when present (VICRegL by α), then the others alphabetically.
METHOD_ORDER = ("simclr", "simsiam", "swav", "byol", "barlowtwins", "vicreg", "vicregl")

MISSING = "–"  # a cell without runs (an en dash)
METRICS = {  # table kind -> (title, Run attribute)
    "top1": ("Linear top-1", "linear_top1"),
    "top5": ("Linear top-5", "linear_top5"),
    "knn": ("kNN top-1", "knn_top1"),
    "pretext": ("Pretext-task accuracy", "pretext_accuracy"),
    "few1": ("Linear top-1, 1% of the labels", "linear_top1_1pct"),
    "few10": ("Linear top-1, 10% of the labels", "linear_top1_10pct"),
    "finetune": ("Fine-tuned top-1", "finetune_top1"),
    "online": ("Online-probe top-1 (during pretraining)", "online_probe_top1"),
}
#: Tables shown only where some run has the number (evaluations that are options).
OPTIONAL_METRICS = ("pretext", "few1", "few10", "finetune", "online")
#: At most this many differing config keys are named in a variant's label.
MAX_LABEL_KEYS = 3


# --- the model renderers read --------------------------------------------------------------


@dataclass
class Cell:
    """One table cell as renderers show it: ``text ± spread (detail)`` and footnote marks."""

    text: str = MISSING
    spread: str | None = None  # sample standard deviation, after "±"
    detail: str | None = None  # "n=3; 12.0 min / 1.1 GB"
    notes: list[int] = field(default_factory=list)  # footnote numbers
    sort_value: float | None = None  # what the html page sorts by
    best: bool = False  # best of its column (bold)

    def plain(self) -> str:
        """The cell as plain text (no markup, no footnote marks)."""
        text = self.text if self.spread is None else f"{self.text} ± {self.spread}"
        return text if self.detail is None else f"{text} ({self.detail})"


@dataclass
class Table:
    kind: str  # top1 | top5 | knn | pretext | cost
    title: str
    header: list[str]
    rows: list[list[Cell]]  # each row's first cell is its label
    remarks: list[str] = field(default_factory=list)  # one-line remarks printed under it


@dataclass(frozen=True, order=True)
class SectionKey:
    """What runs must share to be compared at all."""

    dataset: str
    backbone: str
    image_size: int
    epochs: int
    batch_size: int
    test_sha256: str  # "" when unknown
    test_count: int  # -1 when unknown


@dataclass
class Section:
    key: SectionKey
    heading: str
    slug: str  # for plot file names and LaTeX labels: [A-Za-z0-9._-]
    runs: list[Run]
    rows: list[RowKey]
    transforms: list[str]
    tables: list[Table]
    footnotes: list[tuple[int, str]]  # the footnotes its tables refer to, in order
    records: list[dict[str, Any]]  # long form: one per cell with runs


@dataclass
class Report:
    sections: list[Section]
    reference: bool
    n_runs: int
    n_skipped: int
    legend: list[str]  # how to read a cell, for the top of the document


@dataclass(frozen=True)
class RowKey:
    """A table row: a method, VICRegL's α, the pretext task, and the config keys telling
    variants apart."""

    method: str
    alpha: float | None
    variant: tuple[tuple[str, str], ...] = ()
    pretext: str | None = None

    @property
    def method_label(self) -> str:
        label = self.method if self.alpha is None else f"{self.method} α={self.alpha:g}"
        return label if self.pretext is None else f"{label} + pretext {self.pretext}"

    @property
    def variant_label(self) -> str:
        parts = [f"{k}={_short(v)}" for k, v in self.variant[:MAX_LABEL_KEYS]]
        if len(self.variant) > MAX_LABEL_KEYS:
            parts.append(f"+{len(self.variant) - MAX_LABEL_KEYS} more keys")
        return ", ".join(parts)

    @property
    def label(self) -> str:
        variant = self.variant_label
        return self.method_label if not variant else f"{self.method_label} ({variant})"

    def order(self) -> tuple[Any, ...]:
        rank = METHOD_ORDER.index(self.method) if self.method in METHOD_ORDER else len(METHOD_ORDER)
        alpha = -1.0 if self.alpha is None else self.alpha
        return (rank, self.method, alpha, self.pretext or "", self.variant)


def _short(value: str, limit: int = 24) -> str:
    text = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    std: float | None  # sample standard deviation, None for one value


def summarize(values: Iterable[float | None]) -> Stats | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else None
    return Stats(len(present), statistics.fmean(present), std)


def mean(values: Iterable[float | None]) -> float | None:
    stats = summarize(values)
    return None if stats is None else stats.mean


def cost_means(
    runs: Sequence[Run],
) -> tuple[float | None, float | None, float | None, float | None]:
    """Mean pretraining minutes, peak GPU GB, peak host GB and images/s of ``runs``."""
    return (
        mean(None if r.pretrain_seconds is None else r.pretrain_seconds / 60 for r in runs),
        mean(None if r.peak_gpu_bytes is None else r.peak_gpu_bytes / 1e9 for r in runs),
        mean(None if r.peak_host_bytes is None else r.peak_host_bytes / 1e9 for r in runs),
        mean(r.images_per_second for r in runs),
    )


def fmt_accuracy(value: float) -> str:
    return f"{value:.3f}"


def fmt_minutes(minutes: float) -> str:
    return f"{minutes:.1f}" if minutes >= 1 else f"{minutes:.2f}"


def fmt_gb(gb: float) -> str:
    return f"{gb:.1f}" if gb >= 1 else f"{gb:.2f}"


def fmt_diff(diff: float) -> str:
    return f"{diff:+.3f}"


# --- sections ------------------------------------------------------------------------------


def pipeline_order(name: str) -> tuple[int, str]:
    if name in PIPELINE_ORDER:
        return (PIPELINE_ORDER.index(name), "")
    return (len(PIPELINE_ORDER), name)


def _subset_settings(run: Run) -> tuple[Any, ...]:
    """What decides a run's test images besides its dataset (DESIGN.md §4)."""
    return (
        run.dataset,
        run.backbone,
        run.image_size,
        run.epochs,
        run.batch_size,
        run.settings.get("dataset.max_test"),
        run.settings.get("eval.subset_seed"),
        run.settings.get("dataset.path"),
    )


def assign_test_subsets(runs: Sequence[Run]) -> None:
    """Give a never-evaluated run (no test_subset) the test subset of the evaluated runs of
    the same settings, when they all share one; so a failed run sits in their table."""
    shas: dict[tuple[Any, ...], dict[str, TestSubset]] = defaultdict(dict)
    for run in runs:
        if run.test_subset is not None:
            shas[_subset_settings(run)][run.test_subset.sha256] = run.test_subset
    for run in runs:
        if run.test_subset is None and run.linear_top1 is None:
            candidates = shas.get(_subset_settings(run), {})
            if len(candidates) == 1:
                run.test_subset = next(iter(candidates.values()))
                run.test_subset_inferred = True


def section_key(run: Run) -> SectionKey:
    subset = run.test_subset
    return SectionKey(
        dataset=run.dataset,
        backbone=run.backbone or "",
        image_size=-1 if run.image_size is None else run.image_size,
        epochs=-1 if run.epochs is None else run.epochs,
        batch_size=-1 if run.batch_size is None else run.batch_size,
        test_sha256="" if subset is None else subset.sha256,
        test_count=-1 if subset is None or subset.count is None else subset.count,
    )


def section_heading(key: SectionKey) -> str:
    """E.g. "imagenette2 — resnet18, 224 px, 200 epochs, batch 256, test subset 3925 images
    (sha 1a2b3c4d)"."""
    backbone = key.backbone or "backbone not recorded"
    size = "? px" if key.image_size < 0 else f"{key.image_size} px"
    epochs = "? epochs" if key.epochs < 0 else f"{key.epochs} epoch{'s' * (key.epochs != 1)}"
    batch = "batch ?" if key.batch_size < 0 else f"batch {key.batch_size}"
    if not key.test_sha256:
        subset = "test subset not recorded"
    else:
        count = "? images" if key.test_count < 0 else f"{key.test_count} images"
        subset = f"test subset {count} (sha {key.test_sha256[:8]})"
    return f"{key.dataset} — {backbone}, {size}, {epochs}, {batch}, {subset}"


def _slugs(keys: Sequence[SectionKey]) -> list[str]:
    """One file-name-safe slug per section: the dataset, numbered when it has several."""
    bases = [re.sub(r"[^A-Za-z0-9._-]+", "-", k.dataset).strip(".-")[:60] or "runs" for k in keys]
    counts: dict[str, int] = defaultdict(int)
    for base in bases:
        counts[base] += 1
    seen: dict[str, int] = defaultdict(int)
    slugs = []
    for base in bases:
        seen[base] += 1
        slugs.append(base if counts[base] == 1 else f"{base}-{seen[base]}")
    return slugs


def _row_keys(runs: Sequence[Run]) -> dict[int, RowKey]:
    """Each run's row (by id): its method and α, split into variants where one cell holds
    runs whose settings differ."""
    by_method: dict[tuple[str, float | None, str | None], list[Run]] = defaultdict(list)
    for run in runs:
        by_method[(run.method, run.alpha, run.pretext)].append(run)
    rows: dict[int, RowKey] = {}
    for (method, alpha, pretext), method_runs in by_method.items():
        by_cell: dict[str, list[Run]] = defaultdict(list)
        for run in method_runs:
            by_cell[run.transform].append(run)
        differing: set[str] = set()
        for cell_runs in by_cell.values():
            keys = set().union(*(r.settings for r in cell_runs))
            for key in keys:
                if len({r.settings.get(key) for r in cell_runs}) > 1:
                    differing.add(key)
        for run in method_runs:
            variant = tuple((k, run.settings.get(k, "(absent)")) for k in sorted(differing))
            rows[id(run)] = RowKey(method, alpha, variant, pretext)
    return rows


# --- cells ---------------------------------------------------------------------------------


class Footnotes:
    """Numbered footnotes, one number per distinct text, shared by the whole report."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def add(self, text: str) -> int:
        return self.numbers.setdefault(text, len(self.numbers) + 1)

    def text(self, number: int) -> str:
        return next(t for t, n in self.numbers.items() if n == number)


@dataclass
class CellRuns:
    """The runs of one (row, pipeline) cell and their aggregates."""

    row: RowKey
    transform: str
    runs: list[Run]
    completed: list[Run] = field(init=False)
    failed: list[Run] = field(init=False)
    interrupted: list[Run] = field(init=False)
    summaries: dict[str, Stats | None] = field(init=False)  # METRICS kind -> over completed
    minutes: float | None = field(init=False)  # means over the completed runs
    gpu_gb: float | None = field(init=False)
    host_gb: float | None = field(init=False)
    images_per_second: float | None = field(init=False)

    def __post_init__(self) -> None:
        done = [r for r in self.runs if r.status == "completed"]
        self.completed = done
        self.failed = [r for r in self.runs if r.status == "failed"]
        # stopped before its end: still running, Ctrl-C, or preempted and requeued
        self.interrupted = [
            r for r in self.runs if r.status in ("running", "interrupted", "requeued")
        ]
        self.summaries = {
            kind: summarize(getattr(r, attribute) for r in done)
            for kind, (_, attribute) in METRICS.items()
        }
        self.minutes, self.gpu_gb, self.host_gb, self.images_per_second = cost_means(done)

    def stats(self, kind: str) -> Stats | None:
        return self.summaries[kind]

    @property
    def top1(self) -> Stats | None:
        return self.summaries["top1"]

    @property
    def knn(self) -> Stats | None:
        return self.summaries["knn"]

    @property
    def status(self) -> str:
        """completed (some run has numbers) | failed | interrupted | not evaluated."""
        if any(r.evaluated or r.knn_top1 is not None for r in self.completed):
            return "completed"
        if self.failed:
            return "failed"
        if self.interrupted:
            return "interrupted"
        return "not evaluated"

    def cost_text(self) -> str | None:
        """Minutes and memory: "12.0 min / 1.1 GB", or "12.0 min / host 4.2 GB" without GPU."""
        parts = []
        if self.minutes is not None:
            parts.append(f"{fmt_minutes(self.minutes)} min")
        if self.gpu_gb is not None:
            parts.append(f"{fmt_gb(self.gpu_gb)} GB")
        elif self.host_gb is not None:
            parts.append(f"host {fmt_gb(self.host_gb)} GB")
        return " / ".join(parts) or None


def _problem_notes(cell: CellRuns, footnotes: Footnotes) -> list[int]:
    """Footnotes for the cell's failed and interrupted runs (one per distinct message)."""
    notes = []
    errors: dict[str, list[str]] = defaultdict(list)
    for run in cell.failed:
        errors[run.error or "no error message recorded"].append(run.name)
    for error, names in errors.items():
        notes.append(footnotes.add(f"failed: {error} ({_names(names)})"))
    if cell.interrupted:
        names = _names([r.name for r in cell.interrupted])
        text = f"interrupted (Ctrl-C), or status still 'running' (killed, or running): {names}"
        notes.append(footnotes.add(text))
    return notes


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def value_cell(cell: CellRuns | None, kind: str, footnotes: Footnotes) -> Cell:
    """The cell of one metric: mean ± std (n), the top-1 table adds minutes and memory."""
    if cell is None:
        return Cell()
    stats = cell.stats(kind)
    notes = _problem_notes(cell, footnotes)
    if stats is None:
        if cell.failed:
            text = "failed"
        elif cell.interrupted:
            text = "interrupted"
        else:
            text = "n/a"
            notes.append(footnotes.add("n/a: the run completed without this evaluation"))
        return Cell(text=text, notes=notes)
    detail = []
    if stats.n > 1:
        detail.append(f"n={stats.n}")
    if kind == "top1" and cell.cost_text():
        detail.append(cell.cost_text() or "")
    problems = []
    if cell.failed:
        problems.append(f"{len(cell.failed)} failed")
    if cell.interrupted:
        problems.append(f"{len(cell.interrupted)} interrupted")
    detail.extend(problems)
    return Cell(
        text=fmt_accuracy(stats.mean),
        spread=None if stats.std is None else fmt_accuracy(stats.std),
        detail="; ".join(detail) or None,
        notes=notes,
        sort_value=stats.mean,
    )


def _mark_best(rows: list[list[Cell]], columns: Iterable[int]) -> None:
    for column in columns:
        values = [row[column].sort_value for row in rows if row[column].sort_value is not None]
        if not values:
            continue
        best = max(values)
        for row in rows:
            value = row[column].sort_value
            if value is not None and math.isclose(value, best, rel_tol=0, abs_tol=1e-12):
                row[column].best = True


def _study_cells(
    dataset: str, row: RowKey, transform: str, ours: Stats | None, kind: str, footnotes: Footnotes
) -> tuple[Cell, Cell]:
    """The study's cell and the difference (ours − study's) for one pipeline column (none
    for a row with a pretext task: the study had none)."""
    study = row_study_cell(dataset, row, transform)
    published = None if study is None else (study.top1 if kind == "top1" else study.top5)
    if study is None or published is None:
        return Cell(), Cell()
    detail = []
    if kind == "top1" and study.minutes is not None:
        detail.append(f"{fmt_minutes(study.minutes)} min")
    if kind == "top1" and study.peak_gpu_gb is not None:
        detail.append(f"{fmt_gb(study.peak_gpu_gb)} GB")
    notes = [footnotes.add(f"study: {study.note}")] if study.note else []
    study_cell = Cell(
        text=fmt_accuracy(published),
        detail=" / ".join(detail) or None,
        notes=notes,
        sort_value=published,
    )
    if ours is None:
        return study_cell, Cell()
    diff = ours.mean - published
    return study_cell, Cell(text=fmt_diff(diff), sort_value=diff)


def row_study_cell(dataset: str, row: RowKey, transform: str) -> reference.StudyCell | None:
    """The study's published cell for a row and pipeline; None for pretext rows."""
    if row.pretext is not None:
        return None
    return reference.study_cell(dataset, row.method, row.alpha, transform)


def _study_remarks(key: SectionKey) -> list[str]:
    if not reference.study_has_dataset(key.dataset):
        names = ", ".join(sorted(reference.STUDY_DATASETS.values()))
        return [f"The study has no numbers for {key.dataset} (it ran {names})."]
    differences = []
    if key.backbone != reference.STUDY_BACKBONE:
        differences.append(f"backbone {key.backbone or '?'}")
    if key.image_size != reference.STUDY_IMAGE_SIZE:
        differences.append(f"{key.image_size} px")
    if key.epochs != reference.STUDY_EPOCHS:
        differences.append(f"{key.epochs} epochs")
    if key.batch_size != reference.STUDY_BATCH_SIZE:
        differences.append(f"batch {key.batch_size}")
    if not differences:
        return []
    return [
        f"The study trained {reference.STUDY_BACKBONE} at {reference.STUDY_IMAGE_SIZE} px for "
        f"{reference.STUDY_EPOCHS} epochs, batch {reference.STUDY_BATCH_SIZE}; these runs "
        f"differ ({', '.join(differences)}), so the difference is no reproduction check."
    ]


def metric_table(
    kind: str,
    key: SectionKey,
    rows: list[RowKey],
    transforms: list[str],
    cells: dict[tuple[RowKey, str], CellRuns],
    footnotes: Footnotes,
    with_reference: bool,
) -> Table:
    title, _ = METRICS[kind]
    header = ["method"]
    for transform in transforms:
        header.append(transform)
        if with_reference:
            header.extend([f"{transform} study", f"{transform} Δ"])
    table_rows: list[list[Cell]] = []
    for index, row in enumerate(rows):
        line = [Cell(text=row.label, sort_value=float(index))]
        for transform in transforms:
            cell = cells.get((row, transform))
            if kind == "pretext" and row.pretext is None:
                cell = None  # no head to score: "–", not "n/a"
            line.append(value_cell(cell, kind, footnotes))
            if with_reference:
                ours = None if cell is None else cell.stats(kind)
                line.extend(_study_cells(key.dataset, row, transform, ours, kind, footnotes))
        table_rows.append(line)
    step = 3 if with_reference else 1
    _mark_best(table_rows, range(1, 1 + step * len(transforms), step))
    remarks = _study_remarks(key) if with_reference else []
    return Table(kind, title, header, table_rows, remarks)


def cost_table(rows: list[RowKey], section_runs: Sequence[Run], row_of: dict[int, RowKey]) -> Table:
    """Time and memory per method, over all its completed runs in the section."""
    header = ["method", "runs", "pretrain min", "peak GPU GB", "peak host GB", "images/s"]
    table_rows = []
    for index, row in enumerate(rows):
        runs = [r for r in section_runs if row_of[id(r)] == row and r.status == "completed"]
        minutes, gpu, host, speed = cost_means(runs)

        def number(value: float | None, text: str) -> Cell:
            return Cell() if value is None else Cell(text=text, sort_value=value)

        table_rows.append(
            [
                Cell(text=row.label, sort_value=float(index)),
                Cell(text=str(len(runs)), sort_value=float(len(runs))),
                number(minutes, fmt_minutes(minutes or 0.0)),
                number(gpu, fmt_gb(gpu or 0.0)),
                number(host, fmt_gb(host or 0.0)),
                number(speed, f"{speed or 0.0:.1f}"),
            ]
        )
    remarks = ["Means over the completed runs of each row, all pipelines together."]
    return Table("cost", "Time and memory per method", header, table_rows, remarks)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def cell_record(key: SectionKey, cell: CellRuns) -> dict[str, Any]:
    """One long-form row (CSV, JSON) for a cell with runs."""
    study = row_study_cell(key.dataset, cell.row, cell.transform)
    top1 = cell.top1
    errors = sorted({r.error for r in cell.failed if r.error})
    return {
        "dataset": key.dataset,
        "backbone": key.backbone or None,
        "epochs": None if key.epochs < 0 else key.epochs,
        "image_size": None if key.image_size < 0 else key.image_size,
        "batch_size": None if key.batch_size < 0 else key.batch_size,
        "test_subset": key.test_sha256 or None,
        "method": cell.row.method,
        "alpha": cell.row.alpha,
        "pretext": cell.row.pretext,
        "variant": cell.row.variant_label or None,
        "transform": cell.transform,
        "n_runs": len(cell.runs),
        "n_failed": len(cell.failed),
        "n_interrupted": len(cell.interrupted),
        "linear_top1_mean": _round(None if top1 is None else top1.mean),
        "linear_top1_std": _round(None if top1 is None else top1.std),
        **{
            f"{attribute}_{moment}": _round(None if stats is None else getattr(stats, moment))
            for kind, (_, attribute) in METRICS.items()
            if kind != "top1"
            for stats in (cell.stats(kind),)
            for moment in ("mean", "std")
        },
        "minutes_mean": _round(cell.minutes),
        "peak_gpu_gb_mean": _round(cell.gpu_gb),
        "peak_host_gb_mean": _round(cell.host_gb),
        "images_per_second_mean": _round(cell.images_per_second),
        "study_top1": None if study is None else study.top1,
        "study_top5": None if study is None else study.top5,
        "diff": _round(None if study is None or top1 is None else top1.mean - study.top1),
        "study_note": None if study is None else study.note,
        "status": cell.status,
        "error": " | ".join(errors) or None,
        "run_folders": [r.name for r in cell.runs],
    }


def build_section(
    key: SectionKey, slug: str, runs: list[Run], footnotes: Footnotes, with_reference: bool
) -> Section:
    row_of = _row_keys(runs)
    rows = sorted(set(row_of.values()), key=RowKey.order)
    transforms = sorted({r.transform for r in runs}, key=pipeline_order)
    grouped: dict[tuple[RowKey, str], list[Run]] = defaultdict(list)
    for run in runs:
        grouped[(row_of[id(run)], run.transform)].append(run)
    cells = {k: CellRuns(k[0], k[1], sorted(v, key=lambda r: r.name)) for k, v in grouped.items()}

    tables = [
        metric_table("top1", key, rows, transforms, cells, footnotes, with_reference),
        metric_table(
            "top5",
            key,
            rows,
            transforms,
            cells,
            footnotes,
            with_reference and reference.study_has_top5(key.dataset),
        ),
        metric_table("knn", key, rows, transforms, cells, footnotes, False),
    ]
    for kind in OPTIONAL_METRICS:
        if any(getattr(r, METRICS[kind][1]) is not None for r in runs):
            tables.append(metric_table(kind, key, rows, transforms, cells, footnotes, False))
    tables.append(cost_table(rows, runs, row_of))
    used: list[int] = []
    for table in tables:
        for line in table.rows:
            for cell in line:
                used.extend(n for n in cell.notes if n not in used)
    records = [
        cell_record(key, cells[(row, t)]) for row in rows for t in transforms if (row, t) in cells
    ]
    return Section(
        key=key,
        heading=section_heading(key),
        slug=slug,
        runs=sorted(runs, key=lambda r: r.name),
        rows=rows,
        transforms=transforms,
        tables=tables,
        footnotes=[(n, footnotes.text(n)) for n in used],
        records=records,
    )


LEGEND = [
    "Each cell: the mean over runs that differ only in the seed, ± the sample standard "
    "deviation and n=runs when there are several; in the top-1 table, then the mean "
    'pretraining minutes / peak GPU memory in GB ("host N GB": a run without a GPU, the '
    "peak resident memory of its process).",
    f"Bold: the best of its column. {MISSING}: no run. failed / interrupted: see the notes.",
]
REFERENCE_LEGEND = (
    "study: the published value of the study (ResNet-18, 224 px, 200 epochs, batch 256); "
    "Δ: yours − the study's."
)


def build_report(runs: Sequence[Run], *, with_reference: bool, n_skipped: int = 0) -> Report:
    """The whole report: one section per comparable set of runs."""
    runs = list(runs)
    assign_test_subsets(runs)
    by_section: dict[SectionKey, list[Run]] = defaultdict(list)
    for run in runs:
        by_section[section_key(run)].append(run)
    keys = sorted(by_section)
    footnotes = Footnotes()
    sections = [
        build_section(key, slug, by_section[key], footnotes, with_reference)
        for key, slug in zip(keys, _slugs(keys), strict=True)
    ]
    legend = [*LEGEND, REFERENCE_LEGEND] if with_reference else list(LEGEND)
    return Report(sections, with_reference, len(runs), n_skipped, legend)
