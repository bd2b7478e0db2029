"""``sslbench bench``: a run's training step, fed three ways, side by side.

For the run a config describes (every ``KEY=VALUE`` of ``sslbench pretrain``), one process
measures, after the same warm-up, the same number of optimiser steps of three rows:

- ``sslbench``: the training step with its own data path, as ``sslbench pretrain`` runs it:
  Lightning's Trainer, batches of uint8 images from the decode-once cache, views made by the
  batched pipeline on the device;
- ``lightly``: the same LightningModule (model, loss, optimiser) and Trainer, fed by lightly's
  reference data path: the method's lightly transform at the run's settings applied per
  image to PIL images in DataLoader workers, one per core, as lightly's benchmarks do
  (:mod:`sslbench.tools.lightly_views`);
- ``ceiling``: the same step on views already on the device (one batch's, made once):
  compute only, what no data path can beat.

After the warm-up steps (cuDNN autotuning, worker start-up, allocator growth) each row times
``repeats`` consecutive blocks of ``steps`` optimiser steps (on a GPU the clock is read after
a device synchronisation). A row reports images/s of its median block (the run's images, each
giving the method's views), the median and the fastest block's time per step and their
spread, peak host memory (this process, and its DataLoader workers summed) and on a GPU peak
device memory. The last line reads ``ratio_vs_lightly=A share_of_ceiling=B``, A = sslbench /
lightly and B = sslbench / ceiling, from the median blocks; the lines before it say the
same ratios from the fastest blocks, when other processes loaded the machine (the load
average against its CPUs), and why a share of the ceiling above 1 is noise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from sslbench.data.held import HeldBatches
from sslbench.host import (
    available_cores,
    children_peak_memory_bytes,
    peak_memory_bytes,
    reset_peak_memory,
    set_torch_threads,
)
from sslbench.methods import SSLMethod, Views
from sslbench.run.pretrain import (
    RunData,
    accelerator_of,
    build_method,
    build_trainer,
    data_path_of,
    fit,
    open_data,
    precision_of,
    train_batches,
    train_loader,
)
from sslbench.run.results import versions
from sslbench.tools.lightly_views import PILViews, collate_views, lightly_transform

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


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable and waiting threads, every process's),
    or None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


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


# -- memory ------------------------------------------------------------------------------------
# -- timing ------------------------------------------------------------------------------------
class StepClock(pl.Callback):
    """The wall time of ``repeats`` consecutive blocks of ``steps`` optimiser steps after the
    first ``warmup`` (and the workers' peak memory at the end, while they still run).

    ``timer`` reads the clock (seconds); on a GPU it is read after a device synchronisation.
    """

    def __init__(self, warmup: int, steps: int, caught: list | None = None, repeats: int = 1,
                 timer: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.warmup, self.steps, self.repeats = warmup, steps, repeats
        self.timer = timer
        self.marks: list[float] = []  # the clock at the start of each block, and at the end
        self.worker_peak = 0
        # On a GPU: the warnings recorded during the fit; torch's sync debug mode turns each
        # host-device synchronisation of the timed steps into one.
        self.caught = caught
        self.syncs_before = 0
        self.clock_syncs = 0  # those of the clock itself, between blocks: not the step's
        self.host_syncs: int | None = None

    @property
    def seconds(self) -> list[float] | None:
        """Each block's wall time, once every block has run; None before."""
        if len(self.marks) < self.repeats + 1:
            return None
        return [end - start for start, end in zip(self.marks, self.marks[1:], strict=False)]

    def _now(self, module: pl.LightningModule) -> float:
        if module.device.type == "cuda":
            before = self._syncs()
            torch.cuda.synchronize()
            self.clock_syncs += self._syncs() - before
        return self.timer()

    def _syncs(self) -> int:
        """Host-device synchronisations recorded since the first block began."""
        if self.caught is None:
            return 0
        return sum("synchroniz" in str(w.message) for w in self.caught[self.syncs_before :])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        done = trainer.global_step - self.warmup  # optimiser steps since the warm-up
        if done < 0 or done % self.steps or done // self.steps != len(self.marks):
            return  # not a block's boundary (or one already marked: a step that did not step)
        last = done == self.repeats * self.steps
        if not self.marks and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            if self.caught is not None:
                self.syncs_before = len(self.caught)
                torch.cuda.set_sync_debug_mode("warn")
        if last and self.caught is not None and pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            self.host_syncs = self._syncs() - self.clock_syncs
        self.marks.append(self._now(pl_module))
        if last:
            self.worker_peak = children_peak_memory_bytes()


class RepeatedViews:
    """The same ready views ``length`` times: the ceiling row's data path (none)."""

    def __init__(self, views: Views, length: int) -> None:
        self.views, self.length = views, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Views]:
        return (self.views for _ in range(self.length))


