"""Where a training step's time goes: the parts of each row of ``sslbench bench``.

For sslbench's data path and lightly's (the same model, loss, optimiser and Trainer), runs
``steps`` steps after ``warmup`` under Lightning's SimpleProfiler and prints, per step, the
time spent waiting for the next batch, in the training step (sslbench's views, made in
the step, are timed apart), in backward and in the optimiser:

    python benchmarks/profile_step.py                     # bench's defaults (SimCLR, 32 px)
    python benchmarks/profile_step.py image_size=64 steps=6 --out profile.jsonl

Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.profilers import SimpleProfiler

from sslbench.cli import bench_overrides
from sslbench.config import compose
from sslbench.data.splits import open_data
from sslbench.host import available_cores, set_torch_threads
from sslbench.run.batches import train_batches
from sslbench.run.build import build_method, build_trainer, fit
from sslbench.tools.bench_rows import lightly_loader

#: Lightning's profiler actions that make up a step (optimizer_step runs the closure: the
#: training step and backward happen inside it).
WAIT = "[_TrainingEpochLoop].train_dataloader_next"
STEP = "[Strategy]SingleDeviceStrategy.training_step"
BACKWARD = "[Strategy]SingleDeviceStrategy.backward"
OPTIMIZER = "[LightningModule]{method}.optimizer_step"


def _mean_ms(times: list[float]) -> float | None:
    return 1e3 * sum(times) / len(times) if times else None


def profile_row(row: str, cfg: Any, data: Any, steps: int, warmup: int) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, verbose=False)
    model = build_method(cfg, "cpu")
    if row == "sslbench":
        loader = train_batches(cfg, data, 1, "cpu", model)
    else:
        loader, _ = lightly_loader(cfg, data, model, available_cores())
    views_seconds: list[float] = []
    make_views = model.make_views

    def timed_views(*args: Any) -> Any:
        start = time.perf_counter()
        views = make_views(*args)
        views_seconds.append(time.perf_counter() - start)
        return views

    model.make_views = timed_views  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="sslbench-profile-") as root:
        profiler = SimpleProfiler(dirpath=root, filename="profile")  # its report: a file
        trainer = build_trainer(cfg, "cpu", Path(root), logger=False, callbacks=[],
                                max_steps=warmup + steps, profiler=profiler)  # fmt: skip
        fit(trainer, model, loader)
    durations = profiler.recorded_durations
    wait, step, backward, optimizer = (
        _mean_ms(durations.get(action.format(method=type(model).__name__), [])[warmup:])
        for action in (WAIT, STEP, BACKWARD, OPTIMIZER)
    )
    parts = {
        "wait for the batch": wait,
        "training step (views, forward, loss)": step,
        "  of which sslbench's views": _mean_ms(views_seconds[warmup:]),
        "backward": backward,
        "optimiser": None if None in (optimizer, step, backward) else optimizer - step - backward,
        "total": None if None in (wait, optimizer) else wait + optimizer,
    }
    return {"row": row, "ms_per_step": parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", help="run keys, and steps= warmup=")
    args = parser.parse_args()
    own = {k: int(v) for k, v in (o.split("=", 1) for o in args.overrides)
           if k in ("steps", "warmup")}  # fmt: skip
    overrides = [o for o in args.overrides if o.split("=", 1)[0] not in ("steps", "warmup")]
    cfg = compose(bench_overrides(overrides))
    threads = set_torch_threads(cfg.get("threads"))
    data = open_data(cfg, progress=False)
    steps, warmup = own.get("steps", 12), own.get("warmup", 3)
    print(f"{cfg.method.name}, {cfg.backbone.name}, {cfg.image_size} px, batch "
          f"{cfg.batch_size}, {threads} torch threads; ms per step over {steps} steps")  # fmt: skip
    for row in ("sslbench", "lightly"):
        result = profile_row(row, cfg, data, steps, warmup)
        print(f"{row}:")
        for name, ms in result["ms_per_step"].items():
            print(f"  {name:<42} {'-' if ms is None else f'{ms:8.1f}'}")
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps({**result, "image_size": cfg.image_size,
                                         "batch_size": cfg.batch_size, "threads": threads,
                                         "date": time.strftime("%Y-%m-%d")}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
