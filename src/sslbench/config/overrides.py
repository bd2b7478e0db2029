"""Command-line ``key=value`` overrides: parsed with Hydra's grammar and checked against
the schema before Hydra composes them and before torch is imported.

A typo costs a one-line error and no time: an unknown group option or key, or a value of
the wrong type, raises :class:`ConfigError` naming the bad value and the valid choices
(Hydra's own errors span many lines). The types come from the schema's dataclasses, an
op's parameter dataclass, or a default's own type (:func:`check_key_override`).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslbench.config.schema import GROUPS, TYPED_SECTIONS, RunConfig, group_options
from sslbench.errors import ConfigError, one_line


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


def check_group_choice(group: str, choice: Any) -> None:
    """Raise ConfigError unless ``choice`` names a packaged option of ``group``."""
    options = group_options(group)
    if not isinstance(choice, str) or choice not in options:
        raise ConfigError(
            f"unknown {group} '{choice}'; valid: {', '.join(options)}, or a YAML file path"
        )


def key_annotation(section: type, key: str) -> Any:
    """The type a schema dataclass gives ``key`` (KeyError for a key it lacks)."""
    for f in fields(section):
        if f.name == key:
            return typing.get_type_hints(section)[key]
    raise KeyError(key)


def type_ok(expected: Any, value: Any) -> bool:
    """Whether ``value`` fits a dataclass annotation (Optional, scalars, lists, dicts)."""
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(arg, value) for arg in typing.get_args(expected))
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


def type_name(expected: Any) -> str:
    """An annotation as an error message spells it: ``int``, ``float or null``."""
    args = [a for a in typing.get_args(expected) if a is not type(None)]
    # ``int | None`` (the schema's spelling) is a types.UnionType, ``Optional[int]`` a Union
    if typing.get_origin(expected) in (typing.Union, types.UnionType) and len(args) == 1:
        return f"{type_name(args[0])} or null"
    return getattr(expected, "__name__", str(expected))


def _expected_type(cfg: DictConfig, path: list[str], current: Any) -> Any:
    """The type a key must hold: its dataclass annotation, else its default's type."""
    parent = ".".join(path[:-1])
    if parent in TYPED_SECTIONS:
        return key_annotation(TYPED_SECTIONS[parent], path[-1])
    if len(path) == 1:
        return key_annotation(RunConfig, path[0])
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
    return key_annotation(params, path[3])


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
        typed = TYPED_SECTIONS.get(where)
        if is_last and typed is not None and part in {f.name for f in fields(typed)}:
            return path, None, False  # a schema key the YAML leaves at its default
        if OmegaConf.is_list(node):
            raise ConfigError(
                f"unknown key '{dotted}'; {where} is a list of {len(node)} entries "
                f"(indices 0..{len(node) - 1})"
            )
        valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
        if typed is not None:
            valid = sorted({*valid, *(f.name for f in fields(typed))})
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
        check_group_choice(key, value)
        return
    path, current, _ = _lookup(cfg, key)
    expected = _expected_type(cfg, path, current)
    if not type_ok(expected, value):
        raise ConfigError(f"{key} must be {type_name(expected)}, got {value!r}")
