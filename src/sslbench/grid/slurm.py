"""A grid on SLURM: one job per run, through hydra-submitit-launcher.

``sslbench pretrain -m launcher=slurm launcher.partition=gpu ...`` hands the runs that are not
completed to the plugin's launcher (``hydra/launcher=submitit_slurm``) as one job array and
waits for it, exactly as a Hydra multirun would; ``launcher=submitit_local`` takes the same
path with submitit's local executor, which is how it is tested without a cluster.

Each job receives one override, ``run_dir=FOLDER``: the grid has written the run's fully
resolved ``config.yaml`` there, and the job runs ``sslbench pretrain --config`` on it in a
child process. So a job repeats exactly the run the grid composed, whatever happens to the
configuration files between submission and start.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from sslbench.config.overrides import quote_path_override
from sslbench.config.schema import conf_dir
from sslbench.errors import one_line
from sslbench.grid.runs import (
    Grid,
    GridRun,
    child_command,
    outcome_line,
    prepare_run_dir,
    record_failure,
)

#: Our launcher YAML's name -> the plugin's launcher config.
PLUGIN_LAUNCHERS = {"slurm": "submitit_slurm", "submitit_local": "submitit_local"}


def run_in_job(cfg: DictConfig) -> int:
    """The task of one job: the run whose config.yaml is in ``cfg.run_dir``, in a child
    process (a fresh interpreter: the job's own Hydra state stays out of the run)."""
    return subprocess.run([*child_command(Path(str(cfg.run_dir))), "progress_bar=false"]).returncode


def plugin_params(launcher: DictConfig) -> dict[str, Any]:
    """Our launcher keys as the plugin's (everything but our ``name``)."""
    params = OmegaConf.to_container(launcher, resolve=True)
    assert isinstance(params, dict)
    params.pop("name", None)
    return params


@contextlib.contextmanager
def plugin_launcher(launcher: DictConfig, sweep_dir: Path) -> Iterator[Any]:
    """hydra-submitit-launcher's launcher for our ``launcher`` config, inside the Hydra
    context its jobs need (they carry Hydra's state with them when pickled)."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks  # Hydra's own multirun builds it so
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    kind = str(launcher.name)
    if kind not in PLUGIN_LAUNCHERS:
        raise ValueError(f"unknown launcher '{kind}'; valid: local, {', '.join(PLUGIN_LAUNCHERS)}")
    overrides = [
        f"hydra/launcher={PLUGIN_LAUNCHERS[kind]}",
        f"hydra.sweep.dir={sweep_dir.resolve()}",
        "hydra.sweep.subdir=${hydra.job.num}",
        "hydra.output_subdir=null",  # nothing of Hydra's in the run folders
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        "hydra.job.name=sslbench",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3", job_name="sslbench"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        config = hydra.compose_config(
            "config", overrides=overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
        with open_dict(config.hydra.launcher):
            for key, value in plugin_params(launcher).items():
                config.hydra.launcher[key] = value
        context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(config))
        yield Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=run_in_job, config=config
        )


class SubmititLauncher:
    """``launcher=slurm`` (and ``submitit_local``): a grid's runs as one job each, through
    hydra-submitit-launcher (a :class:`~sslbench.grid.runs.Launcher`)."""

    def __init__(self, grid: Grid) -> None:
        self.config, self.total = grid.launcher, len(grid.runs)

    def launch(self, runs: list[GridRun]) -> bool:
        """Submit ``runs`` as one job each, wait for them, and print one line per run.
        Ctrl-C is not caught here: it ends the grid command at once (``sslbench:
        interrupted``, exit 130, no summary), so this never returns True."""
        from hydra.core.utils import JobStatus  # Hydra only once a grid goes to submitit

        for run in runs:
            prepare_run_dir(run)
        root = Path(runs[0].cfg.runs_root)
        sweep_dir = root / ".submitit" / time.strftime("%Y-%m-%d_%H-%M-%S")
        with plugin_launcher(self.config, sweep_dir) as plugin:
            print(f"submitting {len(runs)} jobs ({self.config.name}); submitit's logs in "
                  f"{sweep_dir}/.submitit", flush=True)  # fmt: skip
            try:
                jobs = [[quote_path_override(f"run_dir={run.run_dir.resolve()}")] for run in runs]
                returns = plugin.launch(jobs, 0)
            except Exception as err:  # noqa: BLE001 - a job the cluster killed: the others ran
                print(f"some jobs ended abnormally: {one_line(err)}")
                returns = []
        for run, job in zip(runs, returns, strict=False):
            if job.status != JobStatus.COMPLETED:
                record_failure(run, f"the job failed: {job._return_value!r}")
            elif job.return_value != 0:
                record_failure(run, f"the run's process exited with status {job.return_value}")
        for run in runs:
            print(outcome_line(run, self.total), flush=True)
        return False