def lightly_loader(
    cfg: DictConfig, data: RunData, model: SSLMethod, workers: int
) -> tuple[DataLoader, str]:
    """lightly's data path for the run: its transform per PIL image in ``workers`` workers."""
    transform, name = lightly_transform(cfg, model.backbone)
    dataset = PILViews(data.pretrain.images, data.pretrain.labels, data.pretrain_indices, transform)
    collate = partial(
        collate_views, num_global=model.num_global_views, num_local=model.num_local_views,
        with_grids=model.needs_coordinates,
    )  # fmt: skip
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, collate_fn=collate, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    return loader, f"lightly {name} per image, {workers} DataLoader workers"


def measure_row(row: str, cfg: DictConfig, data: RunData, settings: BenchSettings,
                accelerator: str, workers: int) -> BenchRow:  # fmt: skip
    """Build a fresh model (the run's seed), feed it ``row``'s way, time the steps."""
    reset_peak_memory()
    pl.seed_everything(cfg.seed, verbose=False)
    model = build_method(cfg, accelerator)
    total = settings.total_steps
    held, workers_busy = None, 0
    if row == "sslbench":
        loader: Any = train_batches(cfg, data, 1, accelerator, model)
        if isinstance(loader, HeldBatches):
            held = loader.nbytes
        path = data_path_of(loader)
        where = (
            f"in {loader.num_workers} DataLoader workers" if path == "workers" else "on the device"
        )
        detail = f"sslbench: uint8 batches ({path}), views made by the batched pipeline {where}"
        workers_busy = loader.num_workers if path == "workers" else 0
    elif row == "lightly":
        loader, detail = lightly_loader(cfg, data, model, workers)
        workers_busy = workers
    else:
        device = torch.device("cuda" if accelerator == "gpu" else "cpu")
        model.to(device)
        images, aspect, _ = next(iter(train_loader(cfg, data, world_size=1)))
        views = model.make_views(images.to(device), aspect.to(device))
        loader, detail = RepeatedViews(views, total), "views made once, on the device"
    with (
        tempfile.TemporaryDirectory(prefix="sslbench-bench-") as root,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        on_gpu = caught if accelerator == "gpu" else None
        clock = StepClock(settings.warmup, settings.steps, on_gpu, repeats=settings.repeats)
        trainer = build_trainer(cfg, accelerator, Path(root), logger=False,
                                callbacks=[clock], max_steps=total)  # fmt: skip
        fit(trainer, model, loader)
    if clock.seconds is None:
        raise RuntimeError(
            f"the {row} row ran fewer than {total} steps; the training set has "
            f"{len(data.pretrain_indices)} images: lower steps/warmup/repeats or raise "
            "dataset.max_train"
        )
    return BenchRow(
        row=row,
        repeat_seconds=clock.seconds,
        steps=settings.steps,
        batch_size=cfg.batch_size,
        peak_host_bytes=peak_memory_bytes(),
        peak_worker_host_bytes=clock.worker_peak,
        peak_device_bytes=torch.cuda.max_memory_allocated() if accelerator == "gpu" else None,
        held_images_bytes=held,
        host_syncs=clock.host_syncs,
        detail=detail,
        threads=torch.get_num_threads() + workers_busy,
        load_average=load_average(),
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(cfg: DictConfig, settings: BenchSettings) -> BenchResult:
    """Measure the rows of ``settings`` for the run ``cfg``; progress lines on stdout."""
    if cfg.devices != 1:
        raise ValueError(f"bench measures one device; got devices={cfg.devices}")
    threads = set_torch_threads(cfg.get("threads"))
    accelerator = accelerator_of(cfg)
    workers = available_cores() if settings.workers is None else settings.workers
    device = torch.cuda.get_device_name() if accelerator == "gpu" else "cpu"
    result = BenchResult(
        settings={
            "method": cfg.method.name, "transform": cfg.transform.name,
            "backbone": cfg.backbone.name, "image_size": cfg.image_size,
            "batch_size": cfg.batch_size, "precision": precision_of(cfg, accelerator),
            "dataset": cfg.dataset.name, "steps": settings.steps, "warmup": settings.warmup,
            "repeats": settings.repeats,
            "lightly_workers": workers, "overrides": OmegaConf.to_container(cfg, resolve=True),
        },
        machine={"cpu": _cpu_name(), "cores": available_cores(), "torch_threads": threads,
                 "device": device, "versions": versions(),
                 "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                 # before the rows: the bench has only imported so far (sslbench.tools.bench's
                 # busy_machine says how it is read)
                 "load_average": load_average()},
    )  # fmt: skip
    if "lightly" in settings.rows:  # a pipeline lightly cannot make fails before any work
        lightly_transform(cfg, build_method(cfg, accelerator).backbone)
    data = open_data(cfg, progress=cfg.progress_bar)
    for row in settings.rows:
        print(f"bench: {row} ...", flush=True)
        result.rows.append(measure_row(row, cfg, data, settings, accelerator, workers))
    return result


def write_json_line(result: BenchResult, out: str | os.PathLike[str]) -> None:
    """Append the result as one JSON line to ``out``."""
    with open(out, "a") as f:
        f.write(json.dumps(result.as_json(), default=str) + "\n")
