"""A run's training curves from its ``metrics.csv`` (Lightning's CSVLogger), for the plots.

The file is hostile input like the rest of a run folder (collect.read_regular_file: a
regular file under a size cap); rows that do not parse are skipped, and a file that is not
a CSV log costs only that run's curve.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sslbench.errors import RunFolderError, one_line
from sslbench.report.files import read_regular_file

METRICS_FILE = "metrics.csv"
#: A metrics.csv is a few MB.
MAX_METRICS_BYTES = 256 * 2**20
#: Points kept per loss curve (longer curves are thinned evenly).
MAX_CURVE_POINTS = 5_000


@dataclass
class LossCurve:
    """A run's training loss from metrics.csv, as (x, loss) points."""

    by_epoch: list[tuple[float, float]]  # (epoch, train_loss_epoch)
    epoch_loss_by_step: list[tuple[float, float]]  # (step, train_loss_epoch)
    by_step: list[tuple[float, float]]  # (step, train_loss_step)
    online_by_epoch: list[tuple[float, float]] = field(default_factory=list)  # online probe top-1


def _finite(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    points.sort()
    if len(points) <= MAX_CURVE_POINTS:
        return points
    stride = len(points) / MAX_CURVE_POINTS
    return [points[int(i * stride)] for i in range(MAX_CURVE_POINTS)]


def read_loss_curve(folder: Path) -> LossCurve | None:
    """The training loss logged in metrics.csv (Lightning's CSVLogger: sparse rows), or
    None when there is none; RunFolderError when the file is unreadable."""
    try:
        raw = read_regular_file(folder / METRICS_FILE, MAX_METRICS_BYTES)
    except RunFolderError as err:
        if str(err) == f"no {METRICS_FILE}":
            return None
        raise
    by_epoch: list[tuple[float, float]] = []
    epoch_by_step: list[tuple[float, float]] = []
    by_step: list[tuple[float, float]] = []
    online: list[tuple[float, float]] = []
    try:
        rows: Iterable[dict[str, str | None]] = csv.DictReader(
            io.StringIO(raw.decode("utf-8", errors="replace"), newline="")
        )
        for row in rows:
            epoch, step = _finite(row.get("epoch")), _finite(row.get("step"))
            epoch_loss = _finite(row.get("train_loss_epoch"))
            step_loss = _finite(row.get("train_loss_step"))
            if epoch_loss is not None:
                if epoch is not None:
                    by_epoch.append((epoch, epoch_loss))
                if step is not None:
                    epoch_by_step.append((step, epoch_loss))
            if step_loss is not None and step is not None:
                by_step.append((step, step_loss))
            online_top1 = _finite(row.get("online_probe_top1"))
            if online_top1 is not None and epoch is not None:
                online.append((epoch, online_top1))
    except (csv.Error, AttributeError) as err:
        raise RunFolderError(f"metrics.csv is not a CSV log: {one_line(str(err), 120)}") from None
    if not (by_epoch or epoch_by_step or by_step or online):
        return None
    return LossCurve(_thin(by_epoch), _thin(epoch_by_step), _thin(by_step), _thin(online))
