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

pytestmark = [pytest.mark.both_modes, pytest.mark.vm]   # vm: also in scripts/vm-test's cgroup v2 guest

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


def _is_v2(d: Path) -> bool:
    return (d / "cgroup.controllers").exists()


def _controllers(d: Path) -> set[str]:
    try:
        return set((d / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _hierarchy(name: str) -> Path:
    """The delegated directory where controller ``name`` works: its v1 hierarchy, or a v2 one
    offering it (on a pure cgroup v2 host, as in scripts/vm-test's guest)."""
    for d in DELEGATED:
        if not _is_v2(d) and d.parent.name == name:
            return d
    for d in DELEGATED:
        if _is_v2(d) and name in _controllers(d):
            return d
    pytest.skip(f"the {name} controller is not delegated here")


def _memory_delegated() -> bool:
    return any(_is_v2(d) and "memory" in _controllers(d) for d in DELEGATED)


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
    base = _hierarchy("pids")
    before = _ours(base)
    out = rl("run", "--rm", "--network", "none", "busybox", "cat", "/proc/self/cgroup").stdout
    # v1: the pids hierarchy's line; pure v2: the one line "0::PATH"
    line = next(ln for ln in out.splitlines() if (":pids:" in ln if not _is_v2(base) else ln.startswith("0::")))
    assert line.endswith(":/")
    assert _ours(base) <= before  # removed when the container ended


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
        if _is_v2(base):    # v2: crun's mapping of shares to weight, and cpu.max
            assert (cg / "cpu.weight").read_text().strip() == str(1 + ((512 - 2) * 9999) // 262142)
            assert (cg / "cpu.max").read_text().split() == ["50000", "100000"]
        else:
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


@pytest.mark.skipif(_memory_delegated(), reason="the memory controller is delegated here: the limit is enforceable")
def test_unenforceable_limit_is_refused(rl):
    # No memory controller is delegated on our CI hosts (and the v1 memory hierarchy is off limits).
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


@pytest.mark.skipif(not _memory_delegated(), reason="no memory controller is delegated here "
                    "(our CI hosts keep it; scripts/vm-test's cgroup v2 guest delegates it)")
@pytest.mark.skipif(os.environ.get("ROOTLESS_VM_ACCEL") == "tcg",
                    reason="emulated guest (qemu TCG, no usable KVM): reclaim before the OOM kill takes minutes "
                    "there; the guest's own sanity tests prove the OOM kill at the cgroup level")
def test_memory_limit_and_oom_kill(rl):
    # sort holds its whole input, 64 MiB of one line (no newline in /dev/zero), against a 32 MiB
    # limit; no per-byte filter in between: the guest may be emulated, and slow.
    proc = rl("run", "--name", "oomer", "--network", "none", "--memory", "32m", "--memory-swap", "32m", "busybox",
              "sh", "-c", "dd if=/dev/zero bs=1048576 count=64 2>/dev/null | sort > /dev/null",
              timeout=280)
    try:
        assert proc.returncode == 137, proc.stderr
        state = json.loads(rl("inspect", "oomer").stdout)[0]["State"]
        assert state["OOMKilled"] is True and state["ExitCode"] == 137
    finally:
        rl("rm", "oomer")
