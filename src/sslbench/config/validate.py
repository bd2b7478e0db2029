"""The last checks of a composed (or loaded) config and its derived values: :func:`resolve`
checks what YAML files could still get wrong and fills the image size and the run folder."""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslbench.config.identity import default_run_dir
from sslbench.config.schema import (
    COMPILE_MODES,
    DATA_PATHS,
    FINETUNE_OPTIMIZERS,
    GRAD_CLIP_MODES,
    LOGGERS,
    REQUIRED_GROUPS,
    RESUME_MODES,
    group_options,
)
from sslbench.errors import ConfigError
from sslbench.pretext import check_pretext

#: The keys a transform YAML may have.
TRANSFORM_KEYS = ("name", "ops", "views")


def _check_transform(transform: DictConfig) -> None:
    """Every view variant of the transform must parse (ops, parameters, ranges)."""
    from sslbench.transforms.params import view_specs

    unknown = [str(k) for k in transform if k not in TRANSFORM_KEYS]
    if unknown:
        raise ConfigError(
            f"unknown key '{unknown[0]}' in transform '{transform.get('name')}'; "
            f"valid: {', '.join(TRANSFORM_KEYS)}"
        )
    try:
        view_specs(OmegaConf.to_container(transform, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from None


#: Values of ``eval.probe``: L-BFGS on precomputed features (fast), or lightly's SGD one.
PROBES = ("lbfgs", "sgd")

#: Values of ``eval.pool`` (a ViT's features: its class token or its patch tokens' mean).
POOLS = ("cls", "avg")

#: Lightning 2's precision names (and its short aliases), and auto: bf16-mixed on a GPU,
#: 32-true on a CPU. Checked here because Lightning's own error spans many lines.
PRECISIONS = (
    "auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true",
    "32", "64", "16", "bf16", "transformer-engine", "transformer-engine-float16",
)  # fmt: skip


#: An environment variable read through OmegaConf (``${oc.env:TOKEN}``).
ENV_INTERPOLATION = re.compile(r"\$\{\s*oc\.env\s*:")


def _check_no_env_values(cfg: DictConfig) -> None:
    """Refuse ``${oc.env:...}`` anywhere: the resolved config is written to config.yaml
    beside the results, so an environment variable (a token, a password in a mirror's URL)
    would be saved in a folder meant to be shared."""

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for child, value in node.items():
                walk(value, f"{key}.{child}" if key else str(child))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{key}.{index}")
        elif isinstance(node, str) and ENV_INTERPOLATION.search(node):
            raise ConfigError(
                f"{key}={node}: sslbench writes every value into the run's config.yaml, so an "
                "environment variable's value (a secret?) would be saved there; pass the value "
                "itself"
            )

    walk(OmegaConf.to_container(cfg, resolve=False), "")


def logger_names(value: Any) -> list[str]:
    """The loggers a run writes to, from ``logger`` (a name or a list of names): csv first,
    always (the report reads metrics.csv), then the others in the order given, once each."""
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        names = [str(name) for name in value]
    else:
        names = [str(value)]
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(
                f"unknown logger '{name}'; valid: {', '.join(LOGGERS)} (one, or a list: "
                "logger=[csv,tensorboard])"
            )
    return ["csv", *dict.fromkeys(name for name in names if name != "csv")]


def _check_finetune(evaluation: DictConfig) -> None:
    """The fine-tuning recipe's keys (absent from configs saved before them)."""
    name = str(evaluation.get("finetune_optimizer", "sgd"))
    if name not in FINETUNE_OPTIMIZERS:
        raise ConfigError(
            f"eval.finetune_optimizer must be one of {', '.join(FINETUNE_OPTIMIZERS)}; got '{name}'"
        )
    decay = evaluation.get("finetune_layer_decay")
    if decay is not None and not 0 < decay <= 1:
        raise ConfigError(
            f"eval.finetune_layer_decay must be in (0, 1] (or null: one lr for every layer), "
            f"got {decay}"
        )


def _check_optimizer(optimizer: Any) -> None:
    mode = str(optimizer.get("grad_clip_mode", "total"))
    if mode not in GRAD_CLIP_MODES:
        raise ConfigError(
            f"method.optimizer.grad_clip_mode must be one of {', '.join(GRAD_CLIP_MODES)}; "
            f"got '{mode}'"
        )
    betas = optimizer.get("betas")
    if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        raise ConfigError(
            f"method.optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.95] (or "
            f"null: torch's 0.9, 0.999), got {list(betas)}"
        )
    clip = optimizer.get("grad_clip")
    if clip is not None and clip <= 0:
        raise ConfigError(
            f"method.optimizer.grad_clip must be positive (or null: no clipping), got {clip}"
        )


def resolve(cfg: DictConfig) -> DictConfig:
    """Fill derived values and check the parts YAML files could still get wrong."""
    _check_no_env_values(cfg)
    for group in REQUIRED_GROUPS:
        if not cfg.get(group):
            raise ConfigError(f"no {group} selected; valid: {', '.join(group_options(group))}")
    method_name = cfg.method.get("name")
    if method_name not in group_options("method"):
        raise ConfigError(
            f"unknown method '{method_name}'; valid: {', '.join(group_options('method'))}"
        )
    _check_transform(cfg.transform)
    pretext = cfg.get("pretext")  # absent from configs saved before pretext tasks
    try:
        check_pretext(
            None if pretext is None else OmegaConf.to_container(pretext, resolve=True),
            OmegaConf.to_container(cfg.transform, resolve=True),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.image_size is None:
        cfg.image_size = cfg.dataset.default_image_size
    for key in ("epochs", "batch_size", "image_size", "devices", "num_nodes"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {cfg[key]}")
    processes = cfg.devices * cfg.num_nodes
    if cfg.batch_size % processes or cfg.batch_size // processes < 2:
        fits = max(2, cfg.batch_size // processes) * processes
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch: it must split into equal parts "
            f"of at least 2 over devices x num_nodes = {processes} processes; batch_size={fits} "
            "does"
        )
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got '{cfg.device}'")
    if str(cfg.precision) not in PRECISIONS:
        raise ConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}; got '{cfg.precision}'"
        )
    for key, valid in (("data_path", DATA_PATHS), ("compile", COMPILE_MODES),
                       ("resume", RESUME_MODES)):  # fmt: skip
        if str(cfg[key]) not in valid:
            raise ConfigError(f"{key} must be one of {', '.join(valid)}; got '{cfg[key]}'")
    if str(cfg.eval.probe) not in PROBES:
        raise ConfigError(f"eval.probe must be one of {', '.join(PROBES)}; got '{cfg.eval.probe}'")
    pool = cfg.eval.get("pool")  # absent from configs saved before ViTs
    if pool is not None and str(pool) not in POOLS:
        raise ConfigError(
            f"eval.pool must be one of {', '.join(POOLS)} or null (the method's own); got '{pool}'"
        )
    _check_finetune(cfg.eval)
    for key in ("sgd_epochs", "sgd_batch_size", "finetune_epochs", "finetune_batch_size"):
        if cfg.eval[key] < 1:
            raise ConfigError(f"eval.{key} must be at least 1, got {cfg.eval[key]}")
    every = cfg.eval.online_every_n_epochs
    if every is not None and every < 1:
        raise ConfigError(
            f"eval.online_every_n_epochs must be at least 1 (or null: no test accuracy during "
            f"pretraining), got {every}"
        )
    if cfg.checkpoint_every_n_steps is not None and cfg.checkpoint_every_n_steps < 1:
        raise ConfigError(
            "checkpoint_every_n_steps must be at least 1 (or null: at each epoch's end), "
            f"got {cfg.checkpoint_every_n_steps}"
        )
    _check_optimizer(cfg.method.get("optimizer") or {})
    logger_names(cfg.get("logger", "csv"))  # absent from configs saved before trackers
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be at least 1 (or null: the cores), got {cfg.threads}")
    if cfg.dataset.path_required and not cfg.dataset.path:
        raise ConfigError(f"dataset {cfg.dataset.name} needs dataset.path=DIR")
    if cfg.run_dir is None:
        cfg.run_dir = default_run_dir(cfg)
    return cfg
