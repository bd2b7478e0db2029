"""Running a grid: ``sslbench pretrain -m method=simclr,byol transform=simclr,lorot seed=0,1,2``.

Read top to bottom: the command line's sweeps (Hydra's override grammar: ``a,b``, ``range``,
``choice``, ``glob`` over a group's options) and an experiment's explicit run list
(``grid.runs`` crossed with ``grid.axes``) expand into runs (:mod:`sslbench.grid.expand`)
→ each run is composed and validated there, before anything starts, and gets its folder
(named by the hash of its resolved config, as a single run's is) → runs whose folder says
``completed`` are skipped → the others run, each in its own child process
(``launcher=local``, ``grid.jobs`` at a time; :mod:`sslbench.grid.local`) or as one SLURM
job each (``launcher=slurm``, through hydra-submitit-launcher) → one line per run as it
ends, and a summary. Both launchers are a :class:`~sslbench.grid.runs.Launcher`, picked by
``launcher.name`` (:data:`LAUNCHERS`); what they share is in :mod:`sslbench.grid.runs`,
below them both.

Nothing here imports torch: the grid process stays small while its children train.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sslbench.grid import cost as grid_cost
from sslbench.grid.local import LocalLauncher
from sslbench.grid.runs import (
    Grid,
    Launcher,
    describe,
    outcome_line,
)
from sslbench.grid.slurm import PLUGIN_LAUNCHERS, SubmititLauncher

#: ``launcher.name`` -> what makes the grid's launcher: ours for ``local``, submitit's for
#: the SLURM names (:data:`sslbench.grid.slurm.PLUGIN_LAUNCHERS`).
LAUNCHERS: dict[str, Callable[[Grid], Launcher]] = {
    "local": LocalLauncher.for_grid,
    **dict.fromkeys(PLUGIN_LAUNCHERS, SubmititLauncher),
}


def launcher_for(grid: Grid) -> Launcher:
    """The launcher that ``launcher.name`` names. Any other name goes to submitit's, which
    refuses it naming the valid ones, as it did before the launchers shared an interface."""
    name = str(grid.launcher.get("name", "local"))
    return LAUNCHERS.get(name, SubmititLauncher)(grid)


def run_grid(grid: Grid, dry_run: bool = False) -> int:
    """Run (or with ``dry_run`` list) a grid's runs; return the exit status: 0 when every run
    is completed, 1 when any failed, 130 when interrupted."""
    total = len(grid.runs)
    statuses = {run.index: run.status() for run in grid.runs}
    done = [run for run in grid.runs if statuses[run.index] == "completed"]
    todo = [run for run in grid.runs if statuses[run.index] != "completed"]
    launcher = str(grid.launcher.get("name", "local"))
    print(f"grid: {total} runs, {len(done)} completed earlier, {len(todo)} to run "
          f"(launcher={launcher}, grid.jobs={grid.jobs})", flush=True)  # fmt: skip
    if dry_run:
        dry_run_listing(grid, statuses)
        return 0
    for run in done:
        print(outcome_line(run, total), flush=True)
    start = time.perf_counter()
    interrupted = False
    if todo:
        interrupted = launcher_for(grid).launch(todo)
    return summarize(grid, time.perf_counter() - start, len(done), interrupted)


def dry_run_listing(grid: Grid, statuses: dict[int, str]) -> None:
    """Each run (index, what sets it apart, status, expected time, folder), then what the
    runs still to do need: the device they would use, the data to download first, and the
    expected time with its sources (:mod:`sslbench.grid.cost`)."""
    total = len(grid.runs)
    todo = [run for run in grid.runs if statuses[run.index] != "completed"]
    gpus = grid_cost.gpu_names()
    roots = sorted({run.run_dir.parent for run in grid.runs})
    measured = grid_cost.measured_here(roots)
    estimates = {
        run.index: grid_cost.estimate(run.cfg, grid_cost.device_of(run.cfg, gpus), measured)
        for run in todo
    }
    for run in grid.runs:
        found = estimates.get(run.index)
        cost = f"~{grid_cost.duration(found.minutes, days=False)}" if found is not None else ""
        if run.index in estimates and found is None:
            cost = "?"  # to run, without an estimate
        print(f"{describe(run, total)}  {statuses[run.index]:<9}  {cost:>8}  {run.run_dir}")
    if not todo:
        return
    print()
    print(grid_cost.device_line([run.cfg for run in todo], gpus))
    for line in grid_cost.data_lines([run.cfg for run in todo]):
        print(line)
    on_gpu = [grid_cost.gpu_reference(run.cfg) for run in todo]
    for line in grid_cost.time_lines(list(estimates.values()), roots, gpus, grid.jobs, on_gpu):
        print(line)


def summarize(grid: Grid, seconds: float, earlier: int, interrupted: bool) -> int:
    statuses = [run.status() for run in grid.runs]
    completed = statuses.count("completed")
    failed = [run for run, s in zip(grid.runs, statuses, strict=True) if s != "completed"]
    roots = sorted({str(run.run_dir.parent) for run in grid.runs})
    print(
        f"\ngrid: {len(grid.runs)} runs: {completed} completed ({earlier} earlier), "
        f"{len(failed)} not completed; {seconds / 60:.1f} min"
    )
    for run in failed:
        print(f"  not completed: {outcome_line(run, len(grid.runs))}")
    if failed:
        print("rerun the same command to run only these; see error.log / output.log in each folder")
    print(f"tables: sslbench report {' '.join(roots)}")
    if interrupted:
        return 130
    return 1 if failed else 0
