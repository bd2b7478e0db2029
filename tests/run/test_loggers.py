"""Experiment trackers (``logger=``): each tracker's files, written by a tiny real run, read
back with that tracker's own reader; metrics.csv written whatever the list says; a bad name
or a missing package said in one line before anything is built."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_RUN, needs_fmnist, one_line_error

from sslbench.cli import main
from sslbench.config import compose
from sslbench.config.validate import logger_names
from sslbench.errors import ConfigError
from sslbench.run.loggers import (
    build_loggers,
    check_logger_packages,
    flatten_config,
    log_scores,
    log_scores_to_run,
    score_metrics,
    wandb_mode,
)

# ------------------------------------------------------------------ the key, without training


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("csv", ["csv"]),
        ("tensorboard", ["csv", "tensorboard"]),
        ("[csv,tensorboard]", ["csv", "tensorboard"]),
        ("[mlflow,wandb,mlflow]", ["csv", "mlflow", "wandb"]),  # csv first, each once
        ("[]", ["csv"]),  # csv is always written
    ],
)
def test_a_name_or_a_list_and_the_run_folder_is_the_same(value, names) -> None:
    cfg = compose([f"logger={value}"])
    assert logger_names(cfg.logger) == names
    # where a run is recorded is not what it computes: same hash, same folder
    assert cfg.run_dir == compose([]).run_dir


def test_an_unknown_logger_is_one_line_naming_the_valid_ones(tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'; valid: csv, tensorboard"):
        compose(["logger=[csv,tensorbord]"])
    run_dir = tmp_path / "run"
    assert main(["pretrain", "logger=neptune", f"run_dir={run_dir}"]) == 2
    err = one_line_error(capsys)
    for name in ("'neptune'", "csv", "tensorboard", "wandb", "mlflow"):
        assert name in err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("logger", "hidden", "command"),
    [
        ("tensorboard", "tensorboard", "pip install tensorboard"),
        ("wandb", "wandb", "pip install wandb"),
        ("mlflow", "mlflow", "pip install mlflow"),
        ("mlflow", "sqlalchemy", "pip install sqlalchemy alembic"),  # mlflow-skinny alone
    ],
)
def test_a_missing_package_is_one_line_with_its_pip_command_before_any_folder(
    logger, hidden, command, tmp_path, capsys, monkeypatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == hidden else find_spec(name, *a),
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    args = ["pretrain", *TINY_RUN, f"logger=[csv,{logger}]", f"run_dir={run_dir}"]
    assert main([*args, f"runs_root={tmp_path}"]) == 2
    err = one_line_error(capsys)
    assert f"logger={logger} needs {hidden}" in err and command in err
    assert not run_dir.exists()  # said before the run folder is claimed


def test_mlflow_on_a_tracking_server_needs_no_sql_packages(monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("sqlalchemy", "alembic") else find_spec(name, *a),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    check_logger_packages(compose(["logger=mlflow"]))  # the server has its own database
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://db/mlflow")
    with pytest.raises(ConfigError, match="pip install sqlalchemy alembic"):
        check_logger_packages(compose(["logger=mlflow"]))


def test_the_config_is_flattened_to_command_line_keys() -> None:
    nested = {"method": {"name": "simclr", "optimizer": {"lr": 0.06}}, "path": None,
              "views": [{"p": 0.5}, 3], "runs": [], "axes": {}}  # fmt: skip
    assert flatten_config(nested) == {
        "method.name": "simclr", "method.optimizer.lr": 0.06, "path": "null",
        "views.0.p": 0.5, "views.1": 3, "runs": "[]", "axes": "{}",
    }  # fmt: skip


def test_wandb_is_offline_unless_online_is_asked_for(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode() == "online"


# ------------------------------------------------------------------ scores, without training

#: An evaluation as results.json holds it: scores of several protocols, settings, text.
SCORES = {
    "linear_top1": 0.81, "linear_top5": 0.99, "knn_top1": 0.7, "knn_top1_k20": 0.72,
    "knn_top1_k200_t0.07": 0.69, "sgd_linear_top1": 0.75, "finetune_top1": 0.88,
    "linear_top1_1pct": 0.5, "linear_top1_10pct": 0.6, "pretext_accuracy": 0.26,
    "online_probe_top1": 0.66, "linear_top5_missing": 1.0, "sgd_linear_top5": None,
    "finetune_top5": float("nan"), "linear_l2": 1e-4, "probe": "linear (L-BFGS)",
    "pretext_chance": 0.25, "test_images": 64, "status": "completed",
}  # fmt: skip
SENT = {
    f"eval/{key}": value for key, value in SCORES.items()
    if key in ("linear_top1", "linear_top5", "knn_top1", "knn_top1_k20", "knn_top1_k200_t0.07",
               "sgd_linear_top1", "finetune_top1", "linear_top1_1pct", "linear_top1_10pct",
               "pretext_accuracy", "online_probe_top1")
}  # fmt: skip


def test_every_finite_score_is_sent_and_nothing_else() -> None:
    assert score_metrics(SCORES) == SENT
    assert score_metrics({"knn_top1_k": 0.5, "knn_top1_k20_x": 0.5, "linear_top1": True}) == {}


def _scored_run(tmp_path: Path, logger: str, keep_open: bool = False):
    """A run folder's config and loggers (``logger``) as a run builds them, scores logged
    to them at step 7 as a run ends (training first ended them, with ``keep_open``)."""
    run_dir = tmp_path / "runs" / "scored"
    cfg = compose([f"logger={logger}", f"run_dir={run_dir}", f"runs_root={tmp_path / 'runs'}"])
    loggers = build_loggers(cfg, run_dir, keep_open=keep_open)
    for logger_ in loggers[1:]:
        logger_.log_metrics({"train_loss_epoch": 2.5}, step=6)  # the training's last epoch
        if keep_open:
            logger_.finalize("success")  # as the Trainer does when training ends
    assert log_scores(loggers, SCORES, step=7) == SENT
    return cfg, run_dir


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_scores_reach_tensorboard_and_its_hparams_tab(tmp_path) -> None:
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    cfg, run_dir = _scored_run(tmp_path, "tensorboard", keep_open=True)
    scalars = _tensorboard_scalars(run_dir / "tensorboard")
    assert {tag: values for tag, values in scalars.items() if tag.startswith("eval/")} == {
        tag: [(7, pytest.approx(value))] for tag, value in SENT.items()
    }
    assert not (run_dir / "metrics.csv").exists()  # the CSV logger got no scores
    # TensorBoard's HParams tab (its plugin, over the runs folder) compares runs by them
    runs = plugin_event_multiplexer.EventMultiplexer()
    runs.AddRunsFromDirectory(str(tmp_path / "runs"))
    runs.Reload()
    provider = data_provider.MultiplexerDataProvider(runs, str(tmp_path / "runs"))
    hparams = backend_context.Context(base_plugin.TBContext(data_provider=provider))
    request = context.RequestContext()
    experiment = hparams.experiment_from_metadata(
        request, "", True, hparams.hparams_metadata(request, ""),
        hparams.hparams_from_data_provider(request, "", None),
    )  # fmt: skip
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert set(SENT) | {"train_loss_epoch"} <= metrics
    assert "method.name" in {info.name for info in experiment.hparam_infos}
    # sslbench eval: a re-evaluation's scores go to the same folder, the latest one last
    assert log_scores_to_run(cfg, run_dir, {"knn_top1": 0.75, "probe": "x"}, 7) == {
        "eval/knn_top1": 0.75
    }
    scalars = _tensorboard_scalars(run_dir / "tensorboard")
    assert scalars["eval/knn_top1"] == [(7, pytest.approx(0.7)), (7, pytest.approx(0.75))]
    assert scalars["eval/linear_top1"] == [(7, pytest.approx(0.81))]


def test_scores_reach_the_runs_mlflow_run(tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    cfg, run_dir = _scored_run(tmp_path, "mlflow", keep_open=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sslbench")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss_epoch"] == 2.5
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")} == pytest.approx(
        SENT
    )
    history = client.get_metric_history(run.info.run_id, "eval/linear_top1")
    assert [(m.step, m.value) for m in history] == [(7, pytest.approx(0.81))]
    # sslbench eval: into the same MLflow run, which stays finished
    log_scores_to_run(cfg, run_dir, {"linear_top1": 0.83}, 7)
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.metrics["eval/linear_top1"] == pytest.approx(0.83)
    assert again.data.metrics["eval/knn_top1"] == pytest.approx(0.7)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> None:
    """W&B offline, reaching neither the network nor the user's own W&B settings."""
    for key in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))


