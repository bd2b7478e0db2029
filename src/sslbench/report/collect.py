"""Reading run folders for ``sslbench report``: find them, check them, never trust them.

A run folder is any folder holding ``results.json``. Run folders travel between people, so
every file in one is hostile input: a file is read only if it is a regular file (not a
symbolic link, FIFO or device) under a size cap, JSON and YAML are parsed as data only
(``yaml.safe_load``), every field the report uses is type-checked, and a run that fails a
check is skipped with one line on standard error naming its folder. The search never
follows a symbolic link and skips folders whose name starts with ".". Nothing here writes
or executes anything.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from sslbench.config.identity import KEYS_HASHED_ONLY_AWAY_FROM_DEFAULT, NOT_IN_HASH
from sslbench.errors import RunFolderError, one_line  # sslbench.report imports one_line here
from sslbench.eval.fields import KNN_FIELD
from sslbench.report.files import (
    RESULTS_FILE,
    Warn,
    find_run_folders,
    printable,
    read_regular_file,
)
from sslbench.report.random_init import RandomInit, read_random_init
from sslbench.run.results import SCHEMA_VERSION

CONFIG_FILE = "config.yaml"

#: The newest results.json the report reads: what this sslbench writes, and at least
#: schema 3 (each evaluation protocol in its own fields, ``evaluations``, ``caveats``),
#: which this module reads whichever version the training side writes.
READABLE_SCHEMA = SCHEMA_VERSION
#: Size caps: a results.json is a few kB, a config.yaml a few kB.
MAX_RESULTS_BYTES = 4 * 2**20
MAX_CONFIG_BYTES = 4 * 2**20
#: Caps on a config's nesting and size once parsed (YAML aliases can make a small file huge).
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_NODES = 20_000
STATUSES = ("running", "completed", "failed", "interrupted", "requeued")

#: Top-level config keys that never change what a run computes: runs that differ only in
#: these (and the seed) are repeats of one setting and are averaged together.
IGNORED_CONFIG_KEYS = frozenset({"seed", *NOT_IN_HASH})

#: Method, pipeline, dataset and backbone names: plain names, starting with a letter or a
#: digit (so no cell of the CSV output can start a spreadsheet formula).
_NAME = re.compile(r"[A-Za-z0-9][\w.+:/@=,()\- ]{0,119}")
_HEX = re.compile(r"[0-9a-fA-F]{1,128}")
#: An evaluation protocol's name in results.json ``evaluations`` (linear, knn_top1_k20, ...).
_ENTRY = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
#: kNN top-1 at other settings than the default: knn_top1_k{k} or knn_top1_k{k}_t{T}.
#: Caps on what a run folder may make the report print.
MAX_EVALUATIONS = 64
MAX_KNN_FIELDS = 16
MAX_CAVEATS = 20
#: A results.json from before per-protocol fields (schema 3) with eval.probe=sgd holds the
#: SGD probe's numbers in linear_top1 and a ``probe`` text that starts so.
LEGACY_SGD_PROBE = "linear (SGD)"
_LEGACY_KNN_PER_CLASS = re.compile(r"k exceeds the ~(\d+) train images per class")
_LEGACY_KNN = re.compile(r"kNN: k=(\d+).*?, T=([0-9.eE+-]+),")
_CHANCE = re.compile(r"chance (0?\.\d+|1(?:\.0+)?)\b")


@dataclass(frozen=True)
class TestSubset:
    """The test images a run was scored on: equal SHA-256 means the same images."""

    __test__ = False  # not a pytest test class despite its name

    sha256: str
    count: int | None
    split_size: int | None


@dataclass
class Run:
    """One run folder's checked contents (the fields the report uses)."""

    folder: Path
    name: str  # the folder as found, for messages and footnotes
    status: str  # running | completed | failed | interrupted
    error: str | None
    method: str
    alpha: float | None  # VICRegL's α, None for every other method
    transform: str
    pretext: str | None  # the pretext task (lorot, dcl), None without one
    dataset: str
    backbone: str | None
    epochs: int | None
    batch_size: int | None
    image_size: int | None
    linear_top1: float | None
    linear_top5: float | None
    knn_top1: float | None
    pretext_accuracy: float | None
    linear_top1_1pct: float | None  # the few-shot probes (1% and 10% of the train labels)
    linear_top1_10pct: float | None
    finetune_top1: float | None
    online_probe_top1: float | None  # the online probe's last test top-1
    pretrain_seconds: float | None
    images_per_second: float | None
    peak_gpu_bytes: float | None
    peak_host_bytes: float | None
    seed: int | None
    test_subset: TestSubset | None
    #: The resolved config flattened to dotted keys (minus IGNORED_CONFIG_KEYS), each value
    #: as canonical text: two runs with equal settings differ in nothing but the seed.
    settings: dict[str, str] = field(default_factory=dict)
    #: True when test_subset was not recorded (the run was never evaluated) and was taken
    #: from evaluated runs of the same setting (see tables.assign_test_subsets).
    test_subset_inferred: bool = False
    schema_version: int = SCHEMA_VERSION
    #: lightly's SGD linear evaluation (eval.probe=sgd), never the default probe's numbers.
    sgd_linear_top1: float | None = None
    sgd_linear_top5: float | None = None
    #: kNN top-1 at other settings: {"knn_top1_k20": 0.61, "knn_top1_k200_t0.07": ...}.
    knn_variants: dict[str, float] = field(default_factory=dict)
    #: results.json ``evaluations``: protocol -> its settings (canonical text per key);
    #: None for a run from before they were recorded (scored by the older protocol).
    evaluations: dict[str, dict[str, str]] | None = None
    #: For a run from before schema 3: its ``probe`` text when it says the linear numbers
    #: came from the SGD probe (they were moved to sgd_linear_*), its ``finetune`` text and
    #: its kNN settings read from the probe text.
    legacy_sgd_probe: str | None = None
    legacy_finetune: str | None = None
    legacy_knn: str | None = None
    #: One-line notes a reader must see beside the numbers (results.json ``caveats``).
    caveats: list[str] = field(default_factory=list)
    pretext_chance: float | None = None  # the pretext head's chance accuracy
    #: When the run finished (s since the epoch; its last write when unrecorded): of two
    #: folders holding one run, the later one is shown.
    finished: float = 0.0
    random_init: RandomInit | None = None  # results.json ``random_init``: untrained scores

    @property
    def evaluated(self) -> bool:
        """Completed with some score of the frozen or fine-tuned backbone."""
        scores = (self.linear_top1, self.knn_top1, self.sgd_linear_top1, self.finetune_top1)
        return self.status == "completed" and any(s is not None for s in scores)


