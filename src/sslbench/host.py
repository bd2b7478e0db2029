"""The host a run shares: the CPU cores it may use and torch's threads on them, the free
disk it writes to, and the peak memory it used.

## Cores

Torch's default is one thread per core of the machine, each spinning while it waits for
work. On a machine that another run shares (a grid of several jobs, a second user, a
container limited to fewer cores than it sees) that default oversubscribes the cores and
the spinning threads take turns with the ones doing work: one sslbench demo beside another
on 2 cores took 13x as long as alone (docs/benchmarks.md). Two things make a run degrade
gracefully instead:

- the thread count defaults to the cores this process may actually use (its CPU affinity,
  and its cgroup's CPU quota in a container), and the ``threads`` key overrides it;
- OpenMP threads spin only briefly before they sleep when they run out of work
  (``GOMP_SPINCOUNT=1000``; libgomp's default spins 300,000 times, ``ACTIVE`` 30 billion).
  Measured on 2 cores (docs/benchmarks.md, "Runs sharing the cores"): alone, 3% slower
  than spinning and 18% faster than sleeping at once (``OMP_WAIT_POLICY=PASSIVE``); two
  runs together each take 1.95x the time of one alone, against 14.8x when threads spin.
  This must be set before torch loads its OpenMP runtime, so the command line sets it
  (:func:`limit_spin_waiting`) before importing torch; ``GOMP_SPINCOUNT`` or
  ``OMP_WAIT_POLICY`` set by the user is kept.

## Disk
A full disk is said in one line: the folder, what was needed and what is free
(:func:`no_space`); a memory-mapped file gets its disk when it is made (:func:`reserve`).

## Peak memory
The peak resident set size of this process (and of its DataLoader workers), which
results.json and ``sslbench bench`` report.

Pure Python: imported by the command line before torch, and by the report.
"""

from __future__ import annotations

import errno
import math
import os
import resource
import shutil
from pathlib import Path

from sslbench.errors import NoSpaceError

__all__ = [
    "available_cores",
    "cgroup_cpu_limit",
    "child_pids",
    "children_peak_memory_bytes",
    "limit_spin_waiting",
    "no_space",
    "peak_memory_bytes",
    "reserve",
    "reset_peak_memory",
    "set_torch_threads",
]

#: Spins of an idle OpenMP thread before it sleeps (libgomp's GOMP_SPINCOUNT).
SPIN_COUNT = 1000

#: cgroup files giving a container's CPU quota: v2's ``cpu.max`` ("QUOTA PERIOD" or
#: "max PERIOD"), v1's quota and period in microseconds.
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> float | None:
    """The CPU quota of this process's cgroup in cores (1.5 = one and a half), or None
    where there is no quota (or no cgroup file to read)."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = (int(path.read_text()) for path in v1)
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by its cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def limit_spin_waiting() -> None:
    """Have idle OpenMP threads spin briefly, then sleep, unless the user chose how they
    wait (``GOMP_SPINCOUNT``, ``OMP_WAIT_POLICY``); effective only before torch is imported."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)


def set_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op threads: ``threads``, or ``OMP_NUM_THREADS`` when set (a grid
    gives each of its jobs its share that way), or the cores available. Returns the count."""
    import torch

    if threads is None:
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(from_env) if from_env.isdigit() and int(from_env) > 0 else available_cores()
    if threads < 1:
        raise ValueError(f"threads must be a positive number of CPU threads, got {threads}")
    torch.set_num_threads(threads)
    return threads


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


def _status_kib(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak_memory() -> None:
    """Start this process's peak resident set size (VmHWM) afresh (Linux; elsewhere the
    peak stays the process's lifetime peak)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes() -> int:
    """This process's peak resident set size since the last :func:`reset_peak_memory` (its
    lifetime's when never reset), in bytes; Linux's VmHWM, else ``ru_maxrss`` (KiB)."""
    kib = _status_kib("self", "VmHWM")
    if kib:
        return kib * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def child_pids() -> set[int]:
    """The process ids of this process's children (Linux's /proc; elsewhere none)."""
    me, children = str(os.getpid()), set()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if parent == me:
            children.add(int(entry.name))
    return children


def children_peak_memory_bytes(since: set[int] | None = None) -> int:
    """Summed peak resident set size of this process's children (DataLoader workers): those
    started since :func:`child_pids` returned ``since`` (any other child of the process, a
    tracker's service or an earlier loader's workers, is not counted), else all of them."""
    return sum(_status_kib(pid, "VmHWM") * 1024 for pid in child_pids() - (since or set()))
