"""A full disk, said in one line: the folder, what was needed and what is free.

Pure Python (the report imports it through sslbench.run.results without torch).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from sslbench.errors import NoSpaceError

__all__ = ["NoSpaceError", "no_space", "reserve"]


def no_space(path: Path, needed: int | None = None) -> NoSpaceError:
    """The error for writing ``path`` (``needed`` bytes, when known) on a full disk."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    need = f"needs {needed / 1e9:.2f} GB, " if needed else ""
    return NoSpaceError(
        errno.ENOSPC, f"no space left on {folder} for {path.name} ({need}{free / 1e9:.2f} GB free)"
    )


def reserve(path: Path, nbytes: int) -> None:
    """Give the file ``path`` its ``nbytes`` of disk now, so that a full disk is one clear
    error here rather than a SIGBUS when a memory map of the (sparse) file is written."""
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, nbytes)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise no_space(path, nbytes) from None
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        except AttributeError:  # no posix_fallocate on this platform
            pass
