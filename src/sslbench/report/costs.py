"""Time and memory tables: per cell (method × pipeline) and per method.

They are kept out of the accuracy tables, whose cells then hold an accuracy and its
spread only (a table of five pipelines fits a page's width in LaTeX).
"""

from __future__ import annotations

from collections.abc import Sequence

from sslbench.report.cells import CellRuns, cost_means
from sslbench.report.collect import Run
from sslbench.report.model import MISSING, Cell, RowKey, SectionKey, Table, fmt_gb, fmt_minutes
from sslbench.report.reference import Reference


def _pair(minutes: float | None, gb: float | None) -> Cell:
    if minutes is None and gb is None:
        return Cell()
    left = MISSING if minutes is None else fmt_minutes(minutes)
    right = MISSING if gb is None else fmt_gb(gb)
    return Cell(text=f"{left} / {right}", sort_value=minutes)


def reference_cost_cell(ref: Reference, key: SectionKey, row: RowKey, transform: str) -> Cell:
    """The reference's minutes / GB for a row and pipeline (none where it has no cell)."""
    cell = ref.cell(key, row, transform)
    return Cell() if cell is None else _pair(cell.minutes, cell.peak_gpu_gb)


def cell_cost_table(
    key: SectionKey,
    rows: list[RowKey],
    transforms: list[str],
    cells: dict[tuple[RowKey, str], CellRuns],
    ref: Reference | None,
) -> Table:
    """Mean pretraining minutes / peak memory of each cell's completed runs: GPU memory, or
    the process's peak host memory when no run of the section recorded GPU memory; with
    ``ref``, its minutes / GB beside each pipeline."""
    use_gpu = any(c.gpu_gb is not None for c in cells.values())
    memory = "peak GPU memory" if use_gpu else "peak host memory"
    header = ["method"]
    for transform in transforms:
        header.extend([transform, f"{transform} {ref.name}"] if ref else [transform])
    table_rows = []
    for index, row in enumerate(rows):
        line = [Cell(text=row.label, sort_value=float(index))]
        for transform in transforms:
            cell = cells.get((row, transform))
            if cell is None:
                line.append(Cell())
            else:
                line.append(_pair(cell.minutes, cell.gpu_gb if use_gpu else cell.host_gb))
            if ref is not None:
                line.append(reference_cost_cell(ref, key, row, transform))
        table_rows.append(line)
    remarks = [
        f"Each cell: minutes of the training loop (pretrain_seconds) / {memory} in GB, "
        "means over the cell's completed runs."
    ]
    if not use_gpu:
        remarks.append("Host memory is the peak resident set of the whole run's process.")
    remarks.extend([] if ref is None else ref.cost_remarks(key))
    return Table(
        "cellcost",
        f"Pretraining minutes / {memory} (GB{'' if use_gpu else ', no GPU'})",
        header,
        table_rows,
        remarks,
        group=2 if ref is not None else 1,
        accuracy=False,
        reference=None if ref is None else ref.name,
        reference_owner="" if ref is None else ref.owner,
        first_bound=next((i for i, row in enumerate(rows) if row.bound), None),
    )


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
    first_bound = next((i for i, row in enumerate(rows) if row.bound), None)
    return Table(
        "cost",
        "Time and memory per method",
        header,
        table_rows,
        remarks,
        accuracy=False,
        first_bound=first_bound,
    )
