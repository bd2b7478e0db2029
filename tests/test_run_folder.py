"""A run folder belongs to one run; Ctrl-C keeps a checkpoint and says so; results.json
tells a live run from a dead one. Tiny real runs through the command line, in-process."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import needs_fmnist

from sslbench.cli import main
from sslbench.methods import Views
from sslbench.methods.simclr import SimCLR
from sslbench.train import LastCheckpoint

TINY = [
    "method=simclr", "dataset=fashion-mnist", "backbone=resnet10t", "image_size=32",
    "dataset.max_train=128", "dataset.max_test=64", "batch_size=64",
    "eval.linear_max_iter=30", "progress_bar=false",
]  # fmt: skip


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@needs_fmnist
def test_a_folder_holding_another_run_is_refused_unless_overwrite(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["pretrain", *TINY, "epochs=1", f"run_dir={run_dir}"]) == 0
    first = _results(run_dir)
    assert first["process"]["pid"] > 0 and first["process"]["host"]
    assert first["heartbeat_at"] >= first["started_at"]
    checkpoint = (run_dir / "last.ckpt").read_bytes()
    capsys.readouterr()

    assert main(["pretrain", *TINY, "epochs=2", "seed=3", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"run_dir={run_dir} holds another run" in err
    assert "epochs: 1 -> 2" in err and "seed: 0 -> 3" in err and "overwrite=true" in err
    assert _results(run_dir) == first and (run_dir / "last.ckpt").read_bytes() == checkpoint

    # Keys that do not change the result (progress bar, threads) are the same run.
    assert main(["pretrain", *TINY, "epochs=1", "threads=1", f"run_dir={run_dir}"]) == 0
    assert main(["pretrain", *TINY, "epochs=2", "overwrite=true", f"run_dir={run_dir}"]) == 0
    assert _results(run_dir)["epochs"] == 2 and _results(run_dir)["status"] == "completed"
    state = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1  # the new run's second epoch, not the old run's weights


@needs_fmnist
def test_every_epoch_leaves_a_checkpoint(tmp_path, monkeypatch) -> None:
    saved_at: list[int] = []
    save = LastCheckpoint.save

    def counting_save(self: LastCheckpoint, trainer) -> None:
        save(self, trainer)
        saved_at.append(torch.load(self.path, weights_only=True)["global_step"])

    monkeypatch.setattr(LastCheckpoint, "save", counting_save)
    assert main(["pretrain", *TINY, "epochs=3", f"run_dir={tmp_path / 'run'}"]) == 0
    assert saved_at == [2, 4, 6]  # 2 steps an epoch: one checkpoint at each epoch's end


@needs_fmnist
def test_ctrl_c_exits_130_with_a_checkpoint_and_status_interrupted(
    tmp_path, monkeypatch, capsys
) -> None:
    loss = SimCLR.training_loss
    calls = {"n": 0}

    def interrupted_at_step_3(self: SimCLR, views: Views) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # what Ctrl-C raises in the training loop
        return loss(self, views)

    monkeypatch.setattr(SimCLR, "training_loss", interrupted_at_step_3)
    run_dir = tmp_path / "run"
    assert main(["pretrain", *TINY, "epochs=5", f"run_dir={run_dir}"]) == 130
    err = capsys.readouterr().err
    assert "sslbench: interrupted: run stopped (last.ckpt holds its last steps)" in err
    results = _results(run_dir)
    assert results["status"] == "interrupted" and results["error"] is None
    assert torch.load(run_dir / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run_dir / "error.log").exists()
    # Lightning set SIGINT to be ignored; Ctrl-C works again afterwards.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@needs_fmnist
def test_a_completed_rerun_removes_the_earlier_error_log(tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setattr(SimCLR, "training_loss", lambda self, views: torch.tensor(float("nan")))
    assert main(["pretrain", *TINY, "epochs=1", "check_finite_every_n_steps=1",
                 f"run_dir={run_dir}"]) == 1  # fmt: skip
    assert (run_dir / "error.log").is_file()
    monkeypatch.undo()
    assert main(["pretrain", *TINY, "epochs=1", "check_finite_every_n_steps=1",
                 f"run_dir={run_dir}"]) == 0  # fmt: skip
    assert not (run_dir / "error.log").exists()


def test_claim_names_an_unreadable_config(tmp_path) -> None:
    from sslbench.config import ConfigError, compose
    from sslbench.run_folder import claim_run_folder

    (tmp_path / "config.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="holds another run .its config.yaml does not load"):
        claim_run_folder(compose(TINY), tmp_path)
    assert (tmp_path / "config.yaml").is_file()
