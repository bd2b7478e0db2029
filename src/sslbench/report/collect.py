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

import csv
import io
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sslbench.config.compose import NOT_IN_HASH
from sslbench.results import SCHEMA_VERSION

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"

#: Size caps: a results.json is a few kB, a config.yaml a few kB, a metrics.csv a few MB.
MAX_RESULTS_BYTES = 4 * 2**20
MAX_CONFIG_BYTES = 4 * 2**20
MAX_METRICS_BYTES = 256 * 2**20
#: Caps on a config's nesting and size once parsed (YAML aliases can make a small file huge).
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_NODES = 20_000
#: Points kept per loss curve (longer curves are thinned evenly).
MAX_CURVE_POINTS = 5_000

STATUSES = ("running", "completed", "failed", "interrupted", "requeued")

#: Top-level config keys that never change what a run computes: runs that differ only in
#: these (and the seed) are repeats of one setting and are averaged together.
IGNORED_CONFIG_KEYS = frozenset({"seed", *NOT_IN_HASH})

#: Method, pipeline, dataset and backbone names: plain names, starting with a letter or a
#: digit (so no cell of the CSV output can start a spreadsheet formula).
_NAME = re.compile(r"[A-Za-z0-9][\w.+:/@=,()\- ]{0,119}")
_HEX = re.compile(r"[0-9a-fA-F]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

Warn = Callable[[str], None]


class RunFolderError(ValueError):
    """Why a run folder cannot be read; the message is one line."""


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

    @property
    def evaluated(self) -> bool:
        return self.status == "completed" and self.linear_top1 is not None


@dataclass
class LossCurve:
    """A run's training loss from metrics.csv, as (x, loss) points."""

    by_epoch: list[tuple[float, float]]  # (epoch, train_loss_epoch)
    epoch_loss_by_step: list[tuple[float, float]]  # (step, train_loss_epoch)
    by_step: list[tuple[float, float]]  # (step, train_loss_step)
    online_by_epoch: list[tuple[float, float]] = field(default_factory=list)  # online probe top-1


def printable(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes) shown as "?"."""
    return _CONTROL.sub("?", text)


def one_line(text: str, limit: int = 300) -> str:
    """The first line of ``text`` without control characters, at most ``limit`` characters."""
    lines = str(text).strip().splitlines()
    first = _CONTROL.sub(" ", lines[0] if lines else "").strip()
    return first if len(first) <= limit else first[: limit - 1] + "…"


# --- finding run folders -------------------------------------------------------------------


def find_run_folders(dirs: Sequence[str], warn: Warn) -> list[tuple[Path, str]]:
    """Every folder holding results.json under ``dirs`` (recursively, without following
    symbolic links, skipping folders whose name starts with "."), each once, sorted;
    as (path, name to show)."""
    found: dict[tuple[int, int], tuple[Path, str]] = {}
    for given in dirs:
        root = Path(given)
        if not root.exists():
            raise FileNotFoundError(f"no such folder: {given}")
        if not root.is_dir():
            raise ValueError(f"not a folder: {given} (give run folders or folders of them)")

        def on_error(err: OSError) -> None:
            warn(f"cannot list {err.filename}: {one_line(err.strerror or str(err))}")

        for current, subdirs, files in os.walk(root, onerror=on_error, followlinks=False):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            if RESULTS_FILE not in files:
                continue
            try:
                info = os.lstat(current)
            except OSError:
                continue
            found.setdefault((info.st_dev, info.st_ino), (Path(current), printable(current)))
    return sorted(found.values(), key=lambda item: item[1])


# --- reading files -------------------------------------------------------------------------


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file (no link, FIFO, device) under ``limit``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise RunFolderError(f"no {path.name}") from None
    except OSError as err:
        raise RunFolderError(f"cannot read {path.name}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RunFolderError(f"{path.name} is not a regular file (a symbolic link?)")
    if info.st_size > limit:
        raise RunFolderError(f"{path.name} is larger than {limit} bytes")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise RunFolderError(f"cannot read {path.name}: {err.strerror}") from None
    if len(data) > limit:
        raise RunFolderError(f"{path.name} is larger than {limit} bytes")
    return data


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
    are leaves), values as canonical text; the keys in IGNORED_CONFIG_KEYS are left out."""
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
    if version > SCHEMA_VERSION:
        raise RunFolderError(
            f"results.json has schema_version {version}; this sslbench reads up to {SCHEMA_VERSION}"
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
        error = one_line(error or "") or "no error message recorded"
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
        linear_top1=_number(data, "linear_top1", 0.0, 1.0),
        linear_top5=_number(data, "linear_top5", 0.0, 1.0),
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


# --- metrics.csv ---------------------------------------------------------------------------


def _finite(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    points.sort()
    if len(points) <= MAX_CURVE_POINTS:
        return points
    stride = len(points) / MAX_CURVE_POINTS
    return [points[int(i * stride)] for i in range(MAX_CURVE_POINTS)]


def read_loss_curve(folder: Path) -> LossCurve | None:
    """The training loss logged in metrics.csv (Lightning's CSVLogger: sparse rows), or
    None when there is none; RunFolderError when the file is unreadable."""
    try:
        raw = read_regular_file(folder / METRICS_FILE, MAX_METRICS_BYTES)
    except RunFolderError as err:
        if str(err) == f"no {METRICS_FILE}":
            return None
        raise
    by_epoch: list[tuple[float, float]] = []
    epoch_by_step: list[tuple[float, float]] = []
    by_step: list[tuple[float, float]] = []
    online: list[tuple[float, float]] = []
    try:
        rows: Iterable[dict[str, str | None]] = csv.DictReader(
            io.StringIO(raw.decode("utf-8", errors="replace"), newline="")
        )
        for row in rows:
            epoch, step = _finite(row.get("epoch")), _finite(row.get("step"))
            epoch_loss = _finite(row.get("train_loss_epoch"))
            step_loss = _finite(row.get("train_loss_step"))
            if epoch_loss is not None:
                if epoch is not None:
                    by_epoch.append((epoch, epoch_loss))
                if step is not None:
                    epoch_by_step.append((step, epoch_loss))
            if step_loss is not None and step is not None:
                by_step.append((step, step_loss))
            online_top1 = _finite(row.get("online_probe_top1"))
            if online_top1 is not None and epoch is not None:
                online.append((epoch, online_top1))
    except (csv.Error, AttributeError) as err:
        raise RunFolderError(f"metrics.csv is not a CSV log: {one_line(str(err), 120)}") from None
    if not (by_epoch or epoch_by_step or by_step or online):
        return None
    return LossCurve(_thin(by_epoch), _thin(epoch_by_step), _thin(by_step), _thin(online))
