"""A run stopped by a real signal (Ctrl-C's SIGINT, or SIGTERM) wherever it lands in a
step, then run again, ends as the run that never stopped: the same weights and batch-norm
statistics, the same scores and the same metrics.csv rows. Tiny real runs, in-process: the
test sends the signal to its own process from inside the training step."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_RUN, needs_fmnist

from sslbench.cli import main
from sslbench.methods.simclr import SimCLR

#: 4 steps an epoch, 2 epochs; the effective rank is logged at each epoch's first step.
RUN = ["method=simclr", *TINY_RUN, "batch_size=32", "epochs=2", "log_every_n_steps=4"]

#: auto is the DataLoader on a CPU (the device and pinned paths need a GPU): slow here
DATA_PATHS = [
    pytest.param("auto", marks=pytest.mark.slow),
    "dataloader",
    pytest.param("workers", marks=pytest.mark.slow),
]


def _results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"}
                for row in csv.DictReader(handle)]  # fmt: skip


def _same_value(a: str, b: str) -> bool:
    """Equal text, or equal numbers up to float32 rounding (an epoch's mean summed in two
    parts, before and after the stop, rounds differently from one sum)."""
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-7)
    except ValueError:
        return False


def _signal_during_step(monkeypatch, step: int, signum: int, where: str) -> None:
    """Send ``signum`` to this process during training step ``step`` (0-based): after its
    forward pass (the batch norms have seen the batch, the weights have not moved), or
    after its optimiser step (the weights have moved, the learning rate has not)."""
    count = {"forward": 0, "optimizer": 0}
    if where == "forward":
        loss = SimCLR.training_loss

        def forward_then_signal(self: SimCLR, views: Any) -> torch.Tensor:
            value = loss(self, views)
            count["forward"] += 1
            if count["forward"] == step + 1:
                os.kill(os.getpid(), signum)
            return value

        monkeypatch.setattr(SimCLR, "training_loss", forward_then_signal)
    else:
        optimizer_step = SimCLR.optimizer_step

        def step_then_signal(self: SimCLR, *args: Any, **kwargs: Any) -> None:
            optimizer_step(self, *args, **kwargs)
            count["optimizer"] += 1
            if count["optimizer"] == step + 1:
                os.kill(os.getpid(), signum)

        monkeypatch.setattr(SimCLR, "optimizer_step", step_then_signal)


@pytest.fixture(scope="module")
def whole_runs(module_folder: Path) -> dict[str, Path]:
    """The run that never stopped, once per data path (made on first use)."""
    return {"root": module_folder}


def _whole(whole_runs: dict[str, Path], data_path: str) -> Path:
    run_dir = whole_runs["root"] / data_path
    if not (run_dir / "results.json").is_file():
        assert main(["pretrain", *RUN, f"data_path={data_path}", f"run_dir={run_dir}"]) == 0
    return run_dir


#: (signal, where in the step, the step it lands in, where the run stops: epoch, step)
STOPS = [
    (signal.SIGINT, "forward", 1, {"epoch": 0, "step": 2}),  # epoch 0, after step 1's forward
    (signal.SIGINT, "optimizer", 5, {"epoch": 1, "step": 6}),  # epoch 1, weights moved
    (signal.SIGTERM, "forward", 3, {"epoch": 1, "step": 4}),  # epoch 0's last step
    (signal.SIGINT, "optimizer", 7, {"epoch": 2, "step": 8}),  # the last step: training done
]


@needs_fmnist
@pytest.mark.parametrize("data_path", DATA_PATHS)
@pytest.mark.parametrize(("signum", "where", "step", "stopped"), STOPS,
                         ids=["sigint-forward-e0", "sigint-optimizer-e1", "sigterm-epoch-end",
                              "sigint-last-step"])  # fmt: skip
def test_a_signal_anywhere_in_a_step_resumes_exactly(
    tmp_path, monkeypatch, capsys, whole_runs, data_path, signum, where, step, stopped
) -> None:
    whole = _whole(whole_runs, data_path)
    run_dir = tmp_path / "stopped"
    args = ["pretrain", *RUN, f"data_path={data_path}", f"run_dir={run_dir}"]
    _signal_during_step(monkeypatch, step, signum, where)
    assert main(args) == 128 + signum
    monkeypatch.undo()
    interrupted = _results(run_dir)
    name = signal.Signals(signum).name
    assert interrupted["status"] == "interrupted"
    assert interrupted["stopped_at"] == {**stopped, "signal": name}
    assert f"run stopped at epoch {stopped['epoch']}, step {stopped['step']}" in (
        capsys.readouterr().err
    )
    saved = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == stopped["step"]
    # Ctrl-C and SIGTERM have their usual meaning again once the command has returned
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    assert main(args) == 0
    resumed, never_stopped = _results(run_dir), _results(whole)
    assert resumed["status"] == "completed" and resumed["stopped_at"] is None
    assert [{k: v for k, v in s.items() if k != "at"} for s in resumed["stops"]] == [
        {**stopped, "signal": name}
    ]
    for key in ("linear_top1", "linear_top5", "knn_top1"):
        assert resumed[key] == never_stopped[key], key
    reference = _weights(whole)
    for key, tensor in _weights(run_dir).items():  # batch-norm running statistics included
        assert torch.equal(tensor, reference[key]), key
    rows, whole_rows = _rows(run_dir), _rows(whole)
    assert [(r["epoch"], r["step"]) for r in rows] == [(r["epoch"], r["step"]) for r in whole_rows]
    for row, whole_row in zip(rows, whole_rows, strict=True):
        for column, value in whole_row.items():
            assert _same_value(row[column], value), (column, row, whole_row)
    assert all(r["effective_rank"] for r in rows if r["train_loss_epoch"])


@needs_fmnist
def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_boundary(tmp_path, monkeypatch) -> None:
    """Asked twice inside one step: the step is abandoned, and last.ckpt is the one the last
    boundary saved (epoch 0's end), not the half-made state of the step."""
    loss = SimCLR.training_loss
    count = {"n": 0}

    def signal_twice(self: SimCLR, views: Any) -> torch.Tensor:
        value = loss(self, views)
        count["n"] += 1
        if count["n"] == 6:  # epoch 1's second step
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return value

    monkeypatch.setattr(SimCLR, "training_loss", signal_twice)
    run_dir = tmp_path / "run"
    assert main(["pretrain", *RUN, f"run_dir={run_dir}"]) == 130
    saved = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4  # epoch 0's end
    assert _results(run_dir)["status"] == "interrupted"
