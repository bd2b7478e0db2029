"""The CPU cores a run may use, and torch's threads on them.

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

Pure Python: imported by the command line before torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cores", "cgroup_cpu_limit", "limit_spin_waiting", "set_torch_threads"]

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
