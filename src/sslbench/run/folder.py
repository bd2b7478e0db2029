"""A run folder belongs to one run, and an interrupted run continues in it.

A folder's ``config.yaml`` says which run it holds. Starting a run in a folder that holds
another (a reused ``run_dir``, an edited config) is an error naming what differs, unless
``overwrite=true``; the earlier attempt's checkpoint, metrics and error log are then removed
before anything else is written, so no ``last.ckpt`` is ever left beside a config it does
not belong to (a later ``sslbench eval`` would score old weights under the new config).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from omegaconf import DictConfig

from sslbench.config import load_run_config
from sslbench.config.identity import config_differences
from sslbench.errors import ConfigError
from sslbench.run.results import atomic_write_text, read_results

__all__ = [
    "ATTEMPT_FILES",
    "claim_run_folder",
    "metrics_columns",
    "trim_metrics",
]


#: Set in the environment of the ranks that an ``sslbench pretrain devices=N`` command
#: started itself (sslbench.run.cluster): that command prints the run's summary, they do not.
RANKS_OF_A_COMMAND = "SSLBENCH_RANKS_OF_A_COMMAND"


#: What one attempt at a run leaves in its folder besides config.yaml and results.json.
ATTEMPT_FILES = ("last.ckpt", "metrics.csv", "error.log")


def claim_run_folder(cfg: DictConfig, run_dir: Path, modify: bool = True) -> Path | None:
    """Make ``run_dir`` ready for an attempt at ``cfg``'s run and return the checkpoint to
    resume from (None: start over), or raise :class:`ConfigError` when it holds another run
    and ``overwrite`` is not set.

    The same run resumes (``resume=auto``) when it has a ``last.ckpt`` and no completed
    result; otherwise, and with ``overwrite=true``, the earlier attempt's files are removed.
    ``modify=False`` (the other ranks of a run over several devices) only reads: rank 0 has
    claimed the folder already.
    """
    saved = run_dir / "config.yaml"
    differences: list[str] = []
    if saved.is_file():
        try:
            differences = config_differences(load_run_config(saved), cfg)
        except (ConfigError, ValueError, OSError) as err:
            differences = [f"its config.yaml does not load ({err})"]
        if differences and not cfg.get("overwrite", False) and modify:
            shown = "; ".join(differences[:3])
            more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
            raise ConfigError(
                f"run_dir={run_dir} holds another run ({shown}{more}); choose another run_dir, "
                "or add overwrite=true to replace it"
            )
    checkpoint = run_dir / "last.ckpt"
    if (
        saved.is_file() and not differences and not cfg.get("overwrite", False)
        and cfg.get("resume", "auto") == "auto" and checkpoint.is_file()
        and _status(run_dir) != "completed"
    ):  # fmt: skip
        return checkpoint
    if modify:
        for name in ATTEMPT_FILES:
            (run_dir / name).unlink(missing_ok=True)
    return None


def _status(run_dir: Path) -> str | None:
    try:
        status = read_results(run_dir).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def trim_metrics(run_dir: Path, last_step: int) -> None:
    """Drop the rows of ``metrics.csv`` logged after step ``last_step``: a resumed run logs
    those steps again."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rows = [row for row in reader if _step(row) <= last_step]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def metrics_columns(run_dir: Path) -> list[str]:
    """The header of a run's ``metrics.csv`` (empty when there is none)."""
    try:
        with open(run_dir / "metrics.csv", newline="") as handle:
            return list(csv.DictReader(handle).fieldnames or [])
    except OSError:
        return []


def _step(row: dict[str, str]) -> int:
    try:
        return int(float(row.get("step") or 0))
    except ValueError:
        return 0
