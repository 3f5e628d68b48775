"""One container's cgroup: a directory in each hierarchy used; joining, kill, pause, stats, removal."""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass

from . import files, v1, v2
from .errors import CgroupError
from .mounts import cgroup_mounts, mount_of_dir

WAIT = 5.0   # seconds: bound of every wait (freezing, emptying, removal)


@dataclass(frozen=True)
class Part:
    path: str
    version: int
    controllers: frozenset[str] = frozenset()   # v1: the hierarchy's controllers


class ContainerCgroup:
    """The cgroup of one container (possibly of no hierarchy at all: then every call is a no-op,
    except freeze/thaw, which raise)."""

    def __init__(self, parts: list[Part]):
        self.parts = sorted(parts, key=lambda p: p.version, reverse=True)   # v2 first

    @property
    def paths(self) -> tuple[str, ...]:
        """One directory per hierarchy (v2 first); keep them to ``attach`` again later."""
        return tuple(p.path for p in self.parts)

    def _v2(self) -> Part | None:
        return next((p for p in self.parts if p.version == 2), None)

    def _v1(self, controller: str) -> Part | None:
        return next((p for p in self.parts if p.version == 1 and controller in p.controllers), None)

    # --- membership ------------------------------------------------------------------

    def add(self, pid: int) -> None:
        """Move process ``pid`` (and so its future children) into the cgroup in every hierarchy."""
        for p in self.parts:
            path = os.path.join(p.path, "cgroup.procs")
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, str(pid).encode())
                finally:
                    os.close(fd)
            except OSError as e:
                raise CgroupError(f"cannot move process {pid} into {p.path} (writing {path}): "
                                  f"{_add_reason(e, p, pid)}") from None

    def pids(self) -> set[int]:
        """Every process in the cgroup or below it, in any hierarchy."""
        out: set[int] = set()
        for p in self.parts:
            for d, _, _ in os.walk(p.path):
                out.update(int(x) for x in (files.read(os.path.join(d, "cgroup.procs")) or "").split())
        return out

    def populated(self) -> bool:
        v = self._v2()
        if v is not None and os.path.isdir(v.path):
            return v2.populated(v.path)
        return bool(self.pids())

    def apply(self, limits) -> None:
        """Write ``limits`` (cgroups.Limits; None fields are left as they are) into the cgroup
        as it runs (``update``); ``LimitUnavailable`` if a hierarchy lacks the file."""
        import dataclasses
        from .limits import CONTROLLER, FLAGS
        for p in self.parts:
            controllers = p.controllers if p.version == 1 else frozenset(
                (files.read(os.path.join(p.path, "cgroup.controllers")) or "").split())
            mine = dataclasses.replace(limits, **{k: None for k in FLAGS if CONTROLLER[k] not in controllers})
            if p.version == 2:
                v2.apply(p.path, mine)
            else:
                v1.apply(p.path, p.controllers, mine)

    # --- signals and the freezer ---------------------------------------------------------

    def kill(self, timeout: float = WAIT) -> None:
        """SIGKILL every process (cgroup.kill on v2; else freeze, kill each, thaw) and wait until empty."""
        v = self._v2()
        deadline = time.monotonic() + timeout
        if not (v is not None and os.path.isdir(v.path) and v2.kill(v.path)):
            while self.pids() and time.monotonic() < deadline:
                can_freeze = self._freezer() is not None
                if can_freeze:
                    try:
                        self._set_frozen(True, 1.0)
                    except CgroupError:
                        can_freeze = False
                for pid in self.pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if can_freeze:
                    self._set_frozen(False, 1.0)
                time.sleep(0.01)
        while self.populated():
            if time.monotonic() > deadline:
                raise CgroupError(f"processes {sorted(self.pids())} of {self.paths[0]} were sent SIGKILL "
                                  f"but are still there after {timeout:g}s")
            time.sleep(0.01)

    def _freezer(self) -> Part | None:
        v = self._v2()
        if v is not None and os.path.exists(os.path.join(v.path, "cgroup.freeze")):
            return v
        return self._v1("freezer")

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        p = self._freezer()
        if p is None:
            raise CgroupError("cannot pause the container: no freezer is available (neither cgroup.freeze of "
                              "a delegated cgroup v2 hierarchy, kernel >= 5.2, nor a delegated cgroup v1 "
                              "freezer hierarchy)")
        if p.version == 2:
            v2.set_frozen(p.path, frozen, timeout)
        else:
            v1.set_frozen(p.path, frozen, timeout)

    def freeze(self, timeout: float = WAIT) -> None:
        """Pause every process; returns once the kernel reports the cgroup frozen."""
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = WAIT) -> None:
        self._set_frozen(False, timeout)

    def frozen(self) -> bool:
        p = self._freezer()
        if p is None:
            return False
        return bool(v2.frozen(p.path)) if p.version == 2 else v1.frozen(p.path)

    # --- accounting ----------------------------------------------------------------------

    def stats(self) -> dict[str, int | None]:
        """cpu_usage_usec, memory_usage_bytes (without inactive file cache, as 'docker stats'),
        memory_limit_bytes (None: unlimited), pids_current, pids_limit, oom_kills — each
        present only if a hierarchy in use accounts it."""
        out: dict[str, int | None] = {}
        for p in self.parts:
            got = v2.stats(p.path) if p.version == 2 else v1.stats(p.path, p.controllers)
            for k, val in got.items():
                out.setdefault(k, val)
        return out

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this container (memory.events'
        oom_kill on v2, memory.oom_control's oom_kill on v1)."""
        for p in self.parts:
            n = v2.oom_kills(p.path) if p.version == 2 else (
                v1.oom_kills(p.path) if "memory" in p.controllers else None)
            if n:
                return True
        return False

    # --- removal ---------------------------------------------------------------------------

    def remove(self, timeout: float = WAIT) -> None:
        """Kill what is left, then rmdir every directory (deepest first), retrying until ``timeout``."""
        deadline = time.monotonic() + timeout
        if any(os.path.isdir(p.path) for p in self.parts) and self.populated():
            self.kill(max(0.1, deadline - time.monotonic()))
        for p in self.parts:
            if not os.path.isdir(p.path):
                continue
            for d, _, _ in sorted(os.walk(p.path), key=lambda w: -w[0].count("/")):
                while True:
                    try:
                        os.rmdir(d)
                        break
                    except FileNotFoundError:
                        break
                    except OSError as e:
                        if e.errno != errno.EBUSY or time.monotonic() > deadline:
                            left = (files.read(os.path.join(d, "cgroup.procs")) or "").split()
                            raise CgroupError(f"cannot remove cgroup {d}: {e.strerror}"
                                              + (f" (processes {' '.join(left)} are still in it)" if left else "")
                                              ) from None
                        time.sleep(0.02)


def _add_reason(e: OSError, p: Part, pid: int) -> str:
    if e.errno == errno.ESRCH:
        return f"there is no process {pid}"
    if e.errno in (errno.EACCES, errno.EPERM):
        if p.version == 2:
            return ("permission denied: cgroup v2 lets you move a process only if you may write cgroup.procs "
                    "of the nearest common ancestor of its current cgroup and this one; start rootless "
                    "from inside the delegated subtree")
        return "permission denied: on cgroup v1 you may move only your own processes into cgroups you own"
    if e.errno == errno.ENOSPC and "cpuset" in p.controllers:
        return "the cgroup's cpuset.cpus or cpuset.mems is empty"
    if e.errno == errno.EBUSY:
        return ("the cgroup has controllers enabled for children of its own (cgroup v2 no-internal-processes "
                "rule)")
    return e.strerror or str(e)


def attach(paths: list[str] | tuple[str, ...]) -> ContainerCgroup:
    """The ContainerCgroup of directories kept from ``ContainerCgroup.paths`` (e.g. in a container record)."""
    mounts = cgroup_mounts()
    parts = []
    for d in paths:
        m = mount_of_dir(mounts, d)
        if m is None:
            raise CgroupError(f"{d} is not in a mounted cgroup hierarchy")
        parts.append(Part(d, m.version, m.controllers))
    return ContainerCgroup(parts)
