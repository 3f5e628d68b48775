"""cgroup v1: per-controller hierarchies; limits, the freezer, OOM counters and stats."""

from __future__ import annotations

import os
import time

from . import files
from .errors import CgroupError, LimitUnavailable
from .limits import CPU_PERIOD, Limits


def _p(d: str, name: str) -> str:
    return os.path.join(d, name)


def init_cpuset(parent: str, d: str) -> None:
    """A new v1 cpuset cgroup has no CPUs and no memory nodes: copy its parent's, or no task may join."""
    for name, eff in (("cpuset.mems", "cpuset.effective_mems"), ("cpuset.cpus", "cpuset.effective_cpus")):
        value = files.read(_p(parent, eff)) or files.read(_p(parent, name)) or ""
        if not value.strip():
            raise CgroupError(f"{_p(parent, name)} is empty: an administrator must fill it (e.g. copy the "
                              f"parent's values) before containers can use this cpuset subtree")
        files.write(_p(d, name), value.strip())


def apply(d: str, controllers: frozenset[str], limits: Limits) -> None:
    writes: list[tuple[str, str, str]] = []
    if "cpuset" in controllers and limits.cpuset_cpus is not None:
        writes.append(("cpuset.cpus", limits.cpuset_cpus, "--cpuset-cpus"))
    if "memory" in controllers and limits.memory is not None:
        writes.append(("memory.limit_in_bytes", str(limits.memory), "--memory"))
        memsw = _p(d, "memory.memsw.limit_in_bytes")
        if limits.memory_swap is not None or os.path.exists(memsw):
            swap = limits.swap_only()
            writes.append(("memory.memsw.limit_in_bytes",
                           "-1" if swap == -1 else str(limits.memory + swap), "--memory-swap"))
    if "cpu" in controllers:
        if limits.cpus is not None:
            writes.append(("cpu.cfs_period_us", str(CPU_PERIOD), "--cpus"))
            writes.append(("cpu.cfs_quota_us", str(limits.cpu_quota()), "--cpus"))
        if limits.cpu_shares is not None:
            writes.append(("cpu.shares", str(limits.cpu_shares), "--cpu-shares"))
    if "pids" in controllers and limits.pids is not None:
        writes.append(("pids.max", str(limits.pids), "--pids-limit"))
    for name, value, flag in writes:
        path = _p(d, name)
        if not os.path.exists(path):
            extra = (" (the kernel does not account swap: boot it with swapaccount=1)"
                     if "memsw" in name else "")
            raise LimitUnavailable(f"cannot enforce {flag}: {path} does not exist{extra}")
        try:
            files.write(path, value)
        except CgroupError as e:
            raise LimitUnavailable(f"cannot enforce {flag}: {e}") from None


def set_frozen(d: str, frozen: bool, timeout: float) -> None:
    want = "FROZEN" if frozen else "THAWED"
    files.write(_p(d, "freezer.state"), want)
    deadline = time.monotonic() + timeout
    while (files.read(_p(d, "freezer.state")) or want).strip() != want:
        if time.monotonic() > deadline:
            raise CgroupError(f"{d} did not become {want} within {timeout:g}s "
                              f"({_p(d, 'freezer.state')} says {files.read(_p(d, 'freezer.state'))})")
        files.write(_p(d, "freezer.state"), want)
        time.sleep(0.01)


def frozen(d: str) -> bool:
    return (files.read(_p(d, "freezer.state")) or "").strip() == "FROZEN"


def oom_kills(d: str) -> int | None:
    """OOM kills in this memory cgroup: memory.oom_control's oom_kill (kernel >= 4.13).

    Older kernels lack that counter: then 1 if the limit was hit (memory.failcnt) and the
    cgroup was or is under OOM, else 0 — a heuristic.
    """
    ctl = files.read_keyed(_p(d, "memory.oom_control"))
    if "oom_kill" in ctl:
        return int(ctl["oom_kill"])
    if not ctl:
        return None
    failcnt = files.read_int(_p(d, "memory.failcnt")) or 0
    return 1 if failcnt and ctl.get("under_oom") == "1" else 0


def stats(d: str, controllers: frozenset[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    if "cpuacct" in controllers:
        ns = files.read_int(_p(d, "cpuacct.usage"))
        if ns is not None:
            out["cpu_usage_usec"] = ns // 1000
    if "memory" in controllers:
        usage = files.read_int(_p(d, "memory.usage_in_bytes"))
        if usage is not None:
            inactive = files.read_keyed(_p(d, "memory.stat")).get("total_inactive_file", "0")
            out["memory_usage_bytes"] = max(0, usage - int(inactive))
            limit = files.read_int(_p(d, "memory.limit_in_bytes"))
            out["memory_limit_bytes"] = None if limit is None or limit >= (1 << 62) else limit
            out["oom_kills"] = oom_kills(d)
    if "pids" in controllers:
        out["pids_current"] = files.read_int(_p(d, "pids.current"))
        out["pids_limit"] = files.read_int(_p(d, "pids.max"))
    return out
