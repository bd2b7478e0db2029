"""Runs over several processes: who launches the ranks, and SLURM's preemption signal.

One run is one command. On one node, ``sslbench pretrain devices=4`` starts its four ranks
through torch's own launcher (``torchrun``), each running ``sslbench pretrain --config`` on
the run's saved config.yaml: Lightning then finds the ranks started and does not launch
them itself (its own launcher re-executes the process's command line on every rank, which
for a grid command, or a Python session, is not the run). Across nodes the cluster's
launcher starts every rank: ``srun`` (Lightning's SLURM environment) or ``torchrun`` on each
node; docs/multi-gpu.md has an example ``sbatch`` script.

SLURM preempts a job with a signal some time before it kills it (``#SBATCH
--signal=USR1@120``): :class:`RequeueOnSignal` then writes ``last.ckpt`` at the next step,
marks the run ``requeued`` and asks SLURM to requeue the job, whose next start resumes
the run from that checkpoint (``resume=auto``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig

from sslbench.errors import ConfigError, Requeued
from sslbench.host import available_cores
from sslbench.run.folder import RANKS_OF_A_COMMAND, claim_run_folder
from sslbench.run.quiet import rank_environment
from sslbench.run.results import read_results, save_config

__all__ = [
    "RequeueOnSignal",
    "cluster_plugins",
    "launch_rank",
    "launch_ranks",
    "launched_by",
    "run_ranks_with_torchrun",
]


def launched_by() -> str | None:
    """The launcher that started this process as one rank of a run: ``torchrun``,
    ``slurm`` (``srun`` with several tasks), or None (a plain command)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or (
        "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
    ):
        return "torchrun"
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    return None


def cluster_plugins() -> list[Any]:
    """Lightning's SLURM environment without its own requeue (:class:`RequeueOnSignal`
    does it through sslbench's checkpoint, which a resumed run reads)."""
    if launched_by() == "slurm":
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def run_ranks_with_torchrun(
    config_file: Path, processes: int, threads_per_rank: int | None = None
) -> int:
    """Run ``sslbench pretrain --config CONFIG_FILE`` as ``processes`` ranks on this node
    through torchrun (``threads_per_rank``: each rank's ``OMP_NUM_THREADS``, when given);
    return its exit status."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}",
        "-m", "sslbench", "pretrain", "--config", str(config_file),
    ]  # fmt: skip
    # the parent prints the run's summary once, the ranks do not; torch reads its C++ log
    # level at import, so the ranks' quieter level is set here (sslbench.run.quiet says why)
    env = {**os.environ, RANKS_OF_A_COMMAND: "1", **rank_environment()}
    if threads_per_rank is not None:
        env["OMP_NUM_THREADS"] = str(threads_per_rank)
    try:
        return subprocess.run(command, env=env).returncode
    except KeyboardInterrupt:  # torchrun stops its ranks on the same Ctrl-C
        raise KeyboardInterrupt("run stopped; the same command resumes it") from None


class RequeueOnSignal(pl.Callback):
    """On SLURM's preemption signal (SIGUSR1, or the signal that
    ``SSLBENCH_REQUEUE_SIGNAL`` names): at the
    next check, every rank saves through ``checkpoint`` (sslbench's last.ckpt), rank 0 runs
    ``scontrol requeue`` for this job, and :class:`Requeued` ends the training. The ranks
    agree on the step every ``check_every`` steps (a collective: not on every step)."""

    def __init__(self, checkpoint: Any, check_every: int = 10) -> None:
        self.checkpoint = checkpoint  # an object with save(trainer): train.LastCheckpoint
        self.check_every = max(1, check_every)
        self.signalled = False
        self.job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            self.job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.job:
            name = os.environ.get("SSLBENCH_REQUEUE_SIGNAL", "SIGUSR1")
            signal.signal(getattr(signal, name, signal.SIGUSR1), self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True  # acted on between steps, never inside one

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if not self.job or trainer.global_step % self.check_every:
            return
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self.checkpoint.save(trainer)
        if trainer.is_global_zero:
            subprocess.run(["scontrol", "requeue", str(self.job)], check=False)
        # raised, as Ctrl-C is: Lightning stopping "normally" mid-epoch would end the epoch
        # and save a checkpoint that claims it whole
        raise Requeued(
            f"preempted at step {trainer.global_step}; SLURM job {self.job} requeued, its next "
            "start resumes the run from last.ckpt"
        )


def launch_ranks(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """A run over several devices started by a plain command: its folder is claimed and its
    config saved here, then torchrun starts one ``sslbench pretrain --config`` per device
    (sslbench.run.cluster says why not Lightning's launcher); rank 0 writes results.json."""
    if cfg.num_nodes > 1:
        raise ConfigError(
            f"num_nodes={cfg.num_nodes}: each node's ranks are started by the cluster's "
            "launcher (srun sslbench pretrain ..., or torchrun --nnodes on each node); see "
            "docs/multi-gpu.md"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    # claimed as rank 0 of a one-device run claims it: another run's folder is refused here
    # (modify=False only reads, and refuses nothing), before its config.yaml is replaced
    claim_run_folder(cfg, run_dir)
    save_config(cfg, run_dir)
    threads = None  # torchrun's default would be 1 per rank: each gets its share instead
    if not os.environ.get("OMP_NUM_THREADS") and cfg.get("threads") is None:
        threads = max(1, available_cores() // cfg.devices)
    code = run_ranks_with_torchrun(run_dir / "config.yaml", cfg.devices, threads)
    try:
        results = read_results(run_dir)
    except (OSError, ValueError):
        results = {}
    if code != 0 or results.get("status") != "completed":
        error = results.get("error") or f"the run's ranks exited with status {code}"
        raise RuntimeError(f"{error} (run folder {run_dir}; its ranks' output above)")
    return results


def launch_rank() -> int:
    """This process's rank in a run over several devices, from the launcher's environment
    (Lightning's own launcher and torchrun set ``LOCAL_RANK``/``RANK``, SLURM
    ``SLURM_PROCID``); 0 for a run on one device. Only rank 0 writes the run folder and
    evaluates: every rank writing results.json left the file holding whichever came last."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0
