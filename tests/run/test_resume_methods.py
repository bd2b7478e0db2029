"""A method whose state lies outside its state_dict (a memory bank, a loss's running
statistics) resumes exactly too: stopped by Ctrl-C in epoch 1 and run again, it ends with
the weights, banks and scores of the run that never stopped."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_RUN, method_names, method_params, needs_fmnist
from omegaconf import DictConfig, OmegaConf

import sslbench
from sslbench.cli import main
from sslbench.methods import SSLMethod, method_class
from sslbench.methods.base import EXTRA_STATE_KEY

#: 4 steps an epoch, 2 epochs.
RUN = [*TINY_RUN, "batch_size=32", "epochs=2", "eval.linear_max_iter=30"]


def _method_yaml(name: str) -> DictConfig:
    """conf/method/NAME.yaml as written (read at collection: no composing)."""
    return OmegaConf.load(Path(sslbench.__file__).parent / "conf" / "method" / f"{name}.yaml")


def _keeps_extra_state(name: str) -> bool:
    """Whether the method's default config has a bank, or the method saves more state."""
    cls, method = method_class(name), _method_yaml(name)
    own_state = cls.extra_checkpoint_state is not SSLMethod.extra_checkpoint_state
    return own_state or any(int(method.get(key) or 0) > 0 for key in cls.bank_keys)


STATEFUL = [name for name in method_names() if _keeps_extra_state(name)]


def _args(name: str, run_dir: Path) -> list[str]:
    small = method_class(name).small_overrides
    # a queue that takes part from epoch 1, so that a lost queue changes the result
    queue = ["method.queue_start_epoch=1"] if "queue_start_epoch" in _method_yaml(name) else []
    return ["pretrain", f"method={name}", *RUN, *small, *queue, f"run_dir={run_dir}"]


def _checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)


@needs_fmnist
@pytest.mark.parametrize("name", method_params(fast="swav_queue", names=STATEFUL))
def test_a_stateful_method_resumes_to_the_run_that_never_stopped(
    name: str, tmp_path, monkeypatch
) -> None:
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(_args(name, whole)) == 0
    optimizer_step = SSLMethod.optimizer_step
    count = {"steps": 0}

    def step_then_signal(self: SSLMethod, *args: Any, **kwargs: Any) -> None:
        optimizer_step(self, *args, **kwargs)
        count["steps"] += 1
        if count["steps"] == 6:  # epoch 1's second step: the banks are part-filled
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SSLMethod, "optimizer_step", step_then_signal)
    assert main(_args(name, stopped)) == 130
    monkeypatch.undo()
    assert _checkpoint(stopped)[EXTRA_STATE_KEY], "the checkpoint holds no extra state"
    assert main(_args(name, stopped)) == 0

    ours, reference = _checkpoint(stopped), _checkpoint(whole)
    for part in ("state_dict", EXTRA_STATE_KEY):
        assert ours[part].keys() == reference[part].keys()
        for key, tensor in ours[part].items():
            assert torch.equal(tensor, reference[part][key]), (part, key)
    results = [json.loads((d / "results.json").read_text()) for d in (stopped, whole)]
    for key in ("linear_top1", "knn_top1"):
        assert results[0][key] == results[1][key], key
