"""Grids of runs: ``sslbench pretrain -m method=simclr,byol transform=simclr,lorot seed=0,1,2``.

Read top to bottom: the command line's sweeps (Hydra's override grammar: ``a,b``, ``range``,
``choice``, ``glob`` over a group's options) and an experiment's explicit run list
(``grid.runs`` crossed with ``grid.axes``) expand into runs → each run is composed and
validated here, before anything starts, and gets its folder (named by the hash of its
resolved config, as a single run's is) → runs whose folder says ``completed`` are skipped →
the others run, each in its own child process (``launcher=local``, ``grid.jobs`` at a time)
or as one SLURM job each (``launcher=slurm``, through hydra-submitit-launcher) → one line per
run as it ends, and a summary. Both launchers are a :class:`~sslbench.grid.runs.Launcher`,
picked by ``launcher.name`` (:data:`LAUNCHERS`); what they share is in :mod:`sslbench.grid.runs`,
below them both.

A child process per run is what makes a grid robust: a crash, a NaN or an out-of-memory kill
ends that run only, and every run's peak-memory counters start at zero. Nothing here imports
torch: the grid process stays small while its children train.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from omegaconf import DictConfig

from sslbench.config import compose
from sslbench.config.compose import parse_overrides
from sslbench.config.schema import GRID_SECTIONS, GROUPS, group_options
from sslbench.errors import ConfigError
from sslbench.grid import cost as grid_cost
from sslbench.grid.runs import (
    Grid,
    GridRun,
    Launcher,
    child_command,
    describe,
    outcome_line,
    prepare_run_dir,
    record_failure,
)
from sslbench.grid.slurm import PLUGIN_LAUNCHERS, SubmititLauncher
from sslbench.host import available_cores

# ---------------------------------------------------------------- expanding the command line


def _is_glob(override: Any) -> bool:
    """Whether an override is a ``glob(...)``: a pattern, which may match fewer values."""
    from hydra.core.override_parser.types import Glob

    return override.is_sweep_override() and isinstance(override.value(), Glob)


def _sweep_values(override: Any) -> list[str]:
    """The values of one command-line override, as override strings' right-hand sides."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    value = override.value()
    if _is_glob(override):
        if key not in GROUPS:
            raise ConfigError(f"'{override.input_line}': glob() selects options of a group "
                              f"({', '.join(GROUPS)}), not values of {key}")  # fmt: skip
        chosen = value.filter(group_options(key))
        if not chosen:
            raise ConfigError(
                f"'{override.input_line}' matches no {key}; valid: {', '.join(group_options(key))}"
            )
        return chosen
    if not override.is_discrete_sweep():
        raise ConfigError(
            f"'{override.input_line}': a grid takes lists of values (a,b / range / choice / "
            f"glob), not intervals"
        )
    values = list(override.sweep_string_iterator())
    if not values:
        raise ConfigError(f"'{override.input_line}' has no values")
    return values


def _same_value(a: Any, b: Any) -> bool:
    """Whether two override values are the same (0.5 and 0.50 are)."""
    a, b = str(a), str(b)
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return False


def _select_rows(
    experiment: str, rows: list[dict[str, str]], key: str, values: list[str]
) -> list[dict[str, str]]:
    """Keep the experiment's rows whose ``key`` takes one of ``values``."""
    kept = [row for row in rows if key in row and any(_same_value(row[key], v) for v in values)]
    if not kept:
        have = sorted({row[key] for row in rows if key in row}, key=str)
        raise ConfigError(
            f"no run of experiment {experiment} has {key}={','.join(values)}; "
            f"its values: {', '.join(map(str, have))}"
        )
    return kept


