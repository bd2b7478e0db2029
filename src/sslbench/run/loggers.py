"""Experiment trackers: Lightning's own loggers, chosen with ``logger=`` (docs/trackers.md).

``logger=csv|tensorboard|wandb|mlflow``, or a list (``logger=[csv,tensorboard]``). The CSV
logger is always built, and first: the report reads ``metrics.csv``, and Lightning takes the
Trainer's log folder from the first logger. Every tracker records the run's resolved config
as its hyperparameters and is named after the run folder:

- ``tensorboard``: event files in ``<run folder>/tensorboard/``;
- ``wandb``: Weights & Biases, offline (``<run folder>/wandb/offline-run-*``, ``wandb sync``
  uploads them) unless ``WANDB_MODE=online`` is set; project ``WANDB_PROJECT`` or sslbench;
- ``mlflow``: the SQLite store ``<runs_root>/mlflow.db`` (artifacts in
  ``<runs_root>/mlartifacts``) unless ``MLFLOW_TRACKING_URI`` names another; experiment
  ``MLFLOW_EXPERIMENT_NAME`` or sslbench.

The evaluation's scores (``linear_top1``, ``knn_top1``, ...) go to the trackers as ``eval/...``
at the run's last step: :func:`log_scores` on the run's own loggers at the end of a run,
:func:`log_scores_to_run` for ``sslbench eval`` of a finished run. metrics.csv keeps the
training's history only; results.json holds every score.

The three trackers are optional packages. This module imports none of them, nor torch, at
import time: :func:`check_logger_packages` runs before anything is built (sslbench.run.preflight).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sslbench.config.validate import logger_names
from sslbench.errors import ConfigError
from sslbench.eval.fields import KNN_FIELD

if TYPE_CHECKING:
    from pytorch_lightning.loggers import Logger

#: The modules each tracker imports, and the command that installs them.
PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
}
#: What MLflow's database stores (SQLite, the default here) need beyond mlflow-skinny.
MLFLOW_SQL_PACKAGES: tuple[tuple[str, ...], str] = (
    ("sqlalchemy", "alembic"),
    "pip install sqlalchemy alembic",
)
#: Tracking URI schemes that MLflow serves through SQLAlchemy (mlflow.utils.uri's list).
MLFLOW_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

#: Weights & Biases project and MLflow experiment when the environment names none.
DEFAULT_PROJECT = "sslbench"

#: results.json's scores that the trackers get, each protocol's own field (besides every kNN
#: setting's ``knn_top1_k{k}`` / ``knn_top1_k{k}_t{T}``, :data:`sslbench.run.results.KNN_FIELD`).
SCORE_FIELDS = (
    "linear_top1", "linear_top5", "knn_top1", "sgd_linear_top1", "sgd_linear_top5",
    "finetune_top1", "finetune_top5", "linear_top1_1pct", "linear_top1_10pct",
    "pretext_accuracy", "online_probe_top1",
)  # fmt: skip
#: The scores' section in the trackers, apart from the training curves.
SCORE_PREFIX = "eval/"


def _missing(modules: tuple[str, ...]) -> list[str]:
    # find_spec, not import: the check runs before torch is imported and must stay quick
    return [module for module in modules if importlib.util.find_spec(module) is None]


def mlflow_tracking_uri(cfg: DictConfig) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite store ``<runs_root>/mlflow.db``
    (absolute: a run started from another folder must find the same store)."""
    given = os.environ.get("MLFLOW_TRACKING_URI")
    if given:
        return given
    return f"sqlite:///{Path(str(cfg.runs_root)).expanduser().resolve() / 'mlflow.db'}"


