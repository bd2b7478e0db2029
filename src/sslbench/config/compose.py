"""Command-line overrides → a validated, fully resolved run configuration.

``key=value`` overrides are checked here, before Hydra composes them and before torch is
imported, so that a typo costs a one-line error and no time: an unknown group option or
key, or a value of the wrong type, raises :class:`ConfigError` naming the bad value and the
valid choices (Hydra's own errors span many lines). Hydra then composes the defaults list
with the overrides; :func:`resolve` fills the derived values (image size, run folder).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from sslbench.config.schema import (
    COMPILE_MODES,
    CONFIG_VERSION,
    DATA_PATHS,
    GRID_SECTIONS,
    GROUPS,
    LOGGERS,
    REQUIRED_GROUPS,
    RESUME_MODES,
    TYPED_SECTIONS,
    RunConfig,
    conf_dir,
    group_options,
)
from sslbench.errors import ConfigError, one_line
from sslbench.pretext import check_pretext, pretext_name


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="sslbench_schema", node=RunConfig)


def parse_overrides(args: Sequence[str], allow_sweeps: bool = False) -> list[Any]:
    """Parse ``key=value`` strings with Hydra's grammar (values get Hydra's types); sweeps
    (``a,b``, ``range(3)``, ``glob(*)``) only for a grid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got '{arg}'")
        arg = quote_path_override(arg)
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException as err:
            raise ConfigError(f"cannot parse override '{arg}': {one_line(err)}") from None
        if override.is_sweep_override() and not allow_sweeps:
            raise ConfigError(f"'{arg}' is a sweep; grids run with 'sslbench pretrain -m'")
        if override.is_add() or override.is_delete() or override.is_force_add():
            raise ConfigError(f"'{arg}': adding or deleting keys is not supported; set key=value")
        parsed.append(override)
    return parsed


#: Keys whose value is a path or URL, taken literally: Hydra's grammar gives ``,`` ``=`` ``(``
#: ``[`` and spaces meanings (a sweep, a function call) that a folder name may well contain.
PATH_KEYS: tuple[str, ...] = ("run_dir", "runs_root", "dataset.path", "dataset.url")


def quote_path_override(arg: str) -> str:
    """``run_dir=/runs/a,b`` -> ``run_dir='/runs/a,b'`` (quoted for Hydra, so it is one
    literal value); a value already quoted, and ``null``, are left as they are."""
    key, _, value = arg.partition("=")
    if key not in PATH_KEYS or value in ("", "null") or _is_quoted(value):
        return arg
    # In Hydra's quoted strings a backslash escapes only a quote, or another backslash
    # before one: double those, then escape the quotes.
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
    return f"{key}='{escaped}'"


def _is_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""


def _check_group_choice(group: str, choice: Any) -> None:
    options = group_options(group)
    if not isinstance(choice, str) or choice not in options:
        raise ConfigError(
            f"unknown {group} '{choice}'; valid: {', '.join(options)}, or a YAML file path"
        )


#: Most values a YAML file may expand to. A config is a few hundred; YAML aliases let a
#: file of a few lines expand to billions ("billion laughs"), which OmegaConf would copy out.
MAX_YAML_VALUES = 100_000


