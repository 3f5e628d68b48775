"""Resource limits and process tracking with cgroups, for an unprivileged user.

    setup = detect(parent)                   which hierarchies are delegated, which controllers work
    cg = setup.create(name, Limits.parse(memory="512m", cpus="1.5", ...))
    cg.add(pid)                              before the process unshares its cgroup namespace
    cg.freeze() / cg.thaw() / cg.kill() / cg.stats() / cg.oom_killed()
    cg.remove()                              kills what is left, rmdirs (bounded wait)

A limit that cannot be enforced raises ``LimitUnavailable`` before anything is created,
naming the controller or file and how an administrator delegates it.  See docs/cgroups.md.
"""

from __future__ import annotations

from .cgroup import ContainerCgroup, attach
from .detect import ENV, Hierarchy, Setup, default_parent, detect, slurm_job
from .errors import CgroupError, LimitUnavailable
from .limits import Limits, parse_bytes, parse_cpus, parse_cpuset, shares_to_weight

__all__ = ["ENV", "CgroupError", "ContainerCgroup", "Hierarchy", "LimitUnavailable", "Limits", "Setup",
           "attach", "default_parent", "detect", "parse_bytes", "parse_cpus", "parse_cpuset", "shares_to_weight",
           "slurm_job"]