def check_logger_packages(cfg: DictConfig) -> None:
    """Raise ConfigError, in one line naming the pip command, if a logger the run asks for
    needs a package that is not installed: said before a run folder is claimed or torch is
    imported, not after the cache is built."""
    for name in logger_names(cfg.get("logger", "csv"))[1:]:
        needed = [PACKAGES[name]]
        if name == "mlflow":
            scheme = mlflow_tracking_uri(cfg).partition(":")[0].partition("+")[0]
            if scheme in MLFLOW_DATABASE_SCHEMES:  # mlflow-skinny lacks these; mlflow has them
                needed.append(MLFLOW_SQL_PACKAGES)
        for modules, command in needed:
            missing = _missing(modules)
            if missing:
                raise ConfigError(
                    f"logger={name} needs {', '.join(missing)}, not installed: {command} "
                    "(or pip install 'sslbench[trackers]' for every tracker)"
                )


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"method": {"name": "simclr"}}`` -> ``{"method.name": "simclr"}``: the keys the
    command line sets (list entries by index, ``transform.views.1...``), for trackers whose
    hyperparameters are one flat table. None is ``null``, an empty list or mapping ``[]`` /
    ``{}``, as the YAML would say."""
    if isinstance(data, dict) and data:
        items = data.items()
    elif isinstance(data, list) and data:
        items = enumerate(data)
    else:
        if data is None:
            data = "null"
        elif isinstance(data, (dict, list)):
            data = "{}" if isinstance(data, dict) else "[]"
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def build_loggers(cfg: DictConfig, run_dir: Path, keep_open: bool = False) -> list[Logger]:
    """Lightning's loggers for ``cfg.logger``: the CSV logger first (always; it writes
    ``run_dir/metrics.csv``), then each tracker asked for, named after the run folder, with
    the resolved config logged as its hyperparameters.

    ``keep_open``: the W&B run stays open when training ends (Lightning's ``finalize``), for
    the evaluation's scores; :func:`log_scores` or :func:`close_loggers` then ends it.

    On ranks other than 0 only the CSV logger is built: Lightning's loggers write nothing
    there, and MLflow's client would open (on the first run, create) its database from
    every rank at once.
    """
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    check_logger_packages(cfg)
    run_dir = Path(run_dir)
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if getattr(rank_zero_only, "rank", 0) != 0:
        return loggers
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    wandb = partial(_wandb, keep_open=keep_open)
    builders = {"tensorboard": _tensorboard, "wandb": wandb, "mlflow": _mlflow}
    for name in logger_names(cfg.get("logger", "csv"))[1:]:
        loggers.append(builders[name](cfg, run_dir, config))
    return loggers


def score_metrics(scores: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among ``scores``' score fields (:data:`SCORE_FIELDS`, every kNN
    setting's), named as the trackers get them: ``eval/linear_top1``, ..."""
    metrics = {}
    for key, value in scores.items():
        if key not in SCORE_FIELDS and not KNN_FIELD.fullmatch(key):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics[SCORE_PREFIX + key] = float(value)
    return metrics


def log_scores(loggers: Sequence[Logger], scores: Mapping[str, Any], step: int) -> dict[str, float]:
    """Send the evaluation's scores (:func:`score_metrics` of ``scores``, a results.json
    update) at ``step`` to each tracker among ``loggers``, then end them (written, flushed,
    the W&B run finished); return what was sent. The CSV logger is left out: metrics.csv
    holds the training's history, results.json the scores."""
    metrics = score_metrics(scores)
    trackers = _trackers(loggers)
    if metrics:
        for logger in trackers:
            logger.log_metrics(metrics, step=step)
    close_loggers(trackers)
    return metrics


def close_loggers(loggers: Sequence[Logger], status: str = "success") -> None:
    """End the trackers among ``loggers``: their records written and the W&B run finished
    (``status`` ``failed``: marked as failed, as MLflow's run is)."""
    for logger in _trackers(loggers):
        logger.save()
        logger.finalize(status)
        finish = getattr(logger, "finish_run", None)  # the W&B run a keep_open left open
        if finish is not None:
            finish(status)


def _trackers(loggers: Sequence[Logger]) -> list[Logger]:
    from pytorch_lightning.loggers import CSVLogger

    return [logger for logger in loggers if not isinstance(logger, CSVLogger)]


def log_scores_to_run(
    cfg: DictConfig, run_dir: Path, scores: Mapping[str, Any], step: int
) -> dict[str, float]:
    """Send an evaluation of a finished run (``sslbench eval``) to the trackers the run
    recorded itself in (its ``cfg.logger``), as :func:`log_scores` does: TensorBoard's
    events into its ``tensorboard/`` folder, MLflow's metrics into the run's own MLflow run
    (found by its ``sslbench.run_dir`` tag), W&B's into a new W&B run named after the run
    folder in the same group (job type ``eval``): wandb cannot add to a finished offline
    run. Returns what was sent; nothing is opened when there is no score."""
    if not score_metrics(scores):
        return {}
    check_logger_packages(cfg)
    run_dir = Path(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    loggers: list[Logger] = []
    for name in logger_names(cfg.get("logger", "csv"))[1:]:
        if name == "tensorboard":  # a new event file beside the training's; config as it was
            loggers.append(_tensorboard_logger(run_dir))
        elif name == "wandb":
            loggers.append(_wandb(cfg, run_dir, config, job_type="eval"))
        else:
            loggers.append(_mlflow_run_of(cfg, run_dir) or _mlflow(cfg, run_dir, config))
    return log_scores(loggers, scores, step)


def _tensorboard_logger(run_dir: Path) -> Logger:
    from pytorch_lightning.loggers import TensorBoardLogger

    # no hp_metric: Lightning's placeholder scalar (-1) means nothing here
    return TensorBoardLogger(
        save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
    )


def _tensorboard(cfg: DictConfig, run_dir: Path, config: dict[str, Any]) -> Logger:
    from torch.utils.tensorboard.summary import hparams

    logger = _tensorboard_logger(run_dir)
    flat = flatten_config(config)
    logger.log_hyperparams(flat)  # hparams.yaml beside the events
    # Lightning writes the HParams summary only together with a metric value, which would put
    # a made-up point on that metric's curve; the summary itself needs no metric. Only the
    # session's summaries are written, not the experiment's, which would fix the HParams
    # tab's metrics to those it names: without it TensorBoard lists every scalar of the
    # run, the training's curves and the eval/ scores logged after training.
    writer = logger.experiment._get_file_writer()
    _experiment, session_start, session_end = hparams(flat, {})
    writer.add_summary(session_start)
    writer.add_summary(session_end)
    return logger


def _wandb(
    cfg: DictConfig, run_dir: Path, config: dict[str, Any], keep_open: bool = False,
    job_type: str = "pretrain",
) -> Logger:  # fmt: skip
    from pytorch_lightning.loggers import WandbLogger

    class FinishingWandbLogger(WandbLogger):
        """Lightning's WandbLogger, whose run ends with training (or, ``keep_open``, with
        :func:`close_loggers`): wandb.finish writes the run's last records (and its summary
        line), and the next run of this process gets a W&B run of its own instead of
        attaching to this one (Lightning's reuses an open wandb.run)."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            # Lightning always passes anonymous=, which recent wandb warns about even as None
            self._wandb_init.pop("anonymous", None)

        def finalize(self, status: str) -> None:
            super().finalize(status)
            if not keep_open or status not in ("success", "finished"):
                self.finish_run(status)

        def finish_run(self, status: str) -> None:
            if self._experiment is not None:
                self._experiment.finish(exit_code=0 if status in ("success", "finished") else 1)
                self._experiment = None

    logger = FinishingWandbLogger(
        name=run_dir.name,
        save_dir=str(run_dir),
        project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        mode=wandb_mode(),  # not offline=True: Lightning then sets WANDB_MODE for the process
        # a run's attempts and its later evaluations, together in W&B's runs table
        group=run_dir.name,
        job_type=job_type,
    )
    logger.log_hyperparams(config)  # W&B shows a nested config as method.name etc. itself
    return logger


def wandb_mode() -> str:
    """``online`` when ``WANDB_MODE=online`` is set, else ``offline``: a run never needs the
    network (or an API key) to record itself; ``wandb sync`` uploads an offline run later."""
    return "online" if os.environ.get("WANDB_MODE", "").lower() == "online" else "offline"


def _mlflow(cfg: DictConfig, run_dir: Path, config: dict[str, Any]) -> Logger:
    from pytorch_lightning.loggers import MLFlowLogger

    from sslbench.data.folders import exclusive

    uri = mlflow_tracking_uri(cfg)
    artifacts = None  # a server of the user's own keeps its artifacts where it says
    one_at_a_time: Any = contextlib.nullcontext()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        root = Path(str(cfg.runs_root)).expanduser().resolve()
        artifacts = (root / "mlartifacts").as_uri()
        # The runs of a grid (grid.jobs > 1) share this store: MLflow creates its tables, and
        # the experiment, without a lock, and two processes doing it at once fail. Logging
        # into an existing store, SQLite's own locking serialises.
        one_at_a_time = exclusive(root / "mlflow.db", "MLflow's database", progress=False)
    with one_at_a_time:
        logger = MLFlowLogger(
            experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT),
            run_name=run_dir.name,
            tracking_uri=uri,
            tags={"sslbench.run_dir": str(run_dir.resolve())},
            artifact_location=artifacts,
        )
        # creates the experiment (first run) and this run
        logger.log_hyperparams(flatten_config(config))
    return logger


def _mlflow_run_of(cfg: DictConfig, run_dir: Path) -> Logger | None:
    """An MLFlowLogger on the latest MLflow run of ``run_dir`` (its ``sslbench.run_dir``
    tag) in the run's experiment, or None when the store has none."""
    from mlflow.tracking import MlflowClient
    from pytorch_lightning.loggers import MLFlowLogger

    uri = mlflow_tracking_uri(cfg)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
    path = str(run_dir.resolve())
    quote = "'" if "'" not in path else '"'
    if quote in path:  # both quotes: no filter string can name it
        return None
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`sslbench.run_dir` = {quote}{path}{quote}",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    if not runs:
        return None
    return MLFlowLogger(experiment_name=name, tracking_uri=uri, run_id=runs[0].info.run_id)
