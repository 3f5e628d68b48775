"""Where the cgroup hierarchies are mounted, and where this process sits in each of them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

V1_CONTROLLERS = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                            "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"})


@dataclass(frozen=True)
class Mount:
    """One cgroup hierarchy: its mount point, the part of the hierarchy it shows, its version.

    ``controllers`` are a v1 hierarchy's controllers (and ``name=...`` for named ones);
    empty for v2, whose controllers are listed per cgroup in ``cgroup.controllers``.
    """
    mountpoint: str
    root: str
    version: int
    controllers: frozenset[str]

    @property
    def named(self) -> bool:
        return self.version == 1 and not (self.controllers & V1_CONTROLLERS)

    def describe(self) -> str:
        if self.version == 2:
            return f"cgroup v2 hierarchy at {self.mountpoint}"
        return f"cgroup v1 {','.join(sorted(self.controllers))} hierarchy at {self.mountpoint}"

    def dir_for(self, cgpath: str) -> str | None:
        """The directory of cgroup ``cgpath`` (as in /proc/PID/cgroup), or None if outside this mount."""
        root = self.root.rstrip("/")
        if root and cgpath != root and not cgpath.startswith(root + "/"):
            return None
        rel = cgpath[len(root):].strip("/")
        return os.path.join(self.mountpoint, rel) if rel else self.mountpoint

    def cgpath_of(self, directory: str) -> str:
        rel = os.path.relpath(directory, self.mountpoint)
        rel = "" if rel == "." else rel
        return "/" + "/".join(p for p in (self.root.strip("/"), rel) if p)


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """Every cgroup hierarchy mounted in this mount namespace, once each (its first mount)."""
    out: list[Mount] = []
    seen: set[str] = set()
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        devno = fields[2]
        if devno in seen:
            continue
        seen.add(devno)
        if tail[0] == "cgroup2":
            out.append(Mount(_unescape(fields[4]), _unescape(fields[3]), 2, frozenset()))
        else:
            opts = tail[2].split(",")
            ctrls = frozenset(o for o in opts if o in V1_CONTROLLERS or o.startswith("name="))
            out.append(Mount(_unescape(fields[4]), _unescape(fields[3]), 1, ctrls))
    return out


def own_cgroups(path: str = "/proc/self/cgroup") -> list[tuple[frozenset[str], str]]:
    """This process's cgroups: (controllers, path) per hierarchy; empty controllers for v2."""
    out = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ctrls = frozenset(c for c in parts[1].split(",") if c)
        out.append((ctrls, parts[2]))
    return out


def mount_for(mounts: list[Mount], controllers: frozenset[str]) -> Mount | None:
    """The mount of the hierarchy a /proc/self/cgroup line names (empty controllers: v2)."""
    for m in mounts:
        if (not controllers and m.version == 2) or (controllers and m.version == 1 and m.controllers == controllers):
            return m
    return None


def mount_of_dir(mounts: list[Mount], directory: str) -> Mount | None:
    """The cgroup mount a directory is in (the longest mount point that contains it)."""
    directory = os.path.realpath(directory)
    best = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if directory == mp or directory.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best.mountpoint):
                best = m
    return best
