"""What ``sslbench bench`` measured and how it reads: the settings (which rows, how many
steps), each row's timed blocks and the figures that follow from them, and the whole result's
ratios, notes, table and JSON.

No torch here: the rows are measured by :mod:`sslbench.tools.bench_rows`, the command is run
by :mod:`sslbench.tools.bench`.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: The rows, in the order they run and print.
ROWS = ("sslbench", "lightly", "ceiling")


#: Timed blocks a row runs by default: the fewest whose median one disturbed block (another
#: process, a worker restart) cannot move far; each one more adds a block's time per row.
DEFAULT_REPEATS = 3


@dataclass
class BenchSettings:
    """How many steps each row runs (``warmup``, then ``repeats`` timed blocks of ``steps``),
    and which rows."""

    steps: int = 20
    warmup: int = 3
    workers: int | None = None  # the lightly row's DataLoader workers; None: the cores
    rows: Sequence[str] = ROWS
    repeats: int = DEFAULT_REPEATS

    def __post_init__(self) -> None:
        unknown = [row for row in self.rows if row not in ROWS]
        if unknown:
            raise ValueError(f"unknown bench row '{unknown[0]}'; valid: {', '.join(ROWS)}")
        if not self.rows:
            raise ValueError(f"no bench rows; valid: {', '.join(ROWS)}")
        if self.steps < 1 or self.warmup < 1 or self.repeats < 1:
            raise ValueError(
                f"steps, warmup and repeats must be >= 1, got steps={self.steps} "
                f"warmup={self.warmup} repeats={self.repeats}"
            )

    @property
    def total_steps(self) -> int:
        """Optimiser steps a row runs: the warm-up, then every timed block."""
        return self.warmup + self.repeats * self.steps


@dataclass
class BenchRow:
    """One row's measurement: each timed block's wall time, and what follows from them."""

    row: str
    repeat_seconds: list[float]  # each timed block's wall time, in the order they ran
    steps: int  # optimiser steps in each block
    batch_size: int
    peak_host_bytes: int
    peak_worker_host_bytes: int
    peak_device_bytes: int | None  # training's peak, the held images included
    held_images_bytes: int | None  # training images held in memory (data_path device/pinned)
    host_syncs: int | None  # host-device synchronisations in the timed steps (GPU only)
    detail: str
    threads: int = 0  # CPU threads the row keeps busy: torch's, and its DataLoader workers
    load_average: float | None = None  # the 1-minute load average when the row ended
    # From repeat_seconds: the median block (the row's figure) and the fastest one.
    images_per_second: float = field(init=False)
    images_per_second_best: float = field(init=False)
    step_seconds: float = field(init=False)
    step_seconds_min: float = field(init=False)
    spread: float = field(init=False)  # (slowest - fastest) / median block

    def __post_init__(self) -> None:
        median = statistics.median(self.repeat_seconds)
        fastest = min(self.repeat_seconds)
        self.images_per_second = self.steps * self.batch_size / median
        self.images_per_second_best = self.steps * self.batch_size / fastest
        self.step_seconds = median / self.steps
        self.step_seconds_min = fastest / self.steps
        self.spread = (max(self.repeat_seconds) - fastest) / median

    def cells(self) -> list[str]:
        device = "-" if self.peak_device_bytes is None else _gib(self.peak_device_bytes)
        if self.peak_device_bytes is not None and self.held_images_bytes:
            device += f" (data {_gib(self.held_images_bytes)})"
        workers = _gib(self.peak_worker_host_bytes) if self.peak_worker_host_bytes else "-"
        syncs = "-" if self.host_syncs is None else str(self.host_syncs)
        return [self.row, f"{self.images_per_second:,.0f}", f"{self.step_seconds * 1e3:,.0f}",
                f"{self.step_seconds_min * 1e3:,.0f}", f"{self.spread:.0%}",
                _gib(self.peak_host_bytes), workers, device, syncs, self.detail]  # fmt: skip


@dataclass
class BenchResult:
    """A whole benchmark: its settings, the machine, each row, and the two ratios."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)

    def _row(self, row: str) -> BenchRow | None:
        return next((r for r in self.rows if r.row == row), None)

    def rate(self, row: str, best: bool = False) -> float | None:
        """``row``'s images/s: its median block's, or with ``best`` its fastest block's."""
        found = self._row(row)
        if found is None:
            return None
        return found.images_per_second_best if best else found.images_per_second

    @property
    def ratio_vs_lightly(self) -> float | None:
        return _ratio(self.rate("sslbench"), self.rate("lightly"))

    @property
    def share_of_ceiling(self) -> float | None:
        return _ratio(self.rate("sslbench"), self.rate("ceiling"))

    @property
    def fastest_ratios(self) -> dict[str, float | None]:
        """The two ratios from each row's fastest block."""
        sslbench = self.rate("sslbench", best=True)
        return {
            "ratio_vs_lightly": _ratio(sslbench, self.rate("lightly", best=True)),
            "share_of_ceiling": _ratio(sslbench, self.rate("ceiling", best=True)),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings, "machine": self.machine,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "ratio_vs_lightly": self.ratio_vs_lightly, "share_of_ceiling": self.share_of_ceiling,
            "fastest": self.fastest_ratios, "notes": self.notes(),
        }  # fmt: skip

    def notes(self) -> list[str]:
        """What a reader must know beside the ratios: how the figures were taken, a machine
        that other processes loaded, a share of the ceiling above 1."""
        s = self.settings
        notes = [
            f"images/s and ms/step: the median of {s['repeats']} timed blocks of {s['steps']} "
            f"step{'s' * (s['steps'] != 1)}; min ms/step: the fastest block; spread: (slowest - "
            "fastest) / median block"
        ]
        fastest = self.fastest_ratios
        if any(value is not None for value in fastest.values()):
            notes.append("from the fastest blocks: " + " ".join(
                f"{key}={_fmt(value)}" for key, value in fastest.items()))  # fmt: skip
        busy = busy_machine(self)
        if busy:
            notes.append(busy)
        shares = [share for share in (self.share_of_ceiling, fastest["share_of_ceiling"])
                  if share is not None and share > 1]  # fmt: skip
        if shares:
            spreads = ", ".join(f"{r.row} {r.spread:.0%}" for r in self.rows if r.row != "lightly")
            notes.append(
                f"share_of_ceiling {_fmt(max(shares))} is noise: the ceiling row is the same "
                "step on views already on the device, which no data path can beat; read it as "
                f"'at the ceiling' (the blocks' spread: {spreads})"
            )
        return notes

    def render(self) -> str:
        s, m = self.settings, self.machine
        lines = [
            f"sslbench bench: {s['method']} / {s['transform']}, {s['backbone']}, "
            f"{s['image_size']} px, batch {s['batch_size']}, {s['precision']}, "
            f"{s['dataset']}; {s['warmup']} warm-up + {s['repeats']} x {s['steps']} timed "
            "steps a row",
            f"machine: {m['cpu']}, {m['cores']} cores available, {m['torch_threads']} torch "
            f"threads; device {m['device']}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
            "",
        ]
        header = ["row", "images/s", "ms/step", "min ms/step", "spread", "peak host", "workers",
                  "peak device", "host syncs", "data path"]  # fmt: skip
        table = [header, *(r.cells() for r in self.rows)]
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            pairs = enumerate(zip(row[:-1], widths, strict=True))
            cells = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs]
            lines.append("  ".join([*cells, row[-1]]))
        lines += ["", *self.notes()]
        lines += [f"ratio_vs_lightly={_fmt(self.ratio_vs_lightly)} "
                  f"share_of_ceiling={_fmt(self.share_of_ceiling)}"]  # fmt: skip
        return "\n".join(lines)


def busy_machine(result: BenchResult) -> str | None:
    """One line when other processes loaded the machine during the benchmark, else None.

    The load average counts every process's busy threads over all the machine's CPUs, the
    bench's own included: up to ``row.threads`` after a row (more than the CPUs in the lightly
    row, whose workers compete with the compute threads by design), about one before the
    first row (imports). So a load above both is other work. The 1-minute average lags, which
    undercounts a short row's own threads: the check errs towards silence.
    """
    cpus = result.machine.get("cpus") or 0
    if not cpus:
        return None
    seen = []
    before = result.machine.get("load_average")
    if before is not None and before > cpus:
        seen.append(f"{before:.2f} before the first row")
    for row in result.rows:
        if row.load_average is not None and row.load_average > max(cpus, row.threads):
            seen.append(
                f"{row.load_average:.2f} after the {row.row} row (its own threads: {row.threads})"
            )
    if not seen:
        return None
    return (
        f"busy machine: load average (1 minute) {'; '.join(seen)}, above the machine's {cpus} "
        "CPUs: other processes took CPU time from these rows, so their timings are slower and "
        "noisier than on an idle machine"
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
