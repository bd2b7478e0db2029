"""The run folder's files: ``results.json`` (the run contract) and atomic writes.

Every file a run leaves is written to a temporary name beside it and renamed into place,
so a crash or a kill never leaves a half-written ``results.json`` or ``config.yaml``.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sslbench.host import no_space
from sslbench.pretext import pretext_name

#: Bump when a field of results.json changes meaning or is removed.
# 2: the test subset no longer depends on the run's seed (test_subset); 3: each evaluation
# protocol in fields of its own (sgd_linear_top1, knn_top1_k20, ...) with its settings in
# evaluations; linear_top1 is always the L-BFGS probe
SCHEMA_VERSION = 3

#: How results.json writes its times (started_at, finished_at, heartbeat_at).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def now() -> str:
    """This moment in :data:`TIME_FORMAT`."""
    return time.strftime(TIME_FORMAT)


#: The fields every results.json has (DESIGN.md §4); absent values are null.
CONTRACT_FIELDS: tuple[str, ...] = (
    "schema_version", "status", "error", "method", "transform", "dataset", "backbone",
    "epochs", "batch_size", "image_size", "linear_top1", "linear_top5", "knn_top1", "probe",
    "pretrain_seconds", "images_per_second", "peak_gpu_memory_bytes",
    "peak_host_memory_bytes", "seed", "versions", "git_sha", "test_subset",
)  # fmt: skip


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise no_space(path, len(data)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode())


def fsync_folder(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (its directory entry reaches the disk)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename still happened
    finally:
        os.close(fd)


def write_results(run_dir: str | Path, results: dict[str, Any]) -> None:
    """Write ``results.json`` atomically, every contract field present."""
    full = {name: results.get(name) for name in CONTRACT_FIELDS}
    full.update(results)
    atomic_write_text(Path(run_dir) / "results.json", json.dumps(full, indent=2) + "\n")


def gather_caveats(results: dict[str, Any]) -> list[str]:
    """Everything a reader must see beside a run's numbers, from the run's settings
    (``run_caveats``), its pretext head (``pretext_caveats``) and each evaluation protocol
    (``evaluations[...]["caveats"]``): results.json's ``caveats``, which the
    console and the report show."""
    lists = [results.get(key) for key in ("run_caveats", "pretext_caveats")]
    evaluations = results.get("evaluations")
    if isinstance(evaluations, dict):  # each protocol's, kept with its settings
        lists += [entry.get("caveats") for entry in evaluations.values() if isinstance(entry, dict)]
    gathered: list[str] = []
    for values in lists:
        if isinstance(values, list):
            gathered += [v for v in values if isinstance(v, str) and v not in gathered]
    return gathered


def read_results(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "results.json").read_text())


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """The fields of results.json that say which run it is (from its config alone)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "method": cfg.method.name,
        "alpha": cfg.method.get("alpha"),
        "transform": cfg.transform.get("name"),
        "pretext": pretext_name(cfg.get("pretext")),
        "dataset": cfg.dataset.name,
        "backbone": cfg.backbone.name,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "max_train": cfg.dataset.max_train,
        "max_test": cfg.dataset.max_test,
        "seed": cfg.seed,
    }


def save_config(cfg: DictConfig, run_dir: str | Path) -> None:
    """Write the run's fully resolved ``config.yaml``, from which the run repeats."""
    path = Path(run_dir) / "config.yaml"
    header = (
        "# The fully resolved configuration of this run. Repeat it with:\n"
        f"#   sslbench pretrain --config {path}\n"
    )
    atomic_write_text(path, header + OmegaConf.to_yaml(cfg, resolve=True))


def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    import lightly
    import pytorch_lightning
    import timm
    import torch

    import sslbench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightly": lightly.__version__,
        "timm": timm.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "sslbench": sslbench.__version__,
    }


def git_sha() -> str | None:
    """Commit of the sslbench source tree, with ``-dirty`` if it has local changes;
    null when sslbench is not run from a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "."],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha
