"""A run folder belongs to one run.

A folder's ``config.yaml`` says which run it holds. Starting a run in a folder that holds
another (a reused ``run_dir``, an edited config) is an error naming what differs, unless
``overwrite=true``; the earlier attempt's checkpoint, metrics and error log are then removed
before anything else is written, so no ``last.ckpt`` is ever left beside a config it does
not belong to (a later ``sslbench eval`` would score old weights under the new config).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sslbench.config import ConfigError, load_run_config
from sslbench.config.compose import config_differences

__all__ = ["ATTEMPT_FILES", "claim_run_folder"]

#: What one attempt at a run leaves in its folder besides config.yaml and results.json.
ATTEMPT_FILES = ("last.ckpt", "metrics.csv", "error.log")


def claim_run_folder(cfg: DictConfig, run_dir: Path) -> None:
    """Make ``run_dir`` ready for a fresh attempt at ``cfg``'s run, or raise
    :class:`ConfigError` when it holds another run and ``overwrite`` is not set."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        try:
            differences = config_differences(load_run_config(saved), cfg)
        except (ConfigError, ValueError, OSError) as err:
            differences = [f"its config.yaml does not load ({err})"]
        if differences and not cfg.get("overwrite", False):
            shown = "; ".join(differences[:3])
            more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
            raise ConfigError(
                f"run_dir={run_dir} holds another run ({shown}{more}); choose another run_dir, "
                "or add overwrite=true to replace it"
            )
    for name in ATTEMPT_FILES:
        (run_dir / name).unlink(missing_ok=True)