def load_yaml(path: Path, what: str) -> Any:
    """OmegaConf's reading of a YAML file that may come from anyone, refused in one line
    when its aliases expand it beyond :data:`MAX_YAML_VALUES` values (or into a loop)."""
    import yaml

    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {what} {path}: {_yaml_problem(err)}") from None
    sizes: dict[int, int] = {}  # an alias is the same node object: counted once, used often

    def expanded(node: Any, open_nodes: frozenset[int]) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise ConfigError(f"{what} {path} refers to itself (a recursive YAML alias)")
        inner = open_nodes | {id(node)}
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(expanded(k, inner) + expanded(v, inner) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(expanded(item, inner) for item in node.value)
        else:
            size = 1
        sizes[id(node)] = size
        return size

    if root is not None and expanded(root, frozenset()) > MAX_YAML_VALUES:
        raise ConfigError(
            f"{what} {path} expands to {expanded(root, frozenset()):,} values through YAML "
            f"aliases (at most {MAX_YAML_VALUES:,}); refused"
        )
    try:
        return OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - any YAML or OmegaConf error becomes one line
        raise ConfigError(f"cannot read {what} {path}: {one_line(err)}") from None


def _yaml_problem(err: Exception) -> str:
    """A YAML syntax error in one line, with where it is: ``line 2, column 5: expected ','
    or ']', but got ':' (while parsing a flow sequence that starts at line 1, column 4)``
    (PyYAML's first line is only the context, without a position)."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return one_line(err)
    text = f"line {mark.line + 1}, column {mark.column + 1}: {getattr(err, 'problem', None)}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context:
        if start is not None and (start.line, start.column) != (mark.line, mark.column):
            context += f" that starts at line {start.line + 1}, column {start.column + 1}"
        text += f" ({context})"
    return text


def _file_key_type(keys: list[str], mapping: dict[str, Any]) -> Any:
    """The type the schema gives a key of a YAML file (``keys``: its full dotted path, e.g.
    ``["eval", "knn_k"]``; ``mapping``: the file's mapping that holds it), or None where the
    schema does not type it (a method's own keys: typed by the method's YAML when set on the
    command line). Raises ConfigError for a key the schema does not have."""
    parent = ".".join(keys[:-1])
    section = RunConfig if not parent else TYPED_SECTIONS.get(parent)
    if section is not None:
        if keys[-1] not in {f.name for f in fields(section)}:
            scope = f" under {parent}" if parent else ""
            valid = ", ".join(sorted(f.name for f in fields(section)))
            raise ConfigError(f"unknown key '{'.'.join(keys)}'; valid keys{scope}: {valid}")
        return _annotation(section, keys[-1])
    if keys[:2] == ["transform", "ops"] and len(keys) == 4 and keys[-1] != "op":
        from sslbench.transforms.params import OP_PARAMS

        params = OP_PARAMS.get(str(mapping.get("op", keys[2])))
        if params is not None and keys[-1] in {f.name for f in fields(params)}:
            return _annotation(params, keys[-1])
    return None  # an unknown op or parameter is named by the transform's own check


def check_file_values(node: DictConfig, what: str, path: Path, group: str | None) -> None:
    """Check every key of a YAML file against the schema, as the command line checks
    ``key=value``: an unknown key, or a value of the wrong type, raises ConfigError naming
    the file and the key as the file spells it (``config file F: epochs must be int, got
    'abc'``). ``group``: the group the file is an option of (its keys are under it), None for
    a file of the whole config (``--config``, an experiment)."""
    data = OmegaConf.to_container(node, resolve=False)
    prefix = [group] if group else []

    def walk(mapping: dict[str, Any], keys: list[str]) -> None:
        for key, value in mapping.items():
            here = [*keys, str(key)]
            if here == ["defaults"]:  # Hydra's defaults list, checked when composed
                continue
            spelled = ".".join(here)
            try:
                expected = _file_key_type(prefix + here, mapping)
            except ConfigError as err:
                raise ConfigError(f"{what} {path}: {err}") from None
            interpolated = isinstance(value, str) and "${" in value
            if expected is not None and not interpolated and not _type_ok(expected, value):
                kind = "a mapping of keys" if is_dataclass(expected) else _type_name(expected)
                raise ConfigError(f"{what} {path}: {spelled} must be {kind}, got {value!r}")
            if isinstance(value, dict):
                walk(value, here)

    if isinstance(data, dict):
        walk(data, [])


def _is_file_choice(choice: Any) -> bool:
    return isinstance(choice, str) and choice.endswith((".yaml", ".yml"))


def _store_file_choice(group: str, choice: str) -> str:
    """Make a user's YAML file (``transform=./my_pipeline.yaml``) a choice of ``group``.

    The file is stored in Hydra's ConfigStore under a name derived from its path, so it
    composes like a packaged option, ``defaults:`` list included (``defaults: [simclr,
    _self_]`` extends the packaged simclr pipeline). Its ``name`` defaults to the file's stem;
    an experiment file sets keys of the whole config, as the packaged experiments do.
    Returns the stored option's name.
    """
    from hydra.core.config_store import ConfigStore

    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(f"{group} file not found: {choice}")
    node = load_yaml(path, f"{group} file")
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{group} file {choice} must hold a mapping of keys to values")
    check_file_values(node, f"{group} file", path, None if group == "experiment" else group)
    # an experiment sets keys anywhere (Hydra's "# @package _global_", which a stored node
    # cannot carry as a comment); the other groups' options are named
    package = "_global_" if group == "experiment" else None
    if package is None and "name" not in node:
        node.name = path.stem
    # named by path and content: the cache of compositions must not serve an edited file's
    # old version
    identity = f"{path.resolve()}\n{OmegaConf.to_yaml(node)}"
    stored = "file-" + hashlib.sha256(identity.encode()).hexdigest()[:12]
    ConfigStore.instance().store(group=group, name=stored, node=node, package=package)
    _FILE_CHOICES[f"{group}/{stored}"] = f"{group} file {path}"
    return stored


#: ``group/file-<hash>`` (a user's YAML file stored as an option) -> ``group file PATH``, so
#: that an error Hydra raises while composing it names the file, not its stored name.
_FILE_CHOICES: dict[str, str] = {}


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
            if _is_file_choice(choice):
                stored = _store_file_choice(key, choice)
                (override,) = OverridesParser.create().parse_overrides([f"{key}={stored}"])
                groups.append(override)
                continue
            if key == "backbone" and choice not in group_options("backbone"):
                (override,) = OverridesParser.create().parse_overrides([f"backbone.name={choice}"])
                keys.append(override)
                continue
            _check_group_choice(key, choice)
            groups.append(override)
        else:
            keys.append(override)
    return groups, keys


def _annotation(section: type, key: str) -> Any:
    for f in fields(section):
        if f.name == key:
            return typing.get_type_hints(section)[key]
    raise KeyError(key)


def _type_ok(expected: Any, value: Any) -> bool:
    """Whether ``value`` fits a dataclass annotation (Optional, scalars, lists, dicts)."""
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin is typing.Union:
        return any(_type_ok(arg, value) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin in (list, typing.List):  # noqa: UP006
        return isinstance(value, list)
    if origin in (dict, typing.Dict):  # noqa: UP006
        return isinstance(value, dict)
    if is_dataclass(expected):
        return isinstance(value, dict)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is str:
        # Hydra reads precision=32 or run_dir=2026 as numbers; OmegaConf stores their text.
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    args = [a for a in typing.get_args(expected) if a is not type(None)]
    # ``int | None`` (the schema's spelling) is a types.UnionType, ``Optional[int]`` a Union
    if typing.get_origin(expected) in (typing.Union, types.UnionType) and len(args) == 1:
        return f"{_type_name(args[0])} or null"
    return getattr(expected, "__name__", str(expected))


def _expected_type(cfg: DictConfig, path: list[str], current: Any) -> Any:
    """The type a key must hold: its dataclass annotation, else its default's type."""
    parent = ".".join(path[:-1])
    if parent in TYPED_SECTIONS:
        return _annotation(TYPED_SECTIONS[parent], path[-1])
    if len(path) == 1:
        return _annotation(RunConfig, path[0])
    if path[0] == "transform" and len(path) == 4 and path[1] == "ops":
        return _op_param_annotation(cfg, path)
    if current is None:
        return Any
    if isinstance(current, bool):
        return bool
    if isinstance(current, float):
        return float
    if isinstance(current, (DictConfig, dict)):
        return dict
    if OmegaConf.is_list(current) or isinstance(current, list):
        return list
    return type(current)


def _op_param_annotation(cfg: DictConfig, path: list[str]) -> Any:
    from sslbench.transforms.params import OP_PARAMS

    entry = cfg.transform.ops.get(path[2]) or {}
    op_name = entry.get("op", path[2]) if isinstance(entry, DictConfig) else path[2]
    params = OP_PARAMS[op_name]
    valid = [f.name for f in fields(params)]
    if path[3] not in valid:
        raise ConfigError(
            f"unknown parameter '{path[3]}' of op {op_name} (transform.ops.{path[2]}); "
            f"valid: {', '.join(valid)}"
        )
    return _annotation(params, path[3])


def _lookup(cfg: DictConfig, dotted: str) -> tuple[list[str], Any, bool]:
    """Walk ``dotted`` through cfg; return (path, value, exists). Unknown keys raise."""
    path = dotted.split(".")
    node: Any = cfg
    for depth, part in enumerate(path):
        is_last = depth == len(path) - 1
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        if OmegaConf.is_list(node) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]  # e.g. transform.views.1.solarize.p
            continue
        where = ".".join(path[:depth])
        is_op_param = path[:2] == ["transform", "ops"] and depth == 3 and is_last
        if is_op_param:  # an op parameter left at its default in the YAML
            return path, None, False
        if OmegaConf.is_list(node):
            raise ConfigError(
                f"unknown key '{dotted}'; {where} is a list of {len(node)} entries "
                f"(indices 0..{len(node) - 1})"
            )
        valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
        scope = f" under {where}" if where else ""
        if where == "transform.ops":
            raise ConfigError(
                f"unknown op '{part}' in transform '{cfg.transform.get('name')}'; "
                f"its ops: {', '.join(str(k) for k in node.keys())}"
            )
        raise ConfigError(
            f"unknown key '{dotted}'; valid keys{scope}: {', '.join(str(v) for v in valid)}"
        )
    return path, node, True


def check_key_override(cfg: DictConfig, key: str, value: Any) -> None:
    """Raise ConfigError unless ``key`` exists in cfg (or is a valid op parameter) and
    ``value`` has its type."""
    if key.split(".")[0] in GROUPS and "." not in key:
        _check_group_choice(key, value)
        return
    path, current, _ = _lookup(cfg, key)
    expected = _expected_type(cfg, path, current)
    if not _type_ok(expected, value):
        raise ConfigError(f"{key} must be {_type_name(expected)}, got {value!r}")


def compose(args: Sequence[str]) -> DictConfig:
    """Validate ``key=value`` args, compose them with Hydra, and resolve derived values.

    Hydra composes the group choices (its defaults list); the key settings are then applied
    one by one, each checked first, as Hydra itself applies them (``OmegaConf.update`` with
    merge). The composition of a set of group choices is cached: a grid's runs share a few.
    """
    overrides = parse_overrides(args)
    group_overrides, key_overrides = _split_overrides(overrides)
    cfg = copy.deepcopy(_composed_groups(tuple(o.input_line for o in group_overrides)))
    for override in key_overrides:
        key, value = override.key_or_group, override.value()
        check_key_override(cfg, key, value)
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        # the check lets through one missing key: an op parameter its YAML leaves at default
        adding = isinstance(parent, DictConfig) and leaf not in parent
        try:
            with open_dict(parent) if adding else contextlib.nullcontext():
                OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"invalid value for {key}: {one_line(err)}") from None
    return resolve(cfg)


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
    for stored, named in _FILE_CHOICES.items():
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
    "eval.online_probe": True,
    "eval.online_every_n_epochs": None,
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
    logger_names(cfg.get("logger", "csv"))  # absent from configs saved before trackers
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be at least 1 (or null: the cores), got {cfg.threads}")
    if cfg.dataset.path_required and not cfg.dataset.path:
        raise ConfigError(f"dataset {cfg.dataset.name} needs dataset.path=DIR")
    if cfg.run_dir is None:
        cfg.run_dir = default_run_dir(cfg)
    return cfg


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
