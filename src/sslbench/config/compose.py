"""Command-line overrides, or a saved ``config.yaml``, → a validated, fully resolved run
configuration.

The overrides are checked first (:mod:`sslbench.config.overrides`); Hydra then composes the
defaults list with the group choices, the key settings are applied one by one, and
:func:`sslbench.config.validate.resolve` fills the derived values (image size, run folder).
A saved config gets the defaults it ran with (:data:`LEGACY_DEFAULTS`) before the same
checks.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from sslbench.config.overrides import check_group_choice, check_key_override, parse_overrides
from sslbench.config.schema import CONFIG_VERSION, GROUPS, RunConfig, conf_dir, group_options
from sslbench.config.validate import resolve
from sslbench.config.yaml_files import (
    FILE_CHOICES,
    check_file_values,
    is_file_choice,
    load_yaml,
    store_file_choice,
)
from sslbench.errors import ConfigError, one_line


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="sslbench_schema", node=RunConfig)


def _split_overrides(overrides: list[Any]) -> tuple[list[Any], list[Any]]:
    """Separate group choices (``method=byol``) from key settings (``epochs=5``).

    ``backbone=NAME`` for a timm model without a YAML file becomes ``backbone.name=NAME``:
    any timm model is a valid backbone, checked against timm's registry when built.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups, keys = [], []
    for override in overrides:
        key = override.key_or_group
        if key in GROUPS:
            choice = override.value()
            if is_file_choice(choice):
                stored = store_file_choice(key, choice)
                (override,) = OverridesParser.create().parse_overrides([f"{key}={stored}"])
                groups.append(override)
                continue
            if key == "backbone" and choice not in group_options("backbone"):
                (override,) = OverridesParser.create().parse_overrides([f"backbone.name={choice}"])
                keys.append(override)
                continue
            check_group_choice(key, choice)
            groups.append(override)
        else:
            keys.append(override)
    return groups, keys


def compose(args: Sequence[str]) -> DictConfig:
    """Validate ``key=value`` args, compose them with Hydra, and resolve derived values.

    Hydra composes the group choices (its defaults list); the key settings are then applied
    one by one, each checked first, as Hydra itself applies them (``OmegaConf.update`` with
    merge). The composition of a set of group choices is cached: a grid's runs share a few.
    """
    overrides = parse_overrides(args)
    group_overrides, key_overrides = _split_overrides(overrides)
    cfg = copy.deepcopy(_composed_groups(tuple(o.input_line for o in group_overrides)))
    named = [o.value() for o in key_overrides if o.key_or_group == "backbone.name"]
    apply_backbone_recipe(cfg, str(named[-1]) if named else str(cfg.backbone.name))
    for override in key_overrides:
        key, value = override.key_or_group, override.value()
        check_key_override(cfg, key, value)
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        # the check lets through one missing key: an op parameter, or a key of a typed
        # section (method.optimizer.grad_clip), that its YAML leaves at default
        adding = isinstance(parent, DictConfig) and leaf not in parent
        try:
            with open_dict(parent) if adding else contextlib.nullcontext():
                OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"invalid value for {key}: {one_line(err)}") from None
    return resolve(cfg)


#: The timm modules whose models are VisionTransformers (sslbench.nn.backbones.backbone_kind
#: "vit"): DeiT's are too.
VIT_MODULES = ("vision_transformer", "deit")


def is_vit(backbone: str) -> bool:
    """Whether timm model ``backbone`` is a VisionTransformer (ViT, DeiT), by timm's registry."""
    import timm  # here, not above: torch loads only when a method has a ViT recipe

    return timm.is_model(backbone) and timm.models.is_model_in_modules(backbone, VIT_MODULES)


def apply_backbone_recipe(cfg: DictConfig, backbone: str) -> None:
    """A method's recipe for ViTs: its YAML's ``vit:`` section (the paper's ViT optimiser,
    heads, temperatures) replaces the keys it names when the backbone is a ViT, before the
    command line's keys (which win); the section itself leaves the config either way, so a
    ResNet run's config and hash are what they were without it."""
    method = cfg.method
    if "vit" not in method:
        return
    with open_dict(method):
        recipe = method.pop("vit")
    if recipe is not None and is_vit(backbone):
        with open_dict(cfg):
            cfg.method = OmegaConf.merge(method, recipe)


