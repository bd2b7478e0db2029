"""A grid's runs and what every launcher does with them, below the launchers themselves.

:mod:`sslbench.grid.launch` expands a grid into :class:`GridRun` s and hands the ones still to do to
a :class:`Launcher` it picks by ``launcher.name``: its own local one (child processes on this
machine) or :mod:`sslbench.grid.slurm`'s (one SLURM job per run). Both launchers write a run's
``config.yaml`` before it starts (:func:`prepare_run_dir`), carry it out with the same
command (:func:`child_command`), mark it failed when its process could not say so itself
(:func:`record_failure`) and print one :func:`outcome_line` per run; this module holds those
pieces so that both import them from below and neither imports the other.

Nothing here imports torch (nor Hydra): the grid process stays small while its runs train.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig

from sslbench.config.compose import load_run_config
from sslbench.config.identity import config_hash
from sslbench.errors import ConfigError
from sslbench.run.results import read_results, run_identity, save_config, write_results


@dataclass
class GridRun:
    """One run of a grid: the overrides that compose it, and its resolved config."""

    index: int  # 1-based, in the grid's order
    overrides: list[str]  # everything the run is composed from
    label: list[str]  # the overrides that tell it apart from the grid's other runs
    cfg: DictConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    def status(self) -> str:
        """``new``, or the status its results.json says (``completed``, ``failed``,
        ``running`` for a run that was interrupted or is running elsewhere)."""
        try:
            return str(read_results(self.run_dir).get("status", "unknown"))
        except (OSError, ValueError):
            return "new"


@dataclass
class Grid:
    runs: list[GridRun]
    jobs: int
    launcher: DictConfig


class Launcher(Protocol):
    """What carries out a grid's runs; made from the grid (``Launcher(grid)``, its
    ``launcher`` config, ``jobs`` and number of runs), so that :func:`sslbench.grid.launch.run_grid`
    treats every launcher alike."""

    def launch(self, runs: list[GridRun]) -> bool:
        """Carry out ``runs`` (none of them completed), printing one :func:`outcome_line`
        per run; return whether Ctrl-C stopped it before every run ended."""
        ...


def describe(run: GridRun, total: int) -> str:
    width = len(str(total))
    return f"[{run.index:>{width}}/{total}] {' '.join(run.label) or '(one run)'}"


def outcome_line(run: GridRun, total: int) -> str:
    """``[2/4] method=byol transform=lorot  completed  top-1 0.612  1.3 min  runs/byol-…``"""
    try:
        results = read_results(run.run_dir)
    except (OSError, ValueError):
        results = {"status": "new"}
    status = str(results.get("status"))
    parts = [describe(run, total), f"{status:<9}"]
    if status == "completed":
        top1 = results.get("linear_top1")
        parts.append("top-1 n/a" if top1 is None else f"top-1 {top1:.3f}")
        parts.append(f"{(results.get('pretrain_seconds') or 0) / 60:.1f} min")
    elif status == "failed":
        parts.append(str(results.get("error")))
    parts.append(str(run.run_dir))
    return "  ".join(parts)


def prepare_run_dir(run: GridRun) -> None:
    """Write the run's config.yaml for its child process, refusing a folder that holds
    another run's config (a run folder belongs to one config)."""
    config_file = run.run_dir / "config.yaml"
    if config_file.is_file():
        try:
            existing = config_hash(load_run_config(config_file))
        except ConfigError:
            existing = None
        if existing != config_hash(run.cfg):
            raise ConfigError(
                f"{run.run_dir} holds the config of another run; move it away or set run_dir"
            )
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run.cfg, run.run_dir)


def record_failure(run: GridRun, error: str) -> None:
    """Mark a run failed in its results.json when its process could not say so itself
    (killed by a signal, out of memory, never started)."""
    try:
        written = read_results(run.run_dir)
    except (OSError, ValueError):
        written = {}
    results = {**run_identity(run.cfg), **written}  # which run it is, whatever got written
    if results.get("status") == "completed":
        return
    results.update(status="failed", error=error)
    write_results(run.run_dir, results)


def child_command(run_dir: Path) -> list[str]:
    """The command that carries out the run whose config.yaml the grid wrote in run_dir."""
    return [sys.executable, "-m", "sslbench", "pretrain", "--config",
            str(run_dir / "config.yaml")]  # fmt: skip
