"""The report as data, before any format: Report > Section > Table > Cell, and the
statistics and number formats its cells use. tables.py builds it, render.py writes it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sslbench.report.collect import Run

#: Methods first in this order when present (VICRegL by α): the study's seven, then the
#: others of lightly's Imagenette benchmark; any other method after them, alphabetically.
METHOD_ORDER = (
    "simclr", "simsiam", "swav", "byol", "barlowtwins", "vicreg", "vicregl",
    "simclr_dcl", "simclr_dclw", "mocov2", "mocov3", "nnclr", "dino", "swav_queue",
    "fastsiam", "tico", "smog",
)  # fmt: skip
#: The reference rows (bounds), below every SSL method and never marked best: the same
#: backbone trained with the labels (a run of this method), then the backbone untrained
#: (the ``random_init`` block of a run's results.json; see bounds.py).
SUPERVISED = "supervised"
RANDOM_INIT = "random init"
MISSING = "–"  # a cell without runs (an en dash)
#: At most this many differing config keys are named in a variant's label.
MAX_LABEL_KEYS = 3


@dataclass
class Cell:
    """One table cell as renderers show it: ``text ± spread (n=3; detail; problems)`` and
    footnote marks."""

    text: str = MISSING
    spread: str | None = None  # sample standard deviation, after "±"
    n: int | None = None  # runs averaged (shown when more than one)
    detail: str | None = None  # what the number needs beside it: "chance 0.25"
    problems: str | None = None  # "1 failed; 1 interrupted" (the notes say which and why)
    notes: list[int] = field(default_factory=list)  # footnote numbers
    sort_value: float | None = None  # what the html page sorts by
    best: bool = False  # best of its column (bold)
    rankable: bool = True  # may be marked best (not a pretext head at chance)

    def details(self) -> list[str]:
        """What goes in the parentheses after the number."""
        parts = [f"n={self.n}"] if self.n is not None and self.n > 1 else []
        return parts + [part for part in (self.detail, self.problems) if part]

    def plain(self) -> str:
        """The cell as plain text (no markup, no footnote marks)."""
        text = self.text if self.spread is None else f"{self.text} ± {self.spread}"
        details = self.details()
        return text if not details else f"{text} ({'; '.join(details)})"


@dataclass
class Table:
    kind: str  # top1 | top5 | knn | knn_top1_k20 ... | sgd | pretext | ... | cellcost | cost
    title: str
    header: list[str]
    rows: list[list[Cell]]  # each row's first cell is its label
    remarks: list[str] = field(default_factory=list)  # one-line remarks printed under it
    #: Columns per pipeline: 1; 3 with the reference's value and the difference beside each
    #: accuracy column (ours, study, Δ); 2 with the reference's beside each cost column.
    group: int = 1
    accuracy: bool = True  # accuracy numbers (mean ± std); False: time and memory
    reference: str | None = None  # the reference's name in its columns ("study", "lightly")
    reference_owner: str = ""  # its possessive, for text: "the study's", "lightly's"
    first_bound: int | None = None  # index of the first reference row (supervised, random init)


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


@dataclass(frozen=True)
class RowKey:
    """A table row: a method, VICRegL's α, the pretext task, the config keys telling
    variants apart, and how its runs were scored where runs of one cell were scored
    differently (``scoring``: (protocol, its settings, label part) per protocol)."""

    method: str
    alpha: float | None
    variant: tuple[tuple[str, str], ...] = ()
    pretext: str | None = None
    scoring: tuple[tuple[str, str, str], ...] = ()
    #: The random-init row (no runs of its own); its method is RANDOM_INIT.
    random_init: bool = False

    @property
    def bound(self) -> str | None:
        """ "supervised" or "random_init" for a reference row, None for an SSL method."""
        if self.random_init:
            return "random_init"
        return SUPERVISED if self.method == SUPERVISED else None

    @property
    def method_label(self) -> str:
        if self.random_init:
            return RANDOM_INIT
        method = "supervised (labels)" if self.method == SUPERVISED else self.method
        label = method if self.alpha is None else f"{method} α={self.alpha:g}"
        return label if self.pretext is None else f"{label} + pretext {self.pretext}"

    @property
    def variant_label(self) -> str:
        parts = [f"{k}={short(v)}" for k, v in self.variant[:MAX_LABEL_KEYS]]
        if len(self.variant) > MAX_LABEL_KEYS:
            parts.append(f"+{len(self.variant) - MAX_LABEL_KEYS} more keys")
        return ", ".join(parts)

    @property
    def scoring_label(self) -> str:
        return ", ".join(dict.fromkeys(part for _, _, part in self.scoring))

    @property
    def label(self) -> str:
        inside = "; ".join(p for p in (self.variant_label, self.scoring_label) if p)
        return self.method_label if not inside else f"{self.method_label} ({inside})"

    def order(self) -> tuple[Any, ...]:
        """SSL methods (METHOD_ORDER, then alphabetically), then supervised, then random init."""
        group = (None, SUPERVISED, "random_init").index(self.bound)
        rank = METHOD_ORDER.index(self.method) if self.method in METHOD_ORDER else len(METHOD_ORDER)
        alpha = -1.0 if self.alpha is None else self.alpha
        return (group, rank, self.method, alpha, self.pretext or "", self.variant, self.scoring)


def short(value: str, limit: int = 24) -> str:
    """A config value for a label: without JSON quotes, at most ``limit`` characters."""
    text = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    records: list[dict[str, Any]]  # long form: one per cell with runs, then random init's
    random_init: RandomInitRow | None = None


@dataclass(frozen=True)
class RandomInitRow:
    """A section's random-init scores: one run's ``random_init`` block (Run attribute ->
    value), the run it came from and how many runs of the section hold one."""

    scores: dict[str, float]
    source: str
    n_blocks: int
    note: str  # the footnote on its label: where the numbers come from, and any disagreement


@dataclass
class Report:
    sections: list[Section]
    reference: str | None  # the --reference name ("study", "lightly"), None without
    n_runs: int  # runs counted (each once)
    n_skipped: int
    legend: list[str]  # how to read a cell, for the top of the document
    #: Lines the reader must see before the tables (folders holding one run, counted once).
    notices: list[str] = field(default_factory=list)
    n_duplicates: int = 0  # run folders left out as copies of a counted run


def summary(report: Report) -> str:
    """ "12 runs in 2 comparable sets; 1 run folder skipped (...)."."""
    runs = f"{report.n_runs} run{'s' * (report.n_runs != 1)}"
    if report.n_duplicates:
        copies = report.n_duplicates
        runs += f" ({copies} more folder{'s' * (copies != 1)} held copies: counted once)"
    sections = len(report.sections)
    text = f"{runs} in {sections} comparable set{'s' * (sections != 1)}"
    if report.n_skipped:
        text += (
            f"; {report.n_skipped} run folder{'s' * (report.n_skipped != 1)} skipped "
            "(the warnings on standard error say why)"
        )
    return text + "."


class Footnotes:
    """Numbered footnotes, one number per distinct text, shared by the whole report."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def add(self, text: str) -> int:
        return self.numbers.setdefault(text, len(self.numbers) + 1)

    def text(self, number: int) -> str:
        return next(t for t, n in self.numbers.items() if n == number)


# --- statistics and number formats ---------------------------------------------------------


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


def fmt_accuracy(value: float) -> str:
    return f"{value:.3f}"


def fmt_minutes(minutes: float) -> str:
    return f"{minutes:.1f}" if minutes >= 1 else f"{minutes:.2f}"


def fmt_gb(gb: float) -> str:
    return f"{gb:.1f}" if gb >= 1 else f"{gb:.2f}"


def fmt_diff(diff: float) -> str:
    return f"{diff:+.3f}"