def _wandb_run(log: Path) -> tuple[Any, dict[int, dict[str, Any]], list[int]]:
    """(run record, step -> the values logged at that trainer/global_step, exit codes).
    wandb's service process writes the log's last records after wandb.finish has returned:
    read until the exit record is there (a few seconds at most)."""
    for _ in range(100):
        records = _wandb_records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    steps: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}  # fmt: skip
            items = {k: v for k, v in items.items() if not k.startswith("_")}  # wandb's own
            if "trainer/global_step" in items:
                steps.setdefault(items.pop("trainer/global_step"), {}).update(items)
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    return run, steps, exits


@pytest.mark.usefixtures("offline_wandb")
@pytest.mark.parametrize("keep_open", [True, False])
def test_scores_reach_the_wandb_run(tmp_path, keep_open) -> None:
    cfg, run_dir = _scored_run(tmp_path, "wandb", keep_open=keep_open)
    # training and its scores in one W&B run, ended by log_scores
    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    run, steps, exits = _wandb_run(log)
    assert (run.display_name, run.run_group, run.job_type) == (run_dir.name,) * 2 + ("pretrain",)
    assert exits == [0]  # finished
    assert steps[6] == {"train_loss_epoch": 2.5}
    assert steps[7] == pytest.approx(SENT)
    # sslbench eval: a W&B run of its own (wandb cannot add to a finished offline run),
    # named after the run folder, in its group
    log_scores_to_run(cfg, run_dir, {"linear_top1": 0.83}, 7)
    (log,) = set((run_dir / "wandb").glob("offline-run-*/run-*.wandb")) - {log}
    run, steps, exits = _wandb_run(log)
    assert (run.display_name, run.run_group, run.job_type) == (run_dir.name, run_dir.name, "eval")
    assert steps == {7: pytest.approx({"eval/linear_top1": 0.83})} and exits == [0]


