"""The local launcher (``launcher=local``): each run of a grid in a child process of its
own, ``grid.jobs`` at a time, the cores and GPUs shared out between them.

A child process per run is what makes a grid robust: a crash, a NaN or an out-of-memory kill
ends that run only, and every run's peak-memory counters start at zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from sslbench.errors import ConfigError
from sslbench.grid import cost as grid_cost
from sslbench.grid.runs import (
    Grid,
    GridRun,
    child_command,
    describe,
    outcome_line,
    prepare_run_dir,
    record_failure,
)
from sslbench.host import available_cores


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
