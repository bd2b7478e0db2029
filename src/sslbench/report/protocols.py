"""The protocols side by side: each method's linear, kNN, SGD-linear and fine-tuned top-1
in one row, for the sections whose runs were scored by more than the default probes.

Which protocol scores a method decides how it ranks (lightly's ImageNet table: MAE's
ViT-B/16 is last on kNN, 11.2, and linear, 46.0, but first fine-tuned, 81.3), so a report
that has a fine-tuned or SGD-probe number shows them beside the frozen-feature ones.
"""

from __future__ import annotations

from sslbench.report.cells import CellRuns, mark_best, metric_info, value_cell
from sslbench.report.model import Cell, Footnotes, RowKey, Table

#: The protocols this table puts side by side, in order (table kinds of report.cells).
PROTOCOLS = ("top1", "knn", "sgd", "finetune")
#: Those that make the table worth showing: scored beyond the default linear and kNN probes.
BEYOND_DEFAULT = ("sgd", "finetune")


def protocols_table(
    kinds: list[str],
    rows: list[RowKey],
    transforms: list[str],
    cells: dict[tuple[RowKey, str], CellRuns],
    footnotes: Footnotes,
) -> Table | None:
    """One row per method and pipeline, one column per protocol among ``kinds`` (the
    section's tables), or None when no run was scored beyond the default probes."""
    shown = [kind for kind in PROTOCOLS if kind in kinds]
    if not any(kind in shown for kind in BEYOND_DEFAULT):
        return None
    header = ["method", "pipeline", *(metric_info(kind)[0] for kind in shown)]
    table_rows: list[list[Cell]] = []
    for index, row in enumerate(rows):
        for transform in transforms:
            cell = cells.get((row, transform))
            if cell is None:
                continue
            line = [Cell(text=row.label, sort_value=float(index)), Cell(text=transform)]
            for kind in shown:
                value = value_cell(cell, kind, footnotes)
                value.rankable = value.rankable and row.bound is None
                line.append(value)
            table_rows.append(line)
    mark_best(table_rows, range(2, 2 + len(shown)))
    bounds = [i for i, line in enumerate(table_rows) if _bound(rows, line)]
    return Table(
        "protocols",
        "Protocols side by side (the protocol can change the ranking)",
        header,
        table_rows,
        first_bound=min(bounds, default=None),
    )


def _bound(rows: list[RowKey], line: list[Cell]) -> bool:
    row = rows[int(line[0].sort_value or 0)]
    return row.bound is not None