def test_no_score_opens_no_tracker(tmp_path) -> None:
    run_dir = tmp_path / "run"
    cfg = compose(["logger=[tensorboard,wandb,mlflow]", f"run_dir={run_dir}"])
    assert log_scores_to_run(cfg, run_dir, {"linear_top1": None, "probe": "x"}, 3) == {}
    assert not run_dir.exists()


# ------------------------------------------------------------------ tiny real runs


def _tiny_run(tmp_path: Path, logger: str, *extra: str) -> Path:
    """A tiny run (2 optimiser steps, each logged) to ``logger``; its run folder."""
    run_dir = tmp_path / "runs" / "tiny-run"
    args = ["pretrain", "method=simclr", *TINY_RUN, "log_every_n_steps=1", f"logger={logger}",
            f"run_dir={run_dir}", f"runs_root={tmp_path / 'runs'}", *extra]  # fmt: skip
    assert main(args) == 0
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    return run_dir


def _csv_losses(run_dir: Path) -> dict[int, float]:
    """step -> train_loss_step, from metrics.csv (the report's source, always written)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train_loss_step")]
    losses = {int(row["step"]): float(row["train_loss_step"]) for row in rows}
    assert len(losses) == 2, losses  # the run's two optimiser steps
    return losses


@needs_fmnist
@pytest.mark.parametrize("logger", ["tensorboard", "[csv,tensorboard]"])
def test_tensorboard_events_read_back(logger, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = _tiny_run(tmp_path, logger, "eval.online_every_n_epochs=1")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tb = {e.step: e.value for e in events.Scalars("train_loss_step")}
    assert tb == pytest.approx(_csv_losses(run_dir))
    assert "train_loss_epoch" in events.Tags()["scalars"]
    # the online probe's values reach TensorBoard as they reach metrics.csv, each epoch
    results = json.loads((run_dir / "results.json").read_text())
    (top1,) = events.Scalars("online_probe_top1")
    assert top1.value == pytest.approx(results["online_probe_top1"])
    assert len(events.Scalars("online_probe_train_acc")) == 1
    # the final evaluation's scores, at the run's last step (issue 22: trackers got none)
    scalars = _tensorboard_scalars(run_dir / "tensorboard")
    for field in ("linear_top1", "knn_top1"):
        assert scalars[f"eval/{field}"] == [(2, pytest.approx(results[field]))], field
    # and those of a later `sslbench eval`, in the same TensorBoard folder
    assert main(["eval", f"run_dir={run_dir}", "eval.knn_k=5", "eval.few_shot=false"]) == 0
    knn5 = json.loads((run_dir / "results.json").read_text())["knn_top1_k5"]
    scalars = _tensorboard_scalars(run_dir / "tensorboard")
    assert scalars["eval/knn_top1_k5"] == [(2, pytest.approx(knn5))]
    # the resolved config, in TensorBoard's HParams tab
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["method.name"].string_value == "simclr"
    assert hparams["backbone.name"].string_value == "resnet10t"
    assert hparams["epochs"].number_value == 1
    assert (run_dir / "tensorboard" / "hparams.yaml").is_file()


@needs_fmnist
def test_mlflow_sqlite_store_reads_back(tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    run_dir = _tiny_run(tmp_path, "mlflow")
    assert (run_dir / "metrics.csv").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")  # under runs_root
    experiment = client.get_experiment_by_name("sslbench")
    assert experiment.artifact_location == (tmp_path / "runs" / "mlartifacts").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.tags["sslbench.run_dir"] == str(run_dir.resolve())
    params = run.data.params
    assert params["method.name"] == "simclr" and params["backbone.name"] == "resnet10t"
    assert params["epochs"] == "1" and params["dataset.max_train"] == "128"
    history = client.get_metric_history(run.info.run_id, "train_loss_step")
    assert {m.step: m.value for m in history} == pytest.approx(_csv_losses(run_dir))
    assert "train_loss_epoch" in run.data.metrics


def _wandb_records(path: Path) -> list[Any]:
    """The records of a W&B transaction log (``run-ID.wandb``), parsed with wandb's own
    protobuf messages. The container is LevelDB's log format behind a 7-byte header: 32 KiB
    blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data``, a record in one
    FULL chunk or split FIRST, MIDDLE..., LAST. wandb (0.31) ships no Python reader."""
    from wandb.proto import wandb_internal_pb2

    block, full, last = 32 * 1024, 1, 4
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += block - pos % block
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (full, last):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


@needs_fmnist
@pytest.mark.usefixtures("offline_wandb")  # nothing reaches the network or the user's settings
def test_wandb_offline_run_reads_back(tmp_path, monkeypatch) -> None:
    run_dir = _tiny_run(tmp_path, "wandb")
    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # under the run folder
    records = _wandb_records(log)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].display_name == run_dir.name and runs[0].project == "sslbench"
    config: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert config["method"]["name"] == "simclr" and config["backbone"]["name"] == "resnet10t"
    assert config["epochs"] == 1 and config["run_dir"] == str(run_dir)
    steps = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}  # fmt: skip
            if "train_loss_step" in items:
                steps[items["trainer/global_step"]] = items["train_loss_step"]
    assert steps == pytest.approx(_csv_losses(run_dir))
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished


def test_a_stopped_run_resumes_into_every_logger(
    synthetic_run, tmp_path, monkeypatch, capsys
) -> None:
    """Ctrl-C in the second epoch, then the same command: metrics.csv holds every step once
    (the CSV logger's resume), TensorBoard's events of both attempts read as one curve, and
    W&B has one finished run per attempt (the stopped one ended, not reused)."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sslbench.methods.simclr import SimCLR

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))
    run_dir = tmp_path / "runs" / "stopped"
    args = ["pretrain", "method=simclr", *synthetic_run, "epochs=2", "log_every_n_steps=1",
            "logger=[tensorboard,wandb]", f"run_dir={run_dir}"]  # fmt: skip
    loss, calls = SimCLR.training_loss, {"n": 0}

    def stopping(self: SimCLR, views: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of epoch 1
            raise KeyboardInterrupt("stopped by the test")
        return loss(self, views)

    with monkeypatch.context() as patch:
        patch.setattr(SimCLR, "training_loss", stopping)
        assert main(args) == 130
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().out
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train_loss_step")]
    csv_losses = {int(row["step"]): float(row["train_loss_step"]) for row in rows}
    assert len(rows) == len(csv_losses) == 4  # 2 epochs of 2 steps, each once
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train_loss_step")} == pytest.approx(csv_losses)
    logs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2  # one W&B run per attempt, both named after the run folder
    exits = []
    for log in logs:
        records = _wandb_records(log)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.display_name == run_dir.name
        exits += [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert sorted(exits) == [0, 1]  # the stopped attempt ended as failed, the other finished