def _check_selection(
    experiment: str,
    rows: list[dict[str, str]],
    axes: dict[str, list[str]],
    selections: list[tuple[str, list[str]]],
    patterns: set[str],
) -> None:
    """Refuse, in one line, every value of a selecting key that no row or axis of the
    experiment has (a misspelt ``method=simsiamm`` beside a valid ``simclr`` would otherwise
    drop out of the grid unseen). A glob's values are a pattern's matches: it only has to
    match one, which the selection itself checks."""
    missing = []
    for key, values in selections:
        if key in patterns:
            continue
        have = [row[key] for row in rows if key in row] or axes.get(key, [])
        if not have:
            continue  # not a selecting key: it applies to every run
        unknown = [v for v in values if not any(_same_value(h, v) for h in have)]
        if unknown:
            valid = sorted(set(have), key=str) if key not in axes else have
            missing.append(f"{key}={','.join(unknown)} (its values: {', '.join(valid)})")
    if missing:
        raise ConfigError(f"no run of experiment {experiment} has {', nor '.join(missing)}")


def _rows_of(base: DictConfig) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """An experiment's explicit rows (``grid.runs``) and its crossed ``grid.axes``."""
    rows = []
    for entry in base.grid.runs:
        row = {}
        for item in entry:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise ConfigError(f"grid.runs entry '{item}' is not key=value")
            row[key] = value
        rows.append(row)
    axes = {str(k): [str(v) for v in values] for k, values in base.grid.axes.items()}
    return rows or [{}], axes


def expand(args: Sequence[str]) -> Grid:
    """The runs of ``sslbench pretrain -m ARGS``, each composed, validated and given its
    folder. A key set on the command line that an experiment's rows or axes also set selects
    among them (``experiment=study_imagenette method=simclr,byol``); every other override
    applies to all runs. ``run_dir=D`` puts the grid's runs under D."""
    fixed: list[tuple[str, str]] = []  # (key, value) applied to every run
    sweeps: dict[str, list[str]] = {}
    patterns: set[str] = set()  # keys given as glob(...)
    for override in parse_overrides(args, allow_sweeps=True):
        key = override.get_key_element()
        values = _sweep_values(override)
        if _is_glob(override):
            patterns.add(key)
        if key == "run_dir":
            if len(values) > 1:
                raise ConfigError("run_dir of a grid is one folder, under which its runs go")
            key = "runs_root"
        if override.is_sweep_override():
            sweeps[key] = values
        else:
            fixed.append((key, values[0]))

    # The grid's own settings and the experiment's rows come from the fixed overrides.
    base = compose(
        [f"{k}={v}" for k, v in fixed if k == "experiment" or k.split(".")[0] in GRID_SECTIONS]
    )
    experiment = next((v for k, v in fixed if k == "experiment"), "")
    rows, axes = _rows_of(base)
    selections = [(k, v if isinstance(v, list) else [v]) for k, v in [*fixed, *sweeps.items()]]
    _check_selection(experiment, rows, axes, selections, patterns)
    for key, values in selections:
        if any(key in row for row in rows):
            rows = _select_rows(experiment, rows, key, values)
        elif key in axes:
            axes[key] = [v for v in axes[key] if any(_same_value(v, w) for w in values)]
            if not axes[key]:
                raise ConfigError(f"experiment {experiment} has no {key}={','.join(values)}")
    selecting = {k for row in rows for k in row} | set(axes)
    common = [
        f"{k}={v}" for k, v in fixed if k not in selecting and k.split(".")[0] not in GRID_SECTIONS
    ]
    crossed = {**axes, **{k: v for k, v in sweeps.items() if k not in selecting}}

    runs: list[GridRun] = []
    seen: dict[str, GridRun] = {}
    for row in rows:
        for combo in itertools.product(*crossed.values()):
            label = [f"{k}={v}" for k, v in row.items()]
            label += [f"{k}={v}" for k, v in zip(crossed, combo, strict=True)]
            overrides = [*common, *label]
            try:
                cfg = compose(overrides)
            except ConfigError as err:
                raise ConfigError(f"run {' '.join(label) or '(the base)'}: {err}") from None
            # a run is one run: the experiment's rows are the grid's, not its own
            cfg.grid.runs, cfg.grid.axes = [], {}
            cfg.launcher = base.launcher
            run = GridRun(len(runs) + 1, overrides, label, cfg)
            if run.cfg.run_dir in seen:  # e.g. seed=0,0: one run, one folder
                continue
            seen[run.cfg.run_dir] = run
            runs.append(run)
    jobs = int(base.grid.jobs)
    if jobs < 1:
        raise ConfigError(f"grid.jobs must be at least 1, got {jobs}")
    return Grid(runs, jobs, base.launcher)


