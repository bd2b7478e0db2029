"""The report's plots, per section: accuracy against time, peak memory, loss curves.

Each plot is drawn once with matplotlib's Agg canvas (no display, no pyplot state) and
kept as PNG bytes and SVG text; the caller writes them beside the --out file or embeds the
PNG in the HTML page. Output is deterministic: SVG carries no date and a fixed id salt.
matplotlib is imported only when plots are drawn, so the text formats stay quick.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sslbench.errors import RunFolderError
from sslbench.report.collect import Run
from sslbench.report.curves import LossCurve, read_loss_curve
from sslbench.report.model import Report, RowKey, Section
from sslbench.report.tables import pipeline_order

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Marker shapes by pipeline (in pipeline order), cycled when there are more pipelines.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
SVG_SALT = "sslbench-report"


@dataclass
class Plot:
    """One drawn plot of one section."""

    slug: str  # the section's
    name: str  # top1_vs_minutes | peak_memory | loss
    title: str
    png: bytes
    svg: str
    file: str | None = None  # the PNG's file name beside the --out file, once written

    def file_stem(self, out_stem: str) -> str:
        return f"{out_stem}_{self.slug}_{self.name}"


def _method_label(run: Run) -> str:
    return RowKey(run.method, run.alpha).method_label


def _method_order(run: Run) -> tuple[Any, ...]:
    return RowKey(run.method, run.alpha).order()


def _colours(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: palette(i % palette.N) for i, label in enumerate(labels)}


def _encode(figure: Figure) -> tuple[bytes, str]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "path"}):
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100, metadata={"Software": None})
        svg = io.StringIO()
        figure.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png.getvalue(), svg.getvalue()


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_accuracy_vs_minutes(section: Section) -> Figure | None:
    """(a) linear top-1 against pretraining minutes: a marker per run, colour by method,
    shape by pipeline."""
    from matplotlib.lines import Line2D

    runs = [
        r
        for r in section.runs
        if r.status == "completed" and r.linear_top1 is not None and r.pretrain_seconds is not None
    ]
    if not runs:
        return None
    methods = sorted({_method_label(r): _method_order(r) for r in runs}.items(), key=lambda i: i[1])
    colours = _colours([label for label, _ in methods])
    transforms = sorted({r.transform for r in runs}, key=pipeline_order)
    markers = {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(transforms)}
    figure = _new_figure(8, 4.8)
    axes = figure.add_subplot()
    for run in runs:
        axes.scatter(
            (run.pretrain_seconds or 0.0) / 60,
            run.linear_top1,
            color=colours[_method_label(run)],
            marker=markers[run.transform],
            s=48,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
    axes.set_xlabel("pretraining minutes")
    axes.set_ylabel("linear top-1")
    axes.grid(True, alpha=0.3)
    axes.set_title(section.heading, fontsize=9)
    method_handles = [
        Line2D([], [], linestyle="", marker="o", color=colours[label], label=label)
        for label, _ in methods
    ]
    pipeline_handles = [
        Line2D([], [], linestyle="", marker=markers[t], color="grey", label=t) for t in transforms
    ]
    figure.legend(handles=method_handles, title="method", loc="outside right upper", fontsize=8)
    figure.legend(handles=pipeline_handles, title="pipeline", loc="outside right lower", fontsize=8)
    return figure


def plot_peak_memory(section: Section) -> Figure | None:
    """(b) peak memory per method: GPU memory, or the process's host memory when no run of
    the section recorded GPU memory (CPU runs)."""
    runs = [r for r in section.runs if r.status == "completed"]
    use_gpu = any(r.peak_gpu_bytes is not None for r in runs)
    by_method: dict[str, list[float]] = defaultdict(list)
    order: dict[str, tuple[Any, ...]] = {}
    for run in runs:
        value = run.peak_gpu_bytes if use_gpu else run.peak_host_bytes
        order[_method_label(run)] = _method_order(run)
        if value is not None:
            by_method[_method_label(run)].append(value / 1e9)
    labels = [label for label in sorted(order, key=order.__getitem__) if by_method[label]]
    if not labels:
        return None
    colours = _colours(labels)
    means = [sum(by_method[label]) / len(by_method[label]) for label in labels]
    figure = _new_figure(max(5.0, 0.8 * len(labels) + 2), 4.2)
    axes = figure.add_subplot()
    bars = axes.bar(range(len(labels)), means, color=[colours[label] for label in labels])
    axes.bar_label(bars, labels=[f"{m:.2f}" for m in means], fontsize=8)
    axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axes.set_ylabel(
        "peak GPU memory (GB)" if use_gpu else "peak host memory (GB, process RSS; no GPU)"
    )
    axes.set_title(textwrap.fill(section.heading, 60), fontsize=9)
    axes.grid(True, axis="y", alpha=0.3)
    return figure


def _curve_points(curve: LossCurve, by_epoch: bool) -> list[tuple[float, float]]:
    if by_epoch:
        return curve.by_epoch
    return curve.by_step or curve.epoch_loss_by_step


def plot_loss_curves(section: Section, warn: Callable[[str], None]) -> Figure | None:
    """(c) the training loss of each run from metrics.csv, one panel per method (losses of
    different methods are on different scales), one line per run. The x axis is the epoch
    when every run logged at least two epochs, the step otherwise."""
    curves: list[tuple[Run, LossCurve]] = []
    for run in section.runs:
        try:
            curve = read_loss_curve(run.folder)
        except RunFolderError as err:
            warn(f"no loss curve for {run.name}: {err}")
            continue
        except Exception as err:  # hostile metrics.csv the checks missed: no curve, no crash
            warn(f"no loss curve for {run.name}: {type(err).__name__}")
            continue
        if curve is not None:
            curves.append((run, curve))
    if not curves:
        return None
    by_epoch = all(len(curve.by_epoch) >= 2 for _, curve in curves)
    panels: dict[str, list[tuple[Run, LossCurve]]] = defaultdict(list)
    for run, curve in sorted(curves, key=lambda item: (_method_order(item[0]), item[0].name)):
        panels[_method_label(run)].append((run, curve))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = _new_figure(4.2 * columns, 3.2 * rows)
    figure.suptitle(f"training loss — {section.heading}", fontsize=9)
    for index, (label, members) in enumerate(panels.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        for run, curve in members:
            points = _curve_points(curve, by_epoch)
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            seed = "" if run.seed is None else f" seed {run.seed}"
            status = "" if run.status == "completed" else f" ({run.status})"
            axes.plot(
                xs,
                ys,
                marker="o" if len(xs) == 1 else None,
                markersize=3,
                linewidth=1,
                label=f"{run.transform}{seed}{status}",
            )
        axes.set_title(label, fontsize=9)
        axes.set_xlabel("epoch" if by_epoch else "step")
        axes.set_ylabel("train loss")
        axes.grid(True, alpha=0.3)
        if len(members) <= 12:
            axes.legend(fontsize=7)
    return figure


def plot_online_probe(section: Section) -> Figure | None:
    """(d) the online probe's test top-1 after each epoch it was measured
    (``eval.online_every_n_epochs``), one line per run; None when no run measured it."""
    curves = []
    for run in sorted(section.runs, key=lambda r: (_method_order(r), r.name)):
        try:
            curve = read_loss_curve(run.folder)
        except Exception:  # noqa: BLE001 - the loss plot has said why already
            continue
        if curve is not None and curve.online_by_epoch:
            curves.append((run, curve.online_by_epoch))
    if not curves:
        return None
    figure = _new_figure(6.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    colours = _colours(sorted({_method_label(run) for run, _ in curves}))
    for run, points in curves:
        xs, ys = zip(*[(epoch + 1, top1) for epoch, top1 in points], strict=True)
        seed = "" if run.seed is None else f" seed {run.seed}"
        axes.plot(xs, ys, marker="o", markersize=3, linewidth=1,
                  color=colours[_method_label(run)],
                  label=f"{_method_label(run)} / {run.transform}{seed}")  # fmt: skip
    axes.set_title(f"online linear probe, test top-1 — {section.heading}", fontsize=9)
    axes.set_xlabel("epoch")
    axes.set_ylabel("top-1")
    axes.grid(True, alpha=0.3)
    if len(curves) <= 12:
        axes.legend(fontsize=7)
    return figure


def make_plots(report: Report, warn: Callable[[str], None]) -> list[Plot]:
    """Every plot of every section that has the numbers for it."""
    plots = []
    for section in report.sections:
        drawings: list[tuple[str, str, Figure | None]] = [
            (
                "top1_vs_minutes",
                f"Linear top-1 against pretraining minutes: {section.heading}",
                plot_accuracy_vs_minutes(section),
            ),
            (
                "peak_memory",
                f"Peak memory per method: {section.heading}",
                plot_peak_memory(section),
            ),
            (
                "loss",
                f"Training loss per run: {section.heading}",
                plot_loss_curves(section, warn),
            ),
            (
                "online_probe",
                f"Online linear probe during pretraining: {section.heading}",
                plot_online_probe(section),
            ),
        ]
        for name, title, figure in drawings:
            if figure is not None:
                png, svg = _encode(figure)
                plots.append(Plot(section.slug, name, title, png, svg))
    return plots
