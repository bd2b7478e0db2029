"""YAML files from users: read with a bound on alias expansion, checked key by key against
the schema, and stored as options of their group (``transform=./my_pipeline.yaml``)."""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslbench.config.overrides import key_annotation, type_name, type_ok
from sslbench.config.schema import TYPED_SECTIONS, RunConfig
from sslbench.errors import ConfigError, one_line

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
        return key_annotation(section, keys[-1])
    if keys[:2] == ["transform", "ops"] and len(keys) == 4 and keys[-1] != "op":
        from sslbench.transforms.params import OP_PARAMS

        params = OP_PARAMS.get(str(mapping.get("op", keys[2])))
        if params is not None and keys[-1] in {f.name for f in fields(params)}:
            return key_annotation(params, keys[-1])
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
            if expected is not None and not interpolated and not type_ok(expected, value):
                kind = "a mapping of keys" if is_dataclass(expected) else type_name(expected)
                raise ConfigError(f"{what} {path}: {spelled} must be {kind}, got {value!r}")
            if isinstance(value, dict):
                walk(value, here)

    if isinstance(data, dict):
        walk(data, [])


#: ``group/file-<hash>`` (a user's YAML file stored as an option) -> ``group file PATH``, so
#: that an error Hydra raises while composing it names the file, not its stored name.
FILE_CHOICES: dict[str, str] = {}


def is_file_choice(choice: Any) -> bool:
    """Whether a group's value is a YAML file's path rather than an option's name."""
    return isinstance(choice, str) and choice.endswith((".yaml", ".yml"))


def store_file_choice(group: str, choice: str) -> str:
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
    FILE_CHOICES[f"{group}/{stored}"] = f"{group} file {path}"
    return stored
