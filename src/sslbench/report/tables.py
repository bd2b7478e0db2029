"""From runs to tables: which runs may be compared, averaged, and how each cell reads.

The rules, in order:
- A run counts once, however many folders hold it (scoring.count_once: same settings,
  seed and test images; a completed copy, then the one finished last, is kept).
- Runs are compared only within a *section*: same dataset, backbone, epochs, image size,
  batch size and test subset (the SHA-256 of the evaluated test images). A run that was
  never evaluated (failed, interrupted) has no test subset of its own; it joins the
  section of the evaluated runs that share its dataset, sizes and test-subset settings
  (``dataset.max_test``, ``eval.subset_seed``), when exactly one such section exists.
- Within a section, rows are methods (VICRegL one row per α; with a pretext task, its own
  row: "simclr + pretext lorot"), columns are pipelines.
- Runs in one cell are averaged only when their configs differ in nothing but the seed
  (and the keys in collect.IGNORED_CONFIG_KEYS), and when every number they share was
  scored by a protocol with the same settings (scoring.py). Otherwise the row splits into
  variants, each labelled with the config keys or scoring settings that tell them apart.
- Accuracy tables hold accuracies; time and memory have their own tables (costs.py).

The result is a renderer-independent model (model.py: Report > Section > Table > Cell),
plus long-form records (one per cell) for the CSV and JSON outputs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sslbench.report import reference
from sslbench.report.cells import (
    METRICS,
    OPTIONAL_METRICS,
    CellRuns,
    mark_best,
    metric_info,
    value_cell,
)
from sslbench.report.collect import Run, TestSubset
from sslbench.report.costs import cell_cost_table, cost_table
from sslbench.report.model import (
    MISSING,
    Cell,
    Footnotes,
    Report,
    RowKey,
    Section,
    SectionKey,
    Stats,
    Table,
    fmt_accuracy,
    fmt_diff,
)
from sslbench.report.scoring import count_once, knn_fields, metric_value, scoring_rows

#: Pipelines first in this order when present, then the others alphabetically.
PIPELINE_ORDER = ("baseline", "simclr", "orthogonality", "lorot", "dcl")


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


def _row_keys(
    runs: Sequence[Run], attributes: Sequence[str]
) -> tuple[dict[int, RowKey], dict[RowKey, str]]:
    """Each run's row (by id): its method and α, split into variants where one cell holds
    runs whose settings differ or whose shared numbers were scored differently; and the
    note of each row split by scoring."""
    by_method: dict[tuple[str, float | None, str | None], list[Run]] = defaultdict(list)
    for run in runs:
        by_method[(run.method, run.alpha, run.pretext)].append(run)
    rows: dict[int, RowKey] = {}
    notes: dict[RowKey, str] = {}
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
        scoring, why = scoring_rows(method_runs, by_cell, attributes)
        for run in method_runs:
            variant = tuple((k, run.settings.get(k, "(absent)")) for k in sorted(differing))
            row = RowKey(method, alpha, variant, pretext, scoring[id(run)])
            rows[id(run)] = row
            if row.scoring:
                notes[row] = why[row.scoring]
    return rows, notes


# --- tables --------------------------------------------------------------------------------


def _study_cells(
    dataset: str, row: RowKey, transform: str, ours: Stats | None, kind: str, footnotes: Footnotes
) -> tuple[Cell, Cell]:
    """The study's cell and the difference (ours − study's) for one pipeline column (none
    for a row with a pretext task: the study had none)."""
    study = row_study_cell(dataset, row, transform)
    published = None if study is None else (study.top1 if kind == "top1" else study.top5)
    if study is None or published is None:
        return Cell(), Cell()
    notes = [footnotes.add(f"study: {study.note}")] if study.note else []
    study_cell = Cell(text=fmt_accuracy(published), notes=notes, sort_value=published)
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
    row_notes: dict[RowKey, str],
) -> Table:
    """One accuracy table: rows × pipelines (with the study's value and the difference
    beside each pipeline when ``with_reference``)."""
    title, _ = metric_info(kind)
    header = ["method"]
    for transform in transforms:
        header.append(transform)
        if with_reference:
            header.extend([f"{transform} study", f"{transform} Δ"])
    table_rows: list[list[Cell]] = []
    for index, row in enumerate(rows):
        notes = [footnotes.add(row_notes[row])] if row in row_notes else []
        line = [Cell(text=row.label, sort_value=float(index), notes=notes)]
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
    mark_best(table_rows, range(1, 1 + step * len(transforms), step))
    remarks = _study_remarks(key) if with_reference else []
    return Table(kind, title, header, table_rows, remarks, group=step)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def cell_record(key: SectionKey, cell: CellRuns, knn_kinds: Sequence[str]) -> dict[str, Any]:
    """One long-form row (CSV, JSON) for a cell with runs."""
    study = row_study_cell(key.dataset, cell.row, cell.transform)
    top1 = cell.top1
    errors = sorted({r.error for r in cell.failed if r.error})
    kinds = [k for k in METRICS if k != "top1"]
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
            f"{metric_info(kind)[1]}_{moment}": _round(
                None if stats is None else getattr(stats, moment)
            )
            for kind in [*kinds, *knn_kinds]
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
        "scoring": cell.row.scoring_label or None,
        "pretext_chance": cell.chance,
        "caveats": sorted({c for r in cell.runs for c in r.caveats}),
    }


def build_section(
    key: SectionKey, slug: str, runs: list[Run], footnotes: Footnotes, with_reference: bool
) -> Section:
    knn_kinds = knn_fields(runs)
    attributes = [metric_info(k)[1] for k in [*METRICS, *knn_kinds]]
    row_of, row_notes = _row_keys(runs, attributes)
    rows = sorted(set(row_of.values()), key=RowKey.order)
    transforms = sorted({r.transform for r in runs}, key=pipeline_order)
    grouped: dict[tuple[RowKey, str], list[Run]] = defaultdict(list)
    for run in runs:
        grouped[(row_of[id(run)], run.transform)].append(run)
    cells = {k: CellRuns(k[0], k[1], sorted(v, key=lambda r: r.name)) for k, v in grouped.items()}

    def table(kind: str, reference_columns: bool = False) -> Table:
        return metric_table(
            kind, key, rows, transforms, cells, footnotes, reference_columns, row_notes
        )

    kinds = ["top1", "top5", "knn", *knn_kinds]
    kinds += [
        k for k in OPTIONAL_METRICS if any(metric_value(r, METRICS[k][1]) is not None for r in runs)
    ]
    for cell in cells.values():
        cell.shown = frozenset(kinds)
    tables = [
        table("top1", with_reference),
        table("top5", with_reference and reference.study_has_top5(key.dataset)),
        *(table(kind) for kind in kinds[2:]),
    ]
    tables.append(cell_cost_table(key.dataset, rows, transforms, cells, with_reference))
    tables.append(cost_table(rows, runs, row_of))
    used: list[int] = []
    for each in tables:
        for line in each.rows:
            for cell in line:
                used.extend(n for n in cell.notes if n not in used)
    records = [
        cell_record(key, cells[(row, t)], knn_kinds)
        for row in rows
        for t in transforms
        if (row, t) in cells
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
    "Each cell: the mean over runs that differ only in the seed and were scored alike, ± "
    "the sample standard deviation, and n=runs when there are several; pretraining minutes "
    "and peak memory have their own tables.",
    f"Bold: the best of its column (never a pretext head at chance). {MISSING}: no run. "
    "failed / interrupted: see the notes.",
]
REFERENCE_LEGEND = (
    "study: the published value of the study (ResNet-18, 224 px, 200 epochs, batch 256); "
    "Δ: yours − the study's."
)


def build_report(runs: Sequence[Run], *, with_reference: bool, n_skipped: int = 0) -> Report:
    """The whole report: one section per comparable set of runs, each run counted once."""
    runs = list(runs)
    assign_test_subsets(runs)
    runs, notices, n_duplicates = count_once(runs)
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
    return Report(sections, with_reference, len(runs), n_skipped, legend, notices, n_duplicates)
