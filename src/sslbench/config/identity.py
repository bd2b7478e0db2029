"""A run's identity: the hash of what it computes, and the run folder named by it.

The keys that say where and how a run is carried out stay out of the hash, and keys added
after runs existed count only away from their defaults, so that a rerun of the same config
finds its folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslbench.config.schema import GRID_SECTIONS
from sslbench.pretext import pretext_name

#: Keys that say where and how a run is carried out, not what it computes: a run's folder name
#: ignores them, so the same run found by a single command or by any grid has one folder.
NOT_IN_HASH = (
    "run_dir", "runs_root", "progress_bar", "num_workers", "threads", "data_path", "compile",
    "overwrite", "resume", "checkpoint_every_n_steps", "logger", *GRID_SECTIONS,
)  # fmt: skip


#: Keys added after runs had been made, with their defaults: part of a run's hash only when
#: set to another value, so a run from before them keeps its folder. (dataset.jpeg_draft:
#: false is the full decode those runs did; the evaluations added run on such a folder
#: through ``sslbench eval``, which adds their numbers to its results.json.)
KEYS_HASHED_ONLY_AWAY_FROM_DEFAULT: dict[str, Any] = {
    "dataset.jpeg_draft": False,
    "eval.few_shot": True,
    "eval.linear_folds": 5,
    "eval.probe": "lbfgs",
    "eval.sgd_epochs": 90,
    "eval.sgd_lr": 0.1,
    "eval.sgd_batch_size": 256,
    "eval.finetune": False,
    "eval.finetune_epochs": 30,
    "eval.finetune_lr": 0.05,
    "eval.finetune_batch_size": 256,
    "eval.finetune_optimizer": "sgd",
    "eval.finetune_weight_decay": 0.0,
    "eval.finetune_layer_decay": None,
    "eval.finetune_warmup_epochs": 0.0,
    "eval.online_probe": True,
    "eval.online_every_n_epochs": None,
    "backbone.patch_size": None,
    "eval.pool": None,
    "method.freeze_last_layer": -1,
}


def what_it_computes(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without the keys that do not change a run's result
    (:data:`NOT_IN_HASH`): what :func:`config_hash` hashes."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for key in NOT_IN_HASH:
        data.pop(key, None)
    if pretext_name(data.get("pretext")) is None:
        data.pop("pretext", None)  # no task: the hash (and folder) of runs from before pretext
    # keys added after runs existed, at their defaults: the hash (and folder) of those runs
    for dotted, default in KEYS_HASHED_ONLY_AWAY_FROM_DEFAULT.items():
        section, key = dotted.split(".")
        if data.get(section, {}).get(key, default) == default:
            data.get(section, {}).pop(key, None)
    # keys without effect on a run of one process: its hash is that of runs from before them
    # how activations are kept for the backward pass: memory, not numbers
    data.get("backbone", {}).pop("grad_checkpointing", None)
    if data.get("num_nodes", 1) == 1:
        data.pop("num_nodes", None)
    if data.get("devices", 1) * data.get("num_nodes", 1) == 1:
        data.get("backbone", {}).pop("sync_batchnorm", None)
    return data


def config_hash(cfg: DictConfig) -> str:
    """Short hash of everything that defines a run's result (not where it is written)."""
    text = OmegaConf.to_yaml(OmegaConf.create(what_it_computes(cfg)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def config_differences(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """``key: saved -> new`` for each value that differs in what the two runs compute."""

    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(data, dict):
            return {prefix: data}
        pairs = (flat(value, f"{prefix}{key}.").items() for key, value in data.items())
        return {k: v for items in pairs for k, v in items}

    old, new = flat(what_it_computes(saved)), flat(what_it_computes(cfg))
    return [f"{key.rstrip('.')}: {old.get(key)} -> {new.get(key)}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]  # fmt: skip


#: Method keys a run folder's name carries, as (key, prefix): without them the study's four
#: VICRegL runs (α 0.25 ... 0.95) differ only by their hash.
NAMED_METHOD_KEYS: dict[str, tuple[str, str]] = {"vicregl": ("alpha", "a")}


def _folder_name(cfg: DictConfig, method_keys: bool = True) -> str:
    """``<method>[-a<α>]-<transform>[-pretext_<task>]-<dataset>-<backbone>-<hash>``;
    ``method_keys=False``: the name without the method's keys, as folders were named before."""
    method = str(cfg.method.get("name"))
    tags = []
    if method_keys and method in NAMED_METHOD_KEYS:
        key, prefix = NAMED_METHOD_KEYS[method]
        value = cfg.method.get(key)
        if value is not None:
            tags.append(f"{prefix}{value:g}" if isinstance(value, float) else f"{prefix}{value}")
    pretext = pretext_name(cfg.get("pretext"))
    task = [f"pretext_{pretext}"] if pretext else []
    parts = [method, *tags, cfg.transform.get("name"), *task, cfg.dataset.name, cfg.backbone.name]
    return "-".join(str(part) for part in parts) + f"-{config_hash(cfg)}"


def default_run_dir(cfg: DictConfig) -> str:
    """The run folder of a config without ``run_dir``: ``<runs_root>/<name>``
    (:func:`_folder_name`). A folder that the same config got under the name without the
    method's keys is kept, so that a rerun finds (and resumes or skips) what it holds."""
    root = Path(cfg.runs_root)
    named = root / _folder_name(cfg)
    if not named.exists():
        unnamed = root / _folder_name(cfg, method_keys=False)
        if unnamed != named and unnamed.is_dir():
            return str(unnamed)
    return str(named)
