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

This module runs the command (the machine's description, the rows in turn, the JSON line);
:mod:`sslbench.tools.bench_rows` measures one row, :mod:`sslbench.tools.bench_result` holds
what was measured and renders it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sslbench.data.splits import open_data
from sslbench.host import available_cores, set_torch_threads
from sslbench.run.build import accelerator_of, build_method, precision_of
from sslbench.run.results import versions
from sslbench.tools.bench_result import BenchResult, BenchSettings
from sslbench.tools.bench_rows import load_average, measure_row
from sslbench.tools.lightly_views import lightly_transform


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
                 # before the rows: the bench has only imported so far
                 # (sslbench.tools.bench_result's busy_machine says how it is read)
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
