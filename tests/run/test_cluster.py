"""Runs over several processes and on SLURM: who starts the ranks, the global batch, the
batch-norm choice, and a preempted job that requeues itself and resumes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, needs_fmnist

from sslbench.cli import EXIT_REQUEUED, main
from sslbench.config import compose, config_hash
from sslbench.errors import ConfigError
from sslbench.run.build import uses_sync_batchnorm
from sslbench.run.cluster import cluster_plugins, launched_by

LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS",
                      "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME", "SLURM_JOB_ID",
                      "SLURM_ARRAY_JOB_ID")  # fmt: skip


@pytest.fixture
def no_launcher(monkeypatch) -> None:
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_launcher_is_told_from_the_environment(monkeypatch, no_launcher) -> None:
    assert launched_by() is None and cluster_plugins() == []
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert launched_by() == "torchrun"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    monkeypatch.setenv("SLURM_JOB_NAME", "study")
    assert launched_by() == "slurm"
    (environment,) = cluster_plugins()
    assert type(environment).__name__ == "SLURMEnvironment"
    assert environment.auto_requeue is False  # sslbench requeues through its own checkpoint
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task job: a plain command
    assert launched_by() is None


def test_the_batch_is_global_and_must_split_evenly() -> None:
    cfg = compose(["devices=4", "batch_size=256"])
    assert cfg.batch_size == 256  # kept whole; the lr that follows it: test_distributed_step
    with pytest.raises(ConfigError, match=r"batch_size=250 .* 4 processes; batch_size=248 does"):
        compose(["devices=4", "batch_size=250"])
    with pytest.raises(ConfigError, match=r"devices x num_nodes = 6 processes"):
        compose(["devices=3", "num_nodes=2", "batch_size=64"])
    with pytest.raises(ConfigError, match="num_nodes must be at least 1"):
        compose(["num_nodes=0"])


def test_keys_without_effect_on_one_process_keep_the_runs_folder() -> None:
    """sync_batchnorm and num_nodes change nothing on one process: a run's folder (its
    hash) is the one it had before the keys existed; on several they are part of it."""
    one = compose([])
    assert config_hash(compose(["backbone.sync_batchnorm=false"])) == config_hash(one)
    assert "sync_batchnorm" not in str(one.run_dir)
    two = compose(["devices=2"])
    assert config_hash(compose(["devices=2", "backbone.sync_batchnorm=false"])) != config_hash(two)


def test_sync_batchnorm_on_several_gpus_only() -> None:
    assert uses_sync_batchnorm(compose(["devices=2"]), "gpu")
    assert not uses_sync_batchnorm(compose(["devices=2", "backbone.sync_batchnorm=false"]), "gpu")
    assert not uses_sync_batchnorm(compose([]), "gpu")  # one device: nothing to synchronise
    assert not uses_sync_batchnorm(compose(["devices=2"]), "cpu")  # torch: GPU only


def test_several_nodes_need_the_clusters_launcher(tmp_path, capsys, no_launcher) -> None:
    run_dir = tmp_path / "run"
    args = ["pretrain", "backbone=resnet10t", "num_nodes=2", "devices=2", f"run_dir={run_dir}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "num_nodes=2" in err and "srun" in err and "torchrun" in err and "\n" not in err
    assert not run_dir.exists()


@needs_fmnist
def test_a_preempted_slurm_job_requeues_itself_and_its_next_start_resumes(
    tmp_path, monkeypatch, capsys, no_launcher
) -> None:
    """SLURM's warning signal (SIGUSR1) mid-run: last.ckpt is written at the next step,
    `scontrol requeue JOB` is called, the run says `requeued` (exit 75); started again, as
    SLURM does, it resumes from that step and completes."""
    from sslbench.methods import Views
    from sslbench.methods.simclr import SimCLR

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.log"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")

    honest = SimCLR.training_loss

    def preempted_at_step_2(self: SimCLR, views: Views) -> torch.Tensor:
        if self.global_step == 2 and not getattr(SimCLR, "_signalled", False):
            SimCLR._signalled = True  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGUSR1)
        return honest(self, views)

    monkeypatch.setattr(SimCLR, "training_loss", preempted_at_step_2)
    monkeypatch.setattr(SimCLR, "_signalled", False, raising=False)
    previous_handler = signal.getsignal(signal.SIGUSR1)
    run_dir = tmp_path / "run"
    args = ["pretrain", "method=simclr", *TINY_RUN, "epochs=3", "log_every_n_steps=1",
            f"run_dir={run_dir}"]  # fmt: skip
    try:
        assert main(args) == EXIT_REQUEUED
    finally:
        signal.signal(signal.SIGUSR1, previous_handler)
    err = capsys.readouterr().err
    assert "sslbench: requeued: preempted at step 3; SLURM job 4242 requeued" in err
    assert calls.read_text().split() == ["requeue", "4242"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "requeued"
    saved = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3

    assert main(args) == 0  # the job's next start
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["resumed_from"] == {"epoch": 1, "step": 3}
    assert calls.read_text().split() == ["requeue", "4242"]  # not requeued again
    assert Path(run_dir / "last.ckpt").is_file()


def test_devices_n_refuses_a_folder_holding_another_run(
    tmp_path, capsys, monkeypatch, no_launcher
) -> None:
    """The command that starts the ranks claims the folder as a one-device run does: it
    overwrote another run's config.yaml, whose last.ckpt the ranks then resumed from."""
    import sslbench.run.cluster
    from sslbench.run.results import save_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(compose(["backbone=resnet10t", "epochs=1", f"run_dir={run_dir}"]), run_dir)
    before = (run_dir / "config.yaml").read_text()

    def no_ranks(*args, **kwargs) -> int:
        raise AssertionError("the ranks were started in another run's folder")

    monkeypatch.setattr(sslbench.run.cluster, "run_ranks_with_torchrun", no_ranks)
    args = ["pretrain", "backbone=resnet10t", "epochs=2", "devices=2", f"run_dir={run_dir}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"run_dir={run_dir} holds another run (" in err and "epochs: 1 -> 2" in err
    assert (run_dir / "config.yaml").read_text() == before
