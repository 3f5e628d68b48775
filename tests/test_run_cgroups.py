"""Resource limits on real cgroups through ``rootless run`` (the library itself: test_cgroups.py).

Needs the delegated subtree that scripts/test prepares (ROOTLESS_TEST_CGROUPS, with this
process in its ``runner`` leaf); elsewhere only the refusal of unenforceable limits is tested.
The host's v1 memory hierarchy is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.both_modes

DELEGATED = [Path(p) for p in os.environ.get("ROOTLESS_TEST_CGROUPS", "").split(":") if p]


STOPPABLE = 'trap "exit 0" TERM; sleep 30 & wait'   # PID 1 with a handler: SIGTERM ends it


def _stop(p: subprocess.Popen) -> None:
    """End the container the way a user would (SIGTERM, forwarded), so rootless cleans up."""
    p.terminate()
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def _in_runner() -> bool:
    try:
        return "/rootless-test/runner" in Path("/proc/self/cgroup").read_text()
    except OSError:
        return False


needs_delegation = pytest.mark.skipif(
    not (DELEGATED and _in_runner()),
    reason="no delegated cgroup subtree with this process in it (scripts/test prepares one as root)")


def _hierarchy(name: str) -> Path:
    for d in DELEGATED:
        if d.parent.name == name:
            return d
    pytest.skip(f"the {name} hierarchy is not delegated here")


def _ours(base: Path) -> set[Path]:
    return {p for p in base.iterdir() if p.name.startswith("rootless-")}


def _container_cgroup(base: Path, before: set[Path], timeout: float = 20) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _ours(base) - before
        if found:
            return found.pop()
        time.sleep(0.05)
    raise AssertionError(f"no container cgroup appeared in {base}")


@needs_delegation
def test_container_has_its_own_cgroup_seen_as_root(rl):
    before = _ours(_hierarchy("pids"))
    out = rl("run", "--rm", "--network", "none", "busybox", "cat", "/proc/self/cgroup").stdout
    pids_line = next(line for line in out.splitlines() if ":pids:" in line)
    assert pids_line.endswith(":/")
    assert _ours(_hierarchy("pids")) <= before  # removed when the container ended


@needs_delegation
def test_pids_limit_stops_a_fork_bomb(rl):
    _hierarchy("pids")
    script = "for i in $(seq 40); do sleep 2 & done; wait"   # busybox sh exits 2 when a fork fails
    limited = rl("run", "--rm", "--network", "none", "--pids-limit", "10", "busybox", "sh", "-c", script,
                 timeout=60)
    assert limited.returncode == 2 and "can't fork" in limited.stderr
    free = rl("run", "--rm", "--network", "none", "busybox", "sh", "-c", script, timeout=60)
    assert free.returncode == 0, free.stderr


@needs_delegation
def test_cpu_limits_are_written(rl):
    base = _hierarchy("cpu")
    before = _ours(base)
    p = rl.popen("run", "--rm", "--network", "none", "--cpu-shares", "512", "--cpus", "0.5", "busybox",
                 "sh", "-c", STOPPABLE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        cg = _container_cgroup(base, before)
        deadline = time.monotonic() + 10
        while not (cg / "cgroup.procs").read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (cg / "cpu.shares").read_text().strip() == "512"
        assert (cg / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cg / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (cg / "cgroup.procs").read_text().split()  # the container's processes are in it
    finally:
        _stop(p)


@needs_delegation
def test_stats_reads_the_cgroup(rl):
    p = rl.popen("run", "--rm", "--network", "none", "--name", "statme", "busybox", "sh", "-c",
                 "sleep 30 & " + STOPPABLE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            rows = json.loads(rl("stats", "--no-stream", "--format", "json", "statme").stdout or "[]")
            if rows and rows[0]["Pids"] and rows[0]["Pids"] >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rows[0]["Name"] == "statme"
        assert rows[0]["Pids"] >= 3
    finally:
        _stop(p)


def test_unenforceable_limit_is_refused(rl):
    # No memory controller is delegated on these hosts (and the v1 memory hierarchy is off limits).
    before = set(os.listdir(rl.root / "containers"))
    proc = rl("run", "--rm", "--memory", "64m", "busybox", "true")
    assert proc.returncode == 125
    assert "--memory needs the memory controller" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert set(os.listdir(rl.root / "containers")) == before


def test_bad_limit_values(rl):
    for flag, value in (("--pids-limit", "12q"), ("--memory", "lots"), ("--cpus", "-2")):
        proc = rl("run", "--rm", flag, value, "busybox", "true")
        assert proc.returncode == 125, (flag, proc.stderr)
        assert flag in proc.stderr
