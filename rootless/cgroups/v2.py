"""cgroup v2: enabling controllers, writing limits, the core interface (kill, freeze, events), stats."""

from __future__ import annotations

import errno
import os
import time

from . import files
from .errors import SYSTEMD_FIX, CgroupError, LimitUnavailable
from .limits import CPU_PERIOD, Limits


def _p(d: str, name: str) -> str:
    return os.path.join(d, name)


def enable(parent: str, controllers: list[str], required: set[str]) -> None:
    """Write ``+c`` to parent's cgroup.subtree_control for each controller not yet enabled.

    A failure for a controller in ``required`` raises LimitUnavailable naming the file and the
    fix; the others (wanted for stats only) are skipped quietly.
    """
    path = _p(parent, "cgroup.subtree_control")
    enabled = set((files.read(path) or "").split())
    for c in controllers:
        if c in enabled:
            continue
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, f"+{c}".encode())
            finally:
                os.close(fd)
        except OSError as e:
            if c not in required:
                continue
            if e.errno == errno.EBUSY:
                why = (f"{parent} has processes of its own and cgroup v2 enables controllers for children "
                       f"only in cgroups without processes: move them into a leaf cgroup "
                       f"(mkdir {parent}/leaf && echo PID > {parent}/leaf/cgroup.procs)")
            elif e.errno == errno.ENOENT:
                why = f"the {c} controller is not in {parent}/cgroup.controllers (not delegated); {SYSTEMD_FIX}"
            elif e.errno in (errno.EACCES, errno.EPERM):
                why = f"{path} is not writable for you; {SYSTEMD_FIX}"
            else:
                why = e.strerror or str(e)
            raise LimitUnavailable(f"cannot enable the {c} controller (writing '+{c}' to {path}): {why}") from None


def apply(d: str, limits: Limits) -> None:
    """Write the limits into a new cgroup's files (cpuset first: it decides where tasks may run)."""
    writes: list[tuple[str, str, str]] = []
    if limits.cpuset_cpus is not None:
        writes.append(("cpuset.cpus", limits.cpuset_cpus, "--cpuset-cpus"))
    if limits.memory is not None:
        writes.append(("memory.max", str(limits.memory), "--memory"))
        swap = limits.swap_only()
        if limits.memory_swap is not None or os.path.exists(_p(d, "memory.swap.max")):
            writes.append(("memory.swap.max", "max" if swap == -1 else str(swap), "--memory-swap"))
    if limits.cpus is not None:
        writes.append(("cpu.max", f"{limits.cpu_quota()} {CPU_PERIOD}", "--cpus"))
    if limits.cpu_shares is not None:
        writes.append(("cpu.weight", str(limits.cpu_weight()), "--cpu-shares"))
    if limits.pids is not None:
        writes.append(("pids.max", str(limits.pids), "--pids-limit"))
    for name, value, flag in writes:
        path = _p(d, name)
        if not os.path.exists(path):
            extra = (" (the kernel does not account swap: it needs CONFIG_MEMCG_SWAP and, on some "
                     "distributions, the boot option swapaccount=1)") if name == "memory.swap.max" else ""
            raise LimitUnavailable(f"cannot enforce {flag}: {path} does not exist{extra}")
        try:
            files.write(path, value)
        except CgroupError as e:
            raise LimitUnavailable(f"cannot enforce {flag}: {e}") from None


def events(d: str) -> dict[str, str]:
    return files.read_keyed(_p(d, "cgroup.events"))


def populated(d: str) -> bool:
    ev = events(d)
    if "populated" in ev:
        return ev["populated"] == "1"
    return bool((files.read(_p(d, "cgroup.procs")) or "").strip())


def kill(d: str) -> bool:
    """SIGKILL every process of the cgroup and its descendants with cgroup.kill; False if absent (< 5.14)."""
    path = _p(d, "cgroup.kill")
    if not os.path.exists(path):
        return False
    files.write(path, "1")
    return True


def set_frozen(d: str, frozen: bool, timeout: float) -> bool:
    """Freeze or thaw with cgroup.freeze, then wait until cgroup.events says so; False if no cgroup.freeze."""
    path = _p(d, "cgroup.freeze")
    if not os.path.exists(path):
        return False
    files.write(path, "1" if frozen else "0")
    want = "1" if frozen else "0"
    deadline = time.monotonic() + timeout
    while events(d).get("frozen", want) != want:
        if time.monotonic() > deadline:
            raise CgroupError(f"{d} did not become {'frozen' if frozen else 'thawed'} within {timeout:g}s "
                              f"({_p(d, 'cgroup.events')} still says frozen {1 - int(want)})")
        time.sleep(0.01)
    return True


def frozen(d: str) -> bool | None:
    ev = events(d)
    return None if "frozen" not in ev else ev["frozen"] == "1"


def oom_kills(d: str) -> int | None:
    ev = files.read_keyed(_p(d, "memory.events"))
    return int(ev["oom_kill"]) if "oom_kill" in ev else None


def stats(d: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    cpu = files.read_keyed(_p(d, "cpu.stat"))
    if "usage_usec" in cpu:
        out["cpu_usage_usec"] = int(cpu["usage_usec"])
    current = files.read_int(_p(d, "memory.current"))
    if current is not None:
        inactive = files.read_keyed(_p(d, "memory.stat")).get("inactive_file", "0")
        out["memory_usage_bytes"] = max(0, current - int(inactive))   # as 'docker stats' shows it
        out["memory_limit_bytes"] = files.read_int(_p(d, "memory.max"))
        out["oom_kills"] = oom_kills(d)
    pids = files.read_int(_p(d, "pids.current"))
    if pids is not None:
        out["pids_current"] = pids
        out["pids_limit"] = files.read_int(_p(d, "pids.max"))
    return out
