"""Lightning's lines that mean nothing in an sslbench run are hidden (sslbench.run.quiet); every
other line and warning still shows, and SSLBENCH_VERBOSE=1 shows everything.

Under pytest, Lightning's loggers write to pytest's log capture (Lightning adds its own
stderr handler only when the root logger has none), so the logged lines are read from
caplog, the warnings from a recording warnings context (pytest's would keep them from the
output too), and capfd holds whatever is printed directly.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY_RUN, needs_fmnist
from lightning_fabric.utilities.distributed import log as fabric_distributed_log
from lightning_fabric.utilities.warnings import PossibleUserWarning
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from sslbench.run import cluster
from sslbench.run.quiet import VERBOSE_ENV, quiet_lightning, rank_environment

#: A fragment of every line sslbench.run.quiet hides, as Lightning and torch print them.
HIDDEN = [
    "GPU available: False", "TPU available:", "litlogger", "`Trainer.fit` stopped: `max_",
    "to estimate number of stepping batches", "LeafSpec", "smaller than the logging interval",
    "Initializing distributed", "distributed_backend=", "sync_dist=True",
]  # fmt: skip

#: Lightning's own texts, with the values a run puts in them (the formats of its sources).
RULE = "-" * 100
BANNER = (
    f"{RULE}\ndistributed_backend=gloo\n"
    f"All distributed processes registered. Starting with 2 processes\n{RULE}\n"
)
LOGGED = [
    "GPU available: False, used: False",
    "GPU available: True (cuda), used: True",
    "TPU available: False, using: 0 TPU cores",
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
    "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs "
    "metrics and artifacts automatically to the Lightning Experiments platform.",
    "`Trainer.fit` stopped: `max_epochs=1` reached.",
    "`Trainer.fit` stopped: `max_steps=20` reached.",
    "Loading `train_dataloader` to estimate number of stepping batches.",
    BANNER,
]
WARNED = [
    "The number of training batches (2) is smaller than the logging interval "
    "Trainer(log_every_n_steps=10). Set a lower value for log_every_n_steps if you want to see "
    "logs for the training epoch.",
    "It is recommended to use `self.log('train_loss', ..., sync_dist=True)` when logging on "
    "epoch level in distributed setting to accumulate the metric across devices.",
]
#: Lines of the same loggers and categories that say something: they must show.
KEPT_LOGGED = [
    "GPU available: True (cuda), used: False",
    "`Trainer.fit` stopped: No training batches.",
    "something real to say",
]


@pytest.fixture
def quiet() -> Iterator[list[warnings.WarningMessage]]:
    """quiet_lightning() inside a warnings context that records every warning (pytest's own
    capture would hide them from the output anyway)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        yield caught


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught]


def _shown(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    """Everything the loggers passed on and everything printed."""
    out, err = capfd.readouterr()
    return "\n".join([*caplog.messages, out, err])


def test_the_listed_lines_are_hidden_and_the_others_show(quiet, caplog, capfd) -> None:
    from pytorch_lightning.utilities._pytree import _tree_flatten

    for line in [*LOGGED, *KEPT_LOGGED]:
        rank_zero_info(line)
    fabric_distributed_log.info("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2")
    fabric_distributed_log.info("something real from the ranks")
    _tree_flatten(1)  # Lightning's own use of torch's deprecated LeafSpec: a FutureWarning
    for message in WARNED:
        warnings.warn(message, PossibleUserWarning, stacklevel=1)
    warnings.warn("something real", stacklevel=1)
    warnings.warn("something real from Lightning", PossibleUserWarning, stacklevel=1)
    # the same deprecation raised by other code than Lightning's _pytree is not hidden
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)

    shown = _shown(caplog, capfd)
    for fragment in HIDDEN:
        assert fragment not in shown, fragment
    for line in [*KEPT_LOGGED, "something real from the ranks"]:
        assert line in shown
    assert sorted(_messages(quiet)) == sorted(
        ["something real", "something real from Lightning",
         "`isinstance(treespec, LeafSpec)` is deprecated"]
    )  # fmt: skip
    assert [w.filename for w in quiet if "LeafSpec" in str(w.message)] == [__file__]


def test_verbose_shows_everything(monkeypatch, caplog, capfd) -> None:
    monkeypatch.setenv(VERBOSE_ENV, "1")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_lightning()  # after an earlier quiet_lightning(): its filters come off
            rank_zero_info("GPU available: False, used: False")
            warnings.warn(WARNED[0], PossibleUserWarning, stacklevel=1)
        assert "GPU available: False, used: False" in _shown(caplog, capfd)
        assert _messages(caught) == [WARNED[0]]
    finally:
        monkeypatch.delenv(VERBOSE_ENV)
        quiet_lightning()  # as every Trainer sslbench builds leaves it


def test_the_filters_are_added_once() -> None:
    rank_zero_logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with warnings.catch_warnings():
        quiet_lightning()
        filters, count = list(warnings.filters), len(rank_zero_logger.filters)
        quiet_lightning()  # every Trainer built calls it (a grid builds several)
        assert warnings.filters == filters
        assert len(rank_zero_logger.filters) == count


def test_ranks_started_by_sslbench_get_a_quieter_cpp_log(monkeypatch, tmp_path) -> None:
    # torch prints DDP's find_unused_parameters advice through its C++ logging, which no
    # Python filter sees and whose level torch reads at import: the ranks' environment
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    assert rank_environment() == {"TORCH_CPP_LOG_LEVEL": "ERROR"}
    started: list[dict[str, str]] = []

    def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        started.append(env)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(cluster.subprocess, "run", run)
    assert cluster.run_ranks_with_torchrun(tmp_path / "config.yaml", 2) == 0
    assert started[0]["TORCH_CPP_LOG_LEVEL"] == "ERROR"
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "INFO")  # the user's own level wins
    assert rank_environment() == {}
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL")
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert rank_environment() == {}


@needs_fmnist
def test_a_tiny_run_prints_none_of_them_and_real_warnings_show(
    quiet, monkeypatch, tmp_path, caplog, capfd
) -> None:
    import pytorch_lightning as pl

    from sslbench.cli import main
    from sslbench.run import pretrain as train

    class SaysSomethingReal(pl.Callback):
        """A user's callback with a real warning and a line of its own."""

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            warnings.warn("something real", stacklevel=1)
            rank_zero_info("something real to say")

    build_trainer = train.build_trainer

    def with_callback(*args, callbacks, **kwargs):
        return build_trainer(*args, callbacks=[*callbacks, SaysSomethingReal()], **kwargs)

    monkeypatch.setattr(train, "build_trainer", with_callback)
    run_dir = tmp_path / "run"
    assert main(["pretrain", *TINY_RUN, "device=cpu", f"run_dir={run_dir}"]) == 0
    shown = _shown(caplog, capfd)
    for fragment in HIDDEN:
        assert fragment not in shown, fragment
    assert "linear top-1" in shown and "something real to say" in shown
    assert "something real" in _messages(quiet)
    for fragment in HIDDEN:
        assert not any(fragment in message for message in _messages(quiet)), fragment
    assert Path(run_dir, "results.json").is_file()
