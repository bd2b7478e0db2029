"""One table cell from the runs in it: which numbers are averaged, and the notes beside them.

A cell holds the runs of one row (method, variant, scoring) and one pipeline. Its number
is the mean over its completed runs; its notes say which runs failed or stopped, the
caveats those runs recorded (routed to the tables they concern, scoring.caveat_applies),
a linear number an older sslbench took from the SGD probe, and a pretext head at chance.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sslbench.report.collect import Run
from sslbench.report.model import Cell, Footnotes, RowKey, Stats, fmt_accuracy, mean, summarize
from sslbench.report.scoring import caveat_applies, knn_title, legacy_sgd_note, metric_value

METRICS = {  # table kind -> (title, Run attribute)
    "top1": ("Linear top-1", "linear_top1"),
    "top5": ("Linear top-5", "linear_top5"),
    "knn": ("kNN top-1", "knn_top1"),
    "sgd": ("SGD linear top-1 (lightly's linear evaluation, eval.probe=sgd)", "sgd_linear_top1"),
    "finetune": ("Fine-tuned top-1", "finetune_top1"),
    "few1": ("Linear top-1, 1% of the labels", "linear_top1_1pct"),
    "few10": ("Linear top-1, 10% of the labels", "linear_top1_10pct"),
    "pretext": ("Pretext-task accuracy", "pretext_accuracy"),
    "online": ("Online-probe top-1 (during pretraining)", "online_probe_top1"),
}
#: Tables shown only where some run has the number (evaluations that are options).
OPTIONAL_METRICS = ("sgd", "finetune", "few1", "few10", "pretext", "online")
#: A pretext head whose accuracy is at most its chance level plus this learned nothing
#: that the measurement can tell (a few hundred images give about ±0.02): never bold.
CHANCE_MARGIN = 0.02


def metric_info(kind: str) -> tuple[str, str]:
    """(title, Run attribute) of a table kind; a kNN variant's kind is its field name."""
    if kind in METRICS:
        return METRICS[kind]
    return knn_title(kind), kind


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


