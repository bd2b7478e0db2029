"""Expanding a grid: the command line's sweeps (Hydra's override grammar: ``a,b``,
``range``, ``choice``, ``glob`` over a group's options) and an experiment's explicit run list
(``grid.runs`` crossed with ``grid.axes``) into runs, each composed and validated here,
before anything starts, with its folder named by the hash of its resolved config (as a
single run's is). Pure Python, no torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from sslbench.config import compose
from sslbench.config.overrides import parse_overrides
from sslbench.config.schema import GRID_SECTIONS, GROUPS, group_options
from sslbench.errors import ConfigError
from sslbench.grid.runs import (
    Grid,
    GridRun,
)


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
