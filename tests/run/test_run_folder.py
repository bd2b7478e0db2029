"""A run folder belongs to one run; Ctrl-C keeps a checkpoint and says so; results.json
tells a live run from a dead one. Tiny real runs through the command line, in-process, on
generated images (the SIGKILL test's on Fashion-MNIST: it needs a longer evaluation)."""

from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, needs_fmnist

from sslbench.cli import main
from sslbench.methods import Views
from sslbench.methods.simclr import SimCLR
from sslbench.run.callbacks import LastCheckpoint

TINY = ["method=simclr", *TINY_RUN]  # later overrides (epochs=3, ...) win


@pytest.fixture(scope="module")
def tiny(synthetic_run) -> list[str]:
    """TINY on the generated image folder: the tests of a run folder's claims and of a run's
    stop, failure and resume need images, not Fashion-MNIST's."""
    return ["method=simclr", *synthetic_run]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_a_folder_holding_another_run_is_refused_unless_overwrite(tiny, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["pretrain", *tiny, "epochs=1", f"run_dir={run_dir}"]) == 0
    first = _results(run_dir)
    assert first["process"]["pid"] > 0 and first["process"]["host"]
    assert first["heartbeat_at"] >= first["started_at"]
    checkpoint = (run_dir / "last.ckpt").read_bytes()
    capsys.readouterr()

    assert main(["pretrain", *tiny, "epochs=2", "seed=3", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"run_dir={run_dir} holds another run" in err
    assert "epochs: 1 -> 2" in err and "seed: 0 -> 3" in err and "overwrite=true" in err
    assert _results(run_dir) == first and (run_dir / "last.ckpt").read_bytes() == checkpoint

    # Keys that do not change the result (progress bar, threads) are the same run.
    assert main(["pretrain", *tiny, "epochs=1", "threads=1", f"run_dir={run_dir}"]) == 0
    assert main(["pretrain", *tiny, "epochs=2", "overwrite=true", f"run_dir={run_dir}"]) == 0
    assert _results(run_dir)["epochs"] == 2 and _results(run_dir)["status"] == "completed"
    state = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1  # the new run's second epoch, not the old run's weights


def test_every_epoch_leaves_a_checkpoint(tiny, tmp_path, monkeypatch) -> None:
    saved_at: list[int] = []
    save = LastCheckpoint.save

    def counting_save(self: LastCheckpoint, trainer) -> None:
        save(self, trainer)
        saved_at.append(torch.load(self.path, weights_only=True)["global_step"])

    monkeypatch.setattr(LastCheckpoint, "save", counting_save)
    assert main(["pretrain", *tiny, "epochs=3", f"run_dir={tmp_path / 'run'}"]) == 0
    assert saved_at == [2, 4, 6]  # 2 steps an epoch: one checkpoint at each epoch's end


def test_ctrl_c_exits_130_with_a_checkpoint_and_status_interrupted(
    tiny, tmp_path, monkeypatch, capsys
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
    assert main(["pretrain", *tiny, "epochs=5", f"run_dir={run_dir}"]) == 130
    err = capsys.readouterr().err
    assert "sslbench: interrupted: run stopped; the same command resumes it from last.ckpt" in err
    results = _results(run_dir)
    assert results["status"] == "interrupted" and results["error"] is None
    # raised inside step 3 (as a second Ctrl-C would): the half-made step is not saved, the
    # checkpoint is the last boundary's (epoch 0's end); tests/run/test_stop_resume.py has a
    # first Ctrl-C, which finishes the step and saves it
    assert torch.load(run_dir / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not (run_dir / "error.log").exists()
    # Lightning set SIGINT to be ignored; Ctrl-C works again afterwards.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_completed_rerun_removes_the_earlier_error_log(tiny, tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setattr(SimCLR, "training_loss", lambda self, views: torch.tensor(float("nan")))
    assert main(["pretrain", *tiny, "epochs=1", "check_finite_every_n_steps=1",
                 f"run_dir={run_dir}"]) == 1  # fmt: skip
    assert (run_dir / "error.log").is_file()
    monkeypatch.undo()
    assert main(["pretrain", *tiny, "epochs=1", "check_finite_every_n_steps=1",
                 f"run_dir={run_dir}"]) == 0  # fmt: skip
    assert not (run_dir / "error.log").exists()


def test_claim_names_an_unreadable_config(tmp_path) -> None:
    from sslbench.config import compose
    from sslbench.errors import ConfigError
    from sslbench.run.folder import claim_run_folder

    (tmp_path / "config.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="holds another run .its config.yaml does not load"):
        claim_run_folder(compose(TINY), tmp_path)
    assert (tmp_path / "config.yaml").is_file()


def _metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _stop_at(monkeypatch, call: int, error: type[BaseException]) -> None:
    """Make the ``call``-th training step raise ``error`` (Ctrl-C, or a crash)."""
    loss = SimCLR.training_loss
    calls = {"n": 0}

    def stopping(self: SimCLR, views: Views) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == call:
            raise error("stopped by the test")
        return loss(self, views)

    monkeypatch.setattr(SimCLR, "training_loss", stopping)


# One data path in the quick loop; the other two resume the same way (11 s each).
@pytest.mark.parametrize(
    "data_path",
    ["auto", *(pytest.param(path, marks=pytest.mark.slow) for path in ("dataloader", "workers"))],
)
def test_a_stopped_run_resumes_to_the_same_result(tiny, tmp_path, monkeypatch, capsys, data_path):
    """3 epochs of 2 steps: stopped by Ctrl-C in the middle of epoch 1, or crashed at the
    start of epoch 2 (resumed from epoch 1's end), then run again: the same weights and the
    same scores as the run that never stopped."""
    args = [*tiny, "epochs=3", f"data_path={data_path}"]
    assert main(["pretrain", *args, f"run_dir={tmp_path / 'whole'}"]) == 0
    whole = _results(tmp_path / "whole")
    assert whole["resumed_from"] is None

    for name, call, error, code, position, extra in (
        ("ctrl-c", 4, KeyboardInterrupt, 130, {"epoch": 0, "step": 2}, []),
        ("crash", 5, RuntimeError, 1, {"epoch": 1, "step": 4}, []),
        # a crash in epoch 1's second step: its first step's checkpoint (every step)
        ("crash, every step", 4, RuntimeError, 1, {"epoch": 1, "step": 3},
         ["checkpoint_every_n_steps=1"]),
    ):  # fmt: skip
        run_dir = tmp_path / name.replace(", ", "-").replace(" ", "-")
        _stop_at(monkeypatch, call, error)
        assert main(["pretrain", *args, *extra, f"run_dir={run_dir}"]) == code
        monkeypatch.undo()
        capsys.readouterr()
        assert main(["pretrain", *args, *extra, f"run_dir={run_dir}"]) == 0
        assert f"resuming {run_dir} at epoch {position['epoch']}" in capsys.readouterr().out
        resumed = _results(run_dir)
        assert resumed["resumed_from"] == position and resumed["status"] == "completed"
        for key in ("linear_top1", "linear_top5", "knn_top1"):
            assert resumed[key] == whole[key], (name, key)
        for key, tensor in _final_weights(tmp_path / "whole").items():
            assert torch.equal(tensor, _final_weights(run_dir)[key]), (name, key)
        # metrics.csv: the rows of the run that never stopped (times aside; an epoch resumed
        # in its middle averages its two parts: equal up to float32 rounding)
        rows, whole_rows = _metric_rows(run_dir), _metric_rows(tmp_path / "whole")
        assert [(r["epoch"], r["step"]) for r in rows] == [
            (r["epoch"], r["step"]) for r in whole_rows
        ]
        for row, whole_row in zip(rows, whole_rows, strict=True):
            for column, value in whole_row.items():
                assert row[column] == value or math.isclose(
                    float(row[column]), float(value), rel_tol=1e-6
                ), (name, column, row)


def test_resume_never_starts_over_and_a_completed_run_is_run_again(tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _stop_at(monkeypatch, 3, KeyboardInterrupt)
    assert main(["pretrain", *tiny, "epochs=2", f"run_dir={run_dir}"]) == 130
    monkeypatch.undo()
    assert main(["pretrain", *tiny, "epochs=2", "resume=never", f"run_dir={run_dir}"]) == 0
    assert _results(run_dir)["resumed_from"] is None
    assert main(["pretrain", *tiny, "epochs=2", f"run_dir={run_dir}"]) == 0
    assert _results(run_dir)["resumed_from"] is None  # completed: a new attempt, from scratch


def test_results_on_a_full_disk_say_so_and_keep_the_old_file(tmp_path, monkeypatch) -> None:
    import errno
    import os

    from sslbench.run.results import atomic_write_text

    (tmp_path / "results.json").write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"^no space left on .* for results.json \(needs "):
        atomic_write_text(tmp_path / "results.json", "new")
    assert (tmp_path / "results.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left


@pytest.mark.slow
def test_two_devices_one_result(tiny, tmp_path, capsys, monkeypatch) -> None:
    """devices=2 from a plain command, in-process (DDP over two CPU processes started by
    torchrun): only rank 0 evaluates, prints and writes; every rank writing left
    results.json holding the last, here a 'failed' from the rank whose peer had already
    gone. In-process: Lightning's own launcher would have re-executed this process's
    command line, pytest's, on the second rank."""
    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "ddp"
    args = ["pretrain", *tiny, "epochs=1", "device=cpu", "devices=2", f"run_dir={run_dir}"]
    assert main(args) == 0
    assert capsys.readouterr().out.count("linear top-1") == 1
    results = _results(run_dir)
    assert results["status"] == "completed" and results["error"] is None
    assert not (run_dir / "error.log").exists()


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (OSError, RuntimeError, KeyError, EOFError):
        return -1


@needs_fmnist
@pytest.mark.slow
def test_killed_with_sigkill_then_rerun_ends_as_if_never_stopped(tmp_path) -> None:
    """A real `sslbench pretrain` process killed with SIGKILL in training (after step 3 of
    6) and again in evaluation (after its last checkpoint), rerun each time: it finishes
    with the full epoch count, a valid results.json and the numbers of a run never killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [*TINY, "epochs=3", "checkpoint_every_n_steps=1", "dataset.max_test=512",
            "eval.linear_max_iter=300"]  # fmt: skip
    assert main(["pretrain", *args, f"run_dir={tmp_path / 'whole'}"]) == 0
    whole = _results(tmp_path / "whole")

    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "sslbench", "pretrain", *args, f"run_dir={run_dir}"]
    for kill_after_step in (3, 6):  # in training; then with training done, in evaluation
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while _checkpoint_step(run_dir / "last.ckpt") < kill_after_step:
            assert child.poll() is None and time.monotonic() < deadline, "ended before the kill"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert _results(run_dir)["status"] == "running"  # what a kill leaves

    assert main(["pretrain", *args, f"run_dir={run_dir}"]) == 0
    resumed = _results(run_dir)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == {"epoch": 2, "step": 6}
    assert resumed["epochs"] == 3
    for key in ("linear_top1", "linear_top5", "knn_top1"):
        assert resumed[key] == whole[key], key
    assert not list(run_dir.glob(".*.tmp"))