@dataclass
class CellRuns:
    """The runs of one (row, pipeline) cell and their aggregates."""

    row: RowKey
    transform: str
    runs: list[Run]
    completed: list[Run] = field(init=False)
    failed: list[Run] = field(init=False)
    interrupted: list[Run] = field(init=False)
    minutes: float | None = field(init=False)  # means over the completed runs
    gpu_gb: float | None = field(init=False)
    host_gb: float | None = field(init=False)
    images_per_second: float | None = field(init=False)
    #: The section's table kinds: a caveat goes to those it names (or to all of them).
    shown: frozenset[str] = frozenset()
    _stats: dict[str, Stats | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.completed = [r for r in self.runs if r.status == "completed"]
        self.failed = [r for r in self.runs if r.status == "failed"]
        # stopped before its end: still running, Ctrl-C, or preempted and requeued
        self.interrupted = [
            r for r in self.runs if r.status in ("running", "interrupted", "requeued")
        ]
        self.minutes, self.gpu_gb, self.host_gb, self.images_per_second = cost_means(self.completed)

    def stats(self, kind: str) -> Stats | None:
        """Mean, sample std and n of one metric over the completed runs."""
        if kind not in self._stats:
            attribute = metric_info(kind)[1]
            self._stats[kind] = summarize(metric_value(r, attribute) for r in self.completed)
        return self._stats[kind]

    @property
    def top1(self) -> Stats | None:
        return self.stats("top1")

    @property
    def knn(self) -> Stats | None:
        return self.stats("knn")

    @property
    def status(self) -> str:
        """completed (some run has numbers) | failed | interrupted | not evaluated."""
        if any(r.evaluated for r in self.completed):
            return "completed"
        if self.failed:
            return "failed"
        if self.interrupted:
            return "interrupted"
        return "not evaluated"

    @property
    def chance(self) -> float | None:
        """The pretext head's chance accuracy, when its runs agree on one."""
        chances = {r.pretext_chance for r in self.completed if r.pretext_chance is not None}
        return next(iter(chances)) if len(chances) == 1 else None

    def caveats(self, kind: str) -> list[str]:
        """The caveats of this cell's runs that qualify a table of ``kind``; a caveat that
        not every run of the cell has names the runs that have it."""
        holders: dict[str, list[str]] = defaultdict(list)
        for run in self.runs:
            for caveat in run.caveats:
                if caveat_applies(caveat, kind, self.shown):
                    holders[caveat].append(run.name)
        return [
            text if len(names) == len(self.runs) else f"{text} ({names_text(names)})"
            for text, names in holders.items()
        ]


def names_text(names: list[str], limit: int = 3) -> str:
    """ "a, b, c and 2 more"."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _problem_notes(cell: CellRuns, footnotes: Footnotes) -> list[int]:
    """Footnotes for the cell's failed and interrupted runs (one per distinct message)."""
    notes = []
    errors: dict[str, list[str]] = defaultdict(list)
    for run in cell.failed:
        errors[run.error or "no error message recorded"].append(run.name)
    for error, names in errors.items():
        notes.append(footnotes.add(f"failed: {error} ({names_text(names)})"))
    if cell.interrupted:
        names = names_text([r.name for r in cell.interrupted])
        text = f"interrupted (Ctrl-C), or status still 'running' (killed, or running): {names}"
        notes.append(footnotes.add(text))
    return notes


def value_cell(cell: CellRuns | None, kind: str, footnotes: Footnotes) -> Cell:
    """The cell of one metric: mean ± std over the completed runs, n, and its notes."""
    if cell is None:
        return Cell()
    stats = cell.stats(kind)
    notes = _problem_notes(cell, footnotes)
    caveats = cell.caveats(kind)
    notes.extend(footnotes.add(text) for text in caveats)
    # runs whose linear numbers were the SGD probe's (moved to sgd_linear_*)
    legacy = [r for r in cell.completed if r.legacy_sgd_probe and r.linear_top1 is None]
    if kind in ("top1", "top5") and legacy:
        names = names_text([r.name for r in legacy])
        notes.append(footnotes.add(f"{legacy_sgd_note(legacy[0])} ({names})"))
    if stats is None:
        if cell.failed:
            text = "failed"
        elif cell.interrupted:
            text = "interrupted"
        else:
            text = "n/a"
            if not (kind in ("top1", "top5") and legacy):
                notes.append(footnotes.add("n/a: the run completed without this evaluation"))
        return Cell(text=text, notes=sorted(set(notes)))
    problems = []
    if cell.failed:
        problems.append(f"{len(cell.failed)} failed")
    if cell.interrupted:
        problems.append(f"{len(cell.interrupted)} interrupted")
    detail = None
    rankable = True
    chance = cell.chance if kind == "pretext" else None
    if chance is not None:
        detail = f"chance {chance:g}"
        if stats.mean <= chance + CHANCE_MARGIN:
            rankable = False
            if not any("chance" in text for text in caveats):
                notes.append(
                    footnotes.add(
                        f"pretext head at chance: accuracy within {CHANCE_MARGIN:g} of its "
                        f"chance level ({chance:g}), so it learned nothing measurable; never "
                        "marked best"
                    )
                )
    return Cell(
        text=fmt_accuracy(stats.mean),
        spread=None if stats.std is None else fmt_accuracy(stats.std),
        n=stats.n,
        detail=detail,
        problems="; ".join(problems) or None,
        notes=sorted(set(notes)),
        sort_value=stats.mean,
        rankable=rankable,
    )


def mark_best(rows: list[list[Cell]], columns: Iterable[int]) -> None:
    """Bold the best value of each column (ties all bold; unrankable cells never)."""
    for column in columns:
        values = [
            row[column].sort_value
            for row in rows
            if row[column].sort_value is not None and row[column].rankable
        ]
        if not values:
            continue
        best = max(v for v in values if v is not None)
        for row in rows:
            value = row[column].sort_value
            if (
                value is not None
                and row[column].rankable
                and math.isclose(value, best, rel_tol=0, abs_tol=1e-12)
            ):
                row[column].best = True
