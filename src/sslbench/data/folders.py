"""Folders that appear whole or not at all: a cache build or an archive extraction is written
into a sibling ``NAME.partial-<pid>-<random>`` and renamed into place only when complete.

Leftovers of killed processes (``.partial-*``, ``.old-*``) are removed by the next writer
once their process id is dead (checked on this host only).
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, one process at a time is then the user's care
    fcntl = None  # type: ignore[assignment]

__all__ = ["exclusive", "exit_with_parent", "partial_dir", "publish", "release_inherited_locks",
           "remove_stale"]  # fmt: skip


#: Lock files this process holds (their descriptors): a forked worker closes its copies
#: (:func:`release_inherited_locks`), so that a lock never outlives the process that took it.
_HELD: set[int] = set()


@contextmanager
def exclusive(target: Path, waiting_for: str, progress: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``<target>.lock`` (created if missing, never deleted), so
    that of several processes (the runs of a grid) one builds ``target`` and the others
    wait, then find it built. The holder writes its process id and host into the file; a
    waiter says once whom it waits for (``waiting for <waiting_for> (process P on H)``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.with_name(f"{target.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if progress:
                    print(f"waiting for {waiting_for}{_holder(fd)}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """`` (process P on HOST)`` from a lock file's content, or "" when it says nothing."""
    try:
        pid, host = os.pread(fd, 200, 0).decode().split()[:2]
    except (OSError, ValueError, UnicodeDecodeError):
        return ""
    return f" (process {pid} on {host})" if pid.isdigit() else ""


def release_inherited_locks() -> None:
    """In a forked child: close the lock descriptors inherited from the parent. A flock lock
    lasts while any descriptor of it is open, so a worker that kept them would hold the
    parent's lock after the parent was killed, and every later build would wait forever."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


def exit_with_parent() -> None:
    """In a child process: be sent SIGTERM when the parent dies (Linux), so that workers
    do not outlive a killed build."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the call: nobody would send the signal
        os._exit(1)


def partial_dir(target: Path) -> Path:
    """A fresh sibling name to build ``target`` in (not created)."""
    return target.with_name(f"{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: exists but belongs to someone else
        return True
    return True


def remove_stale(target: Path) -> None:
    """Delete leftovers (``.partial-*``, ``.old-*``) beside ``target`` whose process is gone."""
    for leftover in target.parent.glob(f"{glob.escape(target.name)}.*-*-*"):
        kind, _, rest = leftover.name[len(target.name) + 1 :].partition("-")
        pid = rest.split("-")[0]
        if kind in ("partial", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def publish(partial: Path, target: Path) -> None:
    """Move a finished folder into place, replacing (then deleting) an older one.

    rename() cannot replace a non-empty directory, so an old one is moved aside first.
    Readers that still map the old files keep working: unlinked files stay valid while mapped.
    """
    try:
        os.rename(partial, target)
        return
    except OSError as err:
        if not target.exists() or err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
    old = target.with_name(f"{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(target, old)
    os.rename(partial, target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