# ---------------------------------------------------------------- running it


def _error_of(run: GridRun, returncode: int) -> str:
    """Why a child failed: its own one-line error from output.log, else how it ended."""
    log = run.run_dir / "output.log"
    if log.is_file():
        errors = [line for line in log.read_text(errors="replace").splitlines()
                  if line.startswith("sslbench: error: ")]  # fmt: skip
        if errors:
            return errors[-1].removeprefix("sslbench: error: ")
    return _signal_error(returncode)


def _signal_error(returncode: int) -> str:
    if returncode >= 0:
        return f"the run's process exited with status {returncode}"
    name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
    hint = " (out of memory?)" if -returncode == signal.SIGKILL else ""
    return f"the run's process was killed by {name or -returncode}{hint}"


def _gpu_count() -> int:
    """GPUs a child could be given (only asked when several runs go at once)."""
    return len(grid_cost.gpu_names())


def child_env(slot: int, jobs: int, gpus: int) -> dict[str, str]:
    """The environment of the child in ``slot`` (0..jobs-1): its share of the CPU threads,
    and, with 2 or more GPUs, GPU ``slot mod GPUs`` to itself."""
    env = dict(os.environ)
    if jobs > 1:
        threads = str(max(1, available_cores() // jobs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if gpus >= 2:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
            env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)].strip()
    return env


class LocalLauncher:
    """``launcher=local``: runs a grid's runs as child processes of this one, ``jobs`` at a
    time (a :class:`~sslbench.grid.runs.Launcher`).

    With one job at a time on a terminal, a child's output (Lightning's progress bar) goes
    to the terminal; otherwise to ``output.log`` in its run folder."""

    @classmethod
    def for_grid(cls, grid: Grid) -> LocalLauncher:
        return cls(grid.jobs, len(grid.runs), stream=grid.jobs == 1 and sys.stdout.isatty())

    def __init__(self, jobs: int, total: int, stream: bool) -> None:
        self.jobs, self.total, self.stream = jobs, total, stream
        self.gpus = _gpu_count() if jobs > 1 else 0
        self.lock = threading.Lock()
        self.free_slots = list(range(jobs))
        self.interrupted = False

    def say(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)

    def run_one(self, run: GridRun) -> None:
        if self.interrupted:
            return
        with self.lock:
            slot = self.free_slots.pop(0)
        try:
            self._run_in_slot(run, slot)
        finally:
            with self.lock:
                self.free_slots.append(slot)

    def _run_in_slot(self, run: GridRun, slot: int) -> None:
        try:
            prepare_run_dir(run)
        except (ConfigError, OSError) as err:
            self.say(f"{describe(run, self.total)}  not started: {err}")
            return
        command = child_command(run.run_dir)
        env = child_env(slot, self.jobs, self.gpus)
        self.say(f"{describe(run, self.total)}  started  {run.run_dir}")
        if self.stream:
            returncode = subprocess.run(command, env=env).returncode
        else:
            with open(run.run_dir / "output.log", "w") as log:
                command.append("progress_bar=false")
                returncode = subprocess.run(command, env=env, stdout=log, stderr=log).returncode
        if returncode in (130, -signal.SIGINT):
            self.interrupted = True
        if returncode != 0:
            record_failure(run, _error_of(run, returncode))
        self.say(outcome_line(run, self.total))

    def launch(self, runs: list[GridRun]) -> bool:
        """Run them all; on Ctrl-C (which the children get too) start no other run, and
        say so (a Ctrl-C while the pool winds down counts too)."""
        try:
            self._launch_all(runs)
        except KeyboardInterrupt:
            self.interrupted = True
        return self.interrupted

    def _launch_all(self, runs: list[GridRun]) -> None:
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        try:
            for future in [pool.submit(self.run_one, run) for run in runs]:
                future.result()
        except KeyboardInterrupt:
            self.interrupted = True
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


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
