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
  row: "simclr + pretext lorot"), columns are pipelines; below the methods, the reference
  rows: supervised (labels) and random init (bounds.py), never marked best.
- Runs in one cell are averaged only when their configs differ in nothing but the seed
  (and the keys in collect.IGNORED_CONFIG_KEYS), and when every number they share was
  scored by a protocol with the same settings (scoring.py). Otherwise the row splits into
  variants, each labelled with the config keys or scoring settings that tell them apart.
- Accuracy tables hold accuracies; time and memory have their own tables (costs.py).
- With ``--reference``, the published value of a Reference (reference.py) and the
  difference stand beside each pipeline column of the tables of the metric it scores.

The result is a renderer-independent model (model.py: Report > Section > Table > Cell),
plus long-form records (one per cell) for the CSV and JSON outputs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sslbench.report.bounds import (
    RandomInits,
    gather_random_inits,
    random_init_cell,
    random_init_record,
    random_init_row,
)
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
    RANDOM_INIT,
    Cell,
    Footnotes,
    RandomInitRow,
    Report,
    RowKey,
    Section,
    SectionKey,
    Stats,
    Table,
    fmt_accuracy,
    fmt_diff,
)
from sslbench.report.protocols import protocols_table
from sslbench.report.reference import RECORD_FIELDS, STUDY_RECORD_FIELDS, Reference
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


def _reference_cells(
    ref: Reference,
    key: SectionKey,
    row: RowKey,
    transform: str,
    ours: Stats | None,
    kind: str,
    footnotes: Footnotes,
) -> tuple[Cell, Cell]:
    """The reference's cell and the difference (ours − its) for one pipeline column (none
    for a row with a pretext task or a reference row: it published none)."""
    cell = ref.cell(key, row, transform)
    published = None if cell is None else ref.value(cell, kind)
    if cell is None or published is None:
        return Cell(), Cell()
    notes = [footnotes.add(f"{ref.name}: {cell.note}")] if cell.note else []
    shown = Cell(text=fmt_accuracy(published), notes=notes, sort_value=published)
    if ours is None:
        return shown, Cell()
    diff = ours.mean - published
    return shown, Cell(text=fmt_diff(diff), sort_value=diff)


