"""Finding run folders and reading their files without trusting them.

A file is read only if it is a regular file (not a symbolic link, FIFO or device) under a
size cap; the search never follows a symbolic link and skips folders whose name starts
with ".". Every message is one line with its control characters replaced.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from sslbench.errors import CONTROL_CHARACTERS, RunFolderError, one_line

RESULTS_FILE = "results.json"

Warn = Callable[[str], None]


def printable(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes) shown as "?"."""
    return CONTROL_CHARACTERS.sub("?", text)


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
            warn(f"cannot list {err.filename}: {one_line(err.strerror or str(err), 300)}")

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