def _text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise RunFolderError(f"results.json has no {key}")
        return None
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        shown = one_line(repr(value), 60)
        raise RunFolderError(f"results.json: {key} is not a plain name: {shown}")
    return value


def _number(
    data: dict[str, Any], key: str, low: float = 0.0, high: float = math.inf
) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RunFolderError(f"results.json: {key} is not a number: {one_line(repr(value), 60)}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        shown = one_line(repr(value), 40)
        raise RunFolderError(f"results.json: {key}={shown} is outside [{low}, {high}]")
    return number


def _integer(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RunFolderError(f"results.json: {key} is not a count: {one_line(repr(value), 60)}")
    return value


def _test_subset(value: Any) -> TestSubset | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RunFolderError("results.json: test_subset is not a mapping")
    sha = value.get("sha256")
    if not isinstance(sha, str) or not _HEX.fullmatch(sha):
        raise RunFolderError("results.json: test_subset.sha256 is not a hexadecimal digest")
    return TestSubset(
        sha256=sha.lower(),
        count=_integer(value, "count"),
        split_size=_integer(value, "split_size"),
    )


def _evaluations(value: Any) -> dict[str, dict[str, str]] | None:
    """results.json ``evaluations``: protocol name -> {setting: canonical text}."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_EVALUATIONS:
        raise RunFolderError(
            f"results.json: evaluations is not a mapping of at most {MAX_EVALUATIONS} protocols"
        )
    budget = _Budget()
    entries: dict[str, dict[str, str]] = {}
    for name, settings in value.items():
        if not isinstance(name, str) or not _ENTRY.fullmatch(name):
            shown = one_line(repr(name), 40)
            raise RunFolderError(f"results.json: evaluations has a protocol named {shown}")
        if not isinstance(settings, dict):
            raise RunFolderError(f"results.json: evaluations.{name} is not a mapping")
        entries[name] = {
            printable(str(key))[:64]: printable(_canonical(setting, budget, 1))
            for key, setting in sorted(settings.items(), key=lambda item: str(item[0]))
        }
    return entries


def _caveats(value: Any) -> list[str]:
    """results.json ``caveats``: each as one line, each once, at most MAX_CAVEATS."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise RunFolderError("results.json: caveats is not a list of text")
    lines = list(dict.fromkeys(line for line in (one_line(c, 300) for c in value) if line))
    if len(lines) > MAX_CAVEATS:
        more = len(lines) - MAX_CAVEATS + 1
        lines = [*lines[: MAX_CAVEATS - 1], f"and {more} more caveats in results.json"]
    return lines


def _knn_variants(data: dict[str, Any]) -> dict[str, float]:
    """kNN top-1 at settings other than the default (knn_top1_k20, knn_top1_k200_t0.07)."""
    names = sorted(
        (k for k in data if isinstance(k, str) and KNN_FIELD.fullmatch(k)), key=knn_field_order
    )
    values = {name: _number(data, name, 0.0, 1.0) for name in names[:MAX_KNN_FIELDS]}
    return {name: value for name, value in values.items() if value is not None}


def knn_field_order(name: str) -> tuple[int, float]:
    """knn_top1_k20 before knn_top1_k200, each k's default temperature first."""
    match = KNN_FIELD.fullmatch(name)
    assert match is not None
    return int(match[1]), -1.0 if match[2] is None else float(match[2])


def _finished(data: dict[str, Any], folder: Path) -> float:
    """When the run finished (``finished_at``, else its last heartbeat, else the time
    results.json was last written), in seconds since the epoch."""
    for key in ("finished_at", "heartbeat_at"):
        value = data.get(key)
        if isinstance(value, str):
            try:
                return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").timestamp()
            except (ValueError, OverflowError):
                pass
    try:
        return os.lstat(folder / RESULTS_FILE).st_mtime
    except OSError:
        return 0.0


def _plain_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return one_line(value, 300) if isinstance(value, str) else None


# --- the config ----------------------------------------------------------------------------


class _Budget:
    """Counts the nodes of a parsed config, so an alias bomb or a cycle stops early."""

    def __init__(self) -> None:
        self.nodes = 0

    def step(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_CONFIG_NODES or depth > MAX_CONFIG_DEPTH:
            raise RunFolderError("config.yaml is too large or too deeply nested")


def _canonical(value: Any, budget: _Budget, depth: int) -> str:
    """A deterministic compact text for a config value (lists and mappings included)."""
    budget.step(depth)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_canonical(v, budget, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted((str(k), _canonical(v, budget, depth + 1)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, float):
        return repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)  # dates, bytes, sets: their text


def flatten_config(config: dict[Any, Any]) -> dict[str, str]:
    """``{"method.temperature": "0.1", ...}``: the config's leaves under dotted keys (lists
    are leaves), values as canonical text; the keys in IGNORED_CONFIG_KEYS are left out, as
    are those the config hash leaves out at their default (keys added after runs existed:
    a run saved before one and a run with its default computed the same)."""
    budget = _Budget()
    flat: dict[str, str] = {}

    def walk(node: dict[Any, Any], prefix: str, depth: int) -> None:
        budget.step(depth)
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{name}.", depth + 1)
            else:
                flat[name] = _canonical(value, budget, depth + 1)

    walk({k: v for k, v in config.items() if str(k) not in IGNORED_CONFIG_KEYS}, "", 0)
    for dotted, default in KEYS_HASHED_ONLY_AWAY_FROM_DEFAULT.items():
        if flat.get(dotted) == _canonical(default, budget, 0):
            del flat[dotted]
    return flat


def read_config(folder: Path) -> dict[Any, Any]:
    """config.yaml parsed as plain data (``yaml.safe_load``); it must be a mapping."""
    data = read_regular_file(folder / CONFIG_FILE, MAX_CONFIG_BYTES)
    try:
        config = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise RunFolderError(f"config.yaml is not valid YAML: {one_line(str(err), 120)}") from None
    if not isinstance(config, dict):
        raise RunFolderError("config.yaml is not a mapping")
    return config


def _config_get(config: dict[Any, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


# --- one run -------------------------------------------------------------------------------


def load_run(folder: Path, name: str) -> Run:
    """Read and check one run folder; RunFolderError (one line) if anything is wrong."""
    raw = read_regular_file(folder / RESULTS_FILE, MAX_RESULTS_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise RunFolderError(f"results.json is not valid JSON: {one_line(str(err), 120)}") from None
    if not isinstance(data, dict):
        raise RunFolderError("results.json is not a JSON object")

    version = data.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise RunFolderError("results.json: schema_version is not an integer")
    if version > READABLE_SCHEMA:
        raise RunFolderError(
            f"results.json has schema_version {version}; this sslbench reads up to "
            f"{READABLE_SCHEMA}"
        )
    status = data.get("status")
    if status not in STATUSES:
        raise RunFolderError(
            f"results.json: status {one_line(repr(status), 40)} is not one of {', '.join(STATUSES)}"
        )
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise RunFolderError("results.json: error is not text")
    if status == "failed":
        error = one_line(error or "", 300) or "no error message recorded"
    else:
        error = None

    config = read_config(folder)
    method = _text(data, "method", required=True)
    assert method is not None
    alpha = None
    if method == "vicregl":
        alpha = _number(data, "alpha", 0.0, 1.0)
        if alpha is None:  # older results.json: α only in the config
            alpha = _number({"alpha": _config_get(config, "method.alpha")}, "alpha", 0.0, 1.0)

    def from_config(key: str, dotted: str) -> Any:
        return data.get(key) if data.get(key) is not None else _config_get(config, dotted)

    backbone = _text({"backbone": from_config("backbone", "backbone.name")}, "backbone")
    pretext = _text({"pretext": from_config("pretext", "pretext.name")}, "pretext")
    pretext = None if pretext in (None, "none") else pretext
    settings = flatten_config(config)
    # The task is the row's own key; without one, a run from before pretext tasks (no
    # pretext keys) and a run with pretext=none have the same settings.
    settings = {
        k: v
        for k, v in settings.items()
        if k != "pretext.name" and not (pretext is None and k.startswith("pretext."))
    }
    sizes = {
        key: _integer({key: from_config(key, key)}, key)
        for key in ("epochs", "batch_size", "image_size")
    }
    linear = (_number(data, "linear_top1", 0.0, 1.0), _number(data, "linear_top5", 0.0, 1.0))
    sgd = (_number(data, "sgd_linear_top1", 0.0, 1.0), _number(data, "sgd_linear_top5", 0.0, 1.0))
    probe = _plain_text(data, "probe") or ""
    caveats = _caveats(data.get("caveats"))
    pretext_chance = _number(data, "pretext_chance", 0.0, 1.0)
    legacy_sgd = legacy_knn = None
    if version < 3:  # before every protocol had its own fields
        if probe.startswith(LEGACY_SGD_PROBE):
            legacy_sgd, sgd, linear = probe, linear, (None, None)
        knn = _LEGACY_KNN.search(probe)
        legacy_knn = None if knn is None else f"k={knn[1]}, T={knn[2]}"
        per_class = _LEGACY_KNN_PER_CLASS.search(probe)
        if per_class and knn:
            caveats.append(
                f"kNN: k={knn[1]} exceeds the ~{per_class[1]} train images per class, so most "
                "votes come from other classes"
            )
        if pretext_chance is None and pretext is not None:
            chance = _CHANCE.search(_plain_text(data, "pretext_task") or "")
            pretext_chance = None if chance is None else float(chance[1])
    return Run(
        folder=folder,
        name=name,
        status=status,
        error=error,
        method=method,
        alpha=alpha,
        transform=_text(data, "transform", required=True) or "",
        pretext=pretext,
        dataset=_text(data, "dataset", required=True) or "",
        backbone=backbone,
        epochs=sizes["epochs"],
        batch_size=sizes["batch_size"],
        image_size=sizes["image_size"],
        linear_top1=linear[0],
        linear_top5=linear[1],
        knn_top1=_number(data, "knn_top1", 0.0, 1.0),
        pretext_accuracy=_number(data, "pretext_accuracy", 0.0, 1.0),
        linear_top1_1pct=_number(data, "linear_top1_1pct", 0.0, 1.0),
        linear_top1_10pct=_number(data, "linear_top1_10pct", 0.0, 1.0),
        finetune_top1=_number(data, "finetune_top1", 0.0, 1.0),
        online_probe_top1=_number(data, "online_probe_top1", 0.0, 1.0),
        pretrain_seconds=_number(data, "pretrain_seconds"),
        images_per_second=_number(data, "images_per_second"),
        peak_gpu_bytes=_number(data, "peak_gpu_memory_bytes"),
        peak_host_bytes=_number(data, "peak_host_memory_bytes"),
        seed=_integer(data, "seed"),
        test_subset=_test_subset(data.get("test_subset")),
        settings=settings,
        schema_version=version,
        sgd_linear_top1=sgd[0],
        sgd_linear_top5=sgd[1],
        knn_variants=_knn_variants(data),
        evaluations=_evaluations(data.get("evaluations")),
        legacy_sgd_probe=legacy_sgd,
        legacy_finetune=_plain_text(data, "finetune") if version < 3 else None,
        legacy_knn=legacy_knn,
        caveats=caveats,
        pretext_chance=pretext_chance,
        finished=_finished(data, folder),
        random_init=read_random_init(data.get("random_init")),
    )


def load_runs(dirs: Sequence[str], warn: Warn) -> tuple[list[Run], int]:
    """Every readable run under ``dirs`` and the number of run folders skipped (each with
    one warning naming its folder)."""
    runs: list[Run] = []
    skipped = 0
    for folder, name in find_run_folders(dirs, warn):
        try:
            runs.append(load_run(folder, name))
        except RunFolderError as err:
            skipped += 1
            warn(f"skipping {name}: {err}")
        except Exception as err:  # a case the checks above missed: still one line, no crash
            skipped += 1
            warn(f"skipping {name}: unreadable ({type(err).__name__}: {one_line(str(err), 120)})")
    return runs, skipped
