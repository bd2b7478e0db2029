"""sslbench.host: the cores a run may use and torch's threads on them, and the peak memory
of the process and of the children it started."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sslbench import host
from sslbench.config import compose


# -- CPU threads -------------------------------------------------------------------------------
def test_cgroup_quota_is_read_from_v2_then_v1(tmp_path) -> None:
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    missing = (tmp_path / "none", tmp_path / "none")
    v2.write_text("150000 100000\n")
    assert host.cgroup_cpu_limit(v2, missing) == 1.5
    v2.write_text("max 100000\n")
    assert host.cgroup_cpu_limit(v2, missing) is None
    quota.write_text("300000\n")
    period.write_text("100000\n")
    assert host.cgroup_cpu_limit(tmp_path / "absent", (quota, period)) == 3.0
    quota.write_text("-1\n")  # v1: no quota
    assert host.cgroup_cpu_limit(tmp_path / "absent", (quota, period)) is None


def test_available_cores_are_capped_by_the_quota(monkeypatch) -> None:
    affinity = host.available_cores()
    monkeypatch.setattr(host, "cgroup_cpu_limit", lambda: 0.5)
    assert host.available_cores() == 1  # half a core still gets one thread
    monkeypatch.setattr(host, "cgroup_cpu_limit", lambda: 1000.0)
    assert host.available_cores() == affinity


def test_torch_threads_come_from_the_key_then_the_grid_then_the_cores(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        assert host.set_torch_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert host.set_torch_threads(None) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(host, "available_cores", lambda: 1)
        assert host.set_torch_threads(None) == 1
        with pytest.raises(ValueError, match="threads must be a positive"):
            host.set_torch_threads(0)
    finally:
        torch.set_num_threads(before)


def test_spin_waiting_is_limited_unless_the_user_chose(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    host.limit_spin_waiting()
    assert host.os.environ["GOMP_SPINCOUNT"] == "1000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "50")
    host.limit_spin_waiting()
    assert host.os.environ["GOMP_SPINCOUNT"] == "50"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's policy: no spin count added
    host.limit_spin_waiting()
    assert "GOMP_SPINCOUNT" not in host.os.environ


def test_threads_do_not_change_a_runs_folder() -> None:
    assert compose(["threads=1"]).run_dir == compose([]).run_dir


# -- peak memory -------------------------------------------------------------------------------
def test_the_children_peak_counts_only_those_started_since() -> None:
    """bench's workers' peak is the children started during the row: a child that was there
    before (a tracker's service, an earlier loader's workers) is not counted."""
    before = host.child_pids()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        assert child.pid in host.child_pids()
        assert host.children_peak_memory_bytes(since=before) > 1e6  # a Python interpreter
        assert host.children_peak_memory_bytes(since=host.child_pids()) == 0
    finally:
        child.communicate(b"")