def metric_table(
    kind: str,
    key: SectionKey,
    rows: list[RowKey],
    transforms: list[str],
    cells: dict[tuple[RowKey, str], CellRuns],
    footnotes: Footnotes,
    ref: Reference | None,
    row_notes: dict[RowKey, str],
    random_init: RandomInitRow | None = None,
) -> Table:
    """One accuracy table: rows × pipelines (with the reference's value and the difference
    beside each pipeline when ``ref`` is given), the random-init row last when the section
    has one scoring this metric."""
    title, attribute = metric_info(kind)
    header = ["method"]
    for transform in transforms:
        header.append(transform)
        if ref is not None:
            header.extend([f"{transform} {ref.name}", f"{transform} Δ"])
    table_rows: list[list[Cell]] = []
    for index, row in enumerate(rows):
        notes = [footnotes.add(row_notes[row])] if row in row_notes else []
        line = [Cell(text=row.label, sort_value=float(index), notes=notes)]
        for transform in transforms:
            cell = cells.get((row, transform))
            if kind == "pretext" and row.pretext is None:
                cell = None  # no head to score: "–", not "n/a"
            value = value_cell(cell, kind, footnotes)
            value.rankable = value.rankable and row.bound is None
            line.append(value)
            if ref is not None:
                ours = None if cell is None else cell.stats(kind)
                line.extend(_reference_cells(ref, key, row, transform, ours, kind, footnotes))
        table_rows.append(line)
    if random_init is not None and attribute in random_init.scores:
        note = footnotes.add(random_init.note)
        line = [Cell(text=RANDOM_INIT, sort_value=float(len(rows)), notes=[note])]
        for _ in transforms:
            line.append(random_init_cell(random_init, attribute))
            line.extend([Cell(), Cell()] if ref is not None else [])
        table_rows.append(line)
    step = 3 if ref is not None else 1
    mark_best(table_rows, range(1, 1 + step * len(transforms), step))
    bounds = [i for i, row in enumerate(rows) if row.bound is not None]
    if random_init is not None and len(table_rows) > len(rows):
        bounds.append(len(rows))
    return Table(
        kind,
        title,
        header,
        table_rows,
        ref.remarks(key) if ref is not None else [],
        group=step,
        reference=None if ref is None else ref.name,
        reference_owner="" if ref is None else ref.owner,
        first_bound=min(bounds, default=None),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _section_fields(key: SectionKey) -> dict[str, Any]:
    return {
        "dataset": key.dataset,
        "backbone": key.backbone or None,
        "epochs": None if key.epochs < 0 else key.epochs,
        "image_size": None if key.image_size < 0 else key.image_size,
        "batch_size": None if key.batch_size < 0 else key.batch_size,
        "test_subset": key.test_sha256 or None,
    }


def _metric_fields(knn_kinds: Sequence[str]) -> dict[str, str]:
    """Run attribute -> its mean's long-form field, for every accuracy a record holds."""
    return {metric_info(k)[1]: f"{metric_info(k)[1]}_mean" for k in [*METRICS, *knn_kinds]}


def cell_record(
    key: SectionKey, cell: CellRuns, knn_kinds: Sequence[str], ref: Reference | None
) -> dict[str, Any]:
    """One long-form row (CSV, JSON) for a cell with runs."""
    top1 = cell.top1
    errors = sorted({r.error for r in cell.failed if r.error})
    kinds = [k for k in METRICS if k != "top1"]
    ours = None if ref is None else cell.stats(ref.kinds(key.dataset)[0])
    reference_fields = dict.fromkeys((*STUDY_RECORD_FIELDS, *RECORD_FIELDS))
    if ref is not None:
        mean = None if ours is None else ours.mean
        reference_fields.update(ref.record(key, cell.row, cell.transform, mean))
    return {
        **_section_fields(key),
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
        **reference_fields,
        "status": cell.status,
        "error": " | ".join(errors) or None,
        "run_folders": [r.name for r in cell.runs],
        "scoring": cell.row.scoring_label or None,
        "pretext_chance": cell.chance,
        "caveats": sorted({c for r in cell.runs for c in r.caveats}),
        "bound": cell.row.bound,
    }


def build_section(
    key: SectionKey,
    slug: str,
    runs: list[Run],
    footnotes: Footnotes,
    ref: Reference | None,
    random_inits: RandomInits | None = None,
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
    random_init = random_init_row(key, random_inits or {})
    with_columns = () if ref is None else ref.kinds(key.dataset)

    def table(kind: str) -> Table:
        return metric_table(
            kind,
            key,
            rows,
            transforms,
            cells,
            footnotes,
            ref if kind in with_columns else None,
            row_notes,
            random_init,
        )

    kinds = ["top1", "top5", "knn", *knn_kinds]
    kinds += [
        k for k in OPTIONAL_METRICS if any(metric_value(r, METRICS[k][1]) is not None for r in runs)
    ]
    for cell in cells.values():
        cell.shown = frozenset(kinds)
    tables = [table(kind) for kind in kinds]
    protocols = protocols_table(kinds, rows, transforms, cells, footnotes)
    if protocols is not None:
        tables.append(protocols)
    tables.append(cell_cost_table(key, rows, transforms, cells, ref))
    tables.append(cost_table(rows, runs, row_of))
    used: list[int] = []
    for each in tables:
        for line in each.rows:
            for cell in line:
                used.extend(n for n in cell.notes if n not in used)
    records = [
        cell_record(key, cells[(row, t)], knn_kinds, ref)
        for row in rows
        for t in transforms
        if (row, t) in cells
    ]
    if random_init is not None:
        base = dict.fromkeys(records[0]) if records else {}
        base.update(_section_fields(key))
        base.update(dict.fromkeys((*STUDY_RECORD_FIELDS, *RECORD_FIELDS)))
        if ref is not None:
            base["reference"], base["reference_metric"] = ref.name, ref.metric
        records.append(random_init_record(base, random_init, _metric_fields(knn_kinds)))
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
        random_init=random_init,
    )


LEGEND = [
    "Each cell: the mean over runs that differ only in the seed and were scored alike, ± "
    "the sample standard deviation, and n=runs when there are several; pretraining minutes "
    "and peak memory have their own tables.",
    f"Bold: the best of its column (never a pretext head at chance, never a reference row). "
    f"{MISSING}: no run. failed / interrupted: see the notes.",
]
BOUNDS_LEGEND = (
    "Reference rows, below the methods: supervised (labels), the same backbone trained with "
    "the labels; random init, the backbone untrained."
)


def build_report(
    runs: Sequence[Run], *, reference: Reference | None = None, n_skipped: int = 0
) -> Report:
    """The whole report: one section per comparable set of runs, each run counted once;
    with ``reference``, its published values beside ours."""
    runs = list(runs)
    assign_test_subsets(runs)
    random_inits = gather_random_inits(runs)  # before copies are dropped: any may hold one
    runs, notices, n_duplicates = count_once(runs)
    by_section: dict[SectionKey, list[Run]] = defaultdict(list)
    for run in runs:
        by_section[section_key(run)].append(run)
    keys = sorted(by_section)
    footnotes = Footnotes()
    sections = [
        build_section(key, slug, by_section[key], footnotes, reference, random_inits)
        for key, slug in zip(keys, _slugs(keys), strict=True)
    ]
    legend = list(LEGEND)
    if any(s.random_init is not None or any(r.bound for r in s.rows) for s in sections):
        legend.append(BOUNDS_LEGEND)
    if reference is not None:
        legend.append(reference.legend)
    name = None if reference is None else reference.name
    return Report(sections, name, len(runs), n_skipped, legend, notices, n_duplicates)