@functools.lru_cache(maxsize=128)
def _composed_groups(groups: tuple[str, ...]) -> DictConfig:
    return _hydra_compose(list(groups))


def _hydra_compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    _register_schema()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3", job_name="sslbench"):
            cfg = hydra_compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"invalid configuration: {_composition_problem(err)}") from None
    return cfg  # typed: the defaults list starts with the RunConfig schema


def _composition_problem(err: Exception) -> str:
    """Hydra's composition error in one line, naming a user's YAML file by its path: Hydra
    writes ``In 'experiment/file-<hash>': ValidationError raised while composing config:``,
    then the problem and its ``full_key`` on the next lines."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    head = lines[0]
    for stored, named in FILE_CHOICES.items():
        head = head.replace(f"'{stored}'", named)
    composing = re.search(r": \w+ raised while composing config:$", head)
    if composing and len(lines) > 1:
        head = f"{head[: composing.start()]}: {lines[1]}"
        key = next((line for line in lines[2:] if line.startswith("full_key:")), None)
        if key is not None:
            head += f" ({key.replace('full_key:', 'key').strip()})"
    return head


def _legacy_cache_size(saved: DictConfig) -> int | None:
    """The cache side before version 2: image_size, capped at the short side of the -160 and
    -320 copies."""
    side = saved.get("image_size")
    name = str(OmegaConf.select(saved, "dataset.name", default=""))
    short = {"160": 160, "320": 320}.get(name.rsplit("-", 1)[-1])
    return min(side, short) if side and short else side


#: Defaults that changed, by the config version that changed them: a config saved before
#: (without the key) gets the value it ran with. Dotted key -> value, or a function of the
#: saved config for values that depended on others.
LEGACY_DEFAULTS: dict[int, dict[str, Any]] = {
    2: {
        "backbone.zero_init_last": True,  # timm's start
        "method.joint_forward": True,  # both views in one batch
        "eval.subset_seed": lambda saved: saved.get("seed", 0),  # the run's seed
        # the crop side, capped at the short side of the -160 / -320 copies
        "dataset.cache_size": _legacy_cache_size,
    },
}


def upgrade_saved_config(saved: DictConfig) -> DictConfig:
    """Give a config saved by an earlier version of sslbench the defaults it ran with, for
    the keys it lacks (``dataset.cache_size`` also when null): it repeats its own run."""
    version = int(saved.get("config_version", 1))
    for changed_in, defaults in sorted(LEGACY_DEFAULTS.items()):
        if version >= changed_in:
            continue
        for key, value in defaults.items():
            current = OmegaConf.select(saved, key, default=None)
            if current is None:
                OmegaConf.update(saved, key, value(saved) if callable(value) else value)
    saved.config_version = CONFIG_VERSION
    return saved


def load_run_config(path: str | Path, args: Sequence[str] = ()) -> DictConfig:
    """Load a saved ``config.yaml`` (a run can be repeated from it alone), then apply
    ``key=value`` overrides with the same checks as on the command line. A config saved
    by an earlier version keeps the defaults it ran with (``upgrade_saved_config``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    loaded = load_yaml(path, "config file")
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    check_file_values(loaded, "config file", path, None)
    try:
        saved = upgrade_saved_config(loaded)
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), saved)
    except Exception as err:  # noqa: BLE001 - any parse/type error becomes one line
        key = getattr(err, "full_key", None)
        raise ConfigError(
            f"invalid config file {path}: {f'{key}: ' if key else ''}{one_line(err)}"
        ) from None
    for override in parse_overrides(args):
        key = override.key_or_group
        if key in GROUPS:
            raise ConfigError(
                f"'{override.input_line}': a saved config already chose its {key}; "
                f"set its keys instead ({key}.KEY=VALUE)"
            )
        check_key_override(cfg, key, override.value())
        OmegaConf.update(cfg, key, override.value(), merge=True)
    return resolve(cfg)
