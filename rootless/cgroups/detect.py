"""What cgroups this user may use: the hierarchies, where containers go, which controllers work.

Placement rule (without an explicit parent): in each hierarchy, take this process's cgroup
C from /proc/self/cgroup and walk up from C's parent to the top; the first cgroup P that is
yours (the directory and its cgroup.procs writable, and on v2 cgroup.subtree_control too)
holds the containers, as siblings of C (or of the ancestor of C below P).  If only C itself
is yours, containers go below C.  On cgroup v2 a cgroup may hand controllers to its children
(``+memory`` in cgroup.subtree_control) only while it has no processes of its own (the "no
internal processes" rule), so controllers are offered only when P's cgroup.procs is empty or
they are already enabled in P; otherwise a limit is refused with that reason.  That is why
containers are siblings of C rather than children of C: C holds rootless itself.

Inside a Slurm job (``slurm_job()``) there is no walk: containers stay in the job step's own
cgroup, where Slurm's limits apply and its process tracking (proctrack/cgroup reads the step's
own cgroup.procs, not its children's) finds them, so ``scancel`` ends them.  Only an explicit
``--cgroup-parent`` moves them; ``$ROOTLESS_CGROUP_PARENT`` is ignored there (Slurm copies the
submitting shell's environment into the job: it names the login node's cgroups).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field

from .. import slurm
from . import files
from .errors import SYSTEMD_FIX, CgroupError, v1_fix
from .limits import STANDARD, Limits
from .mounts import Mount, cgroup_mounts, mount_for, mount_of_dir, own_cgroups

ENV = "ROOTLESS_CGROUP_PARENT"


@dataclass
class Hierarchy:
    """A hierarchy this user may use: containers are created as children of ``parent``."""
    mount: Mount
    parent: str
    controllers: frozenset[str] = frozenset()   # usable for limits here
    enabled: frozenset[str] = frozenset()       # v2: already in parent's cgroup.subtree_control

    @property
    def version(self) -> int:
        return self.mount.version


@dataclass
class Setup:
    kind: str                                     # "v2", "v1" or "none"
    hierarchies: list[Hierarchy] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)   # controller -> why it cannot be used
    slurm_job: str | None = None                  # containers stay in this Slurm job's cgroup

    @property
    def available_controllers(self) -> frozenset[str]:
        return frozenset().union(*(h.controllers for h in self.hierarchies))

    @property
    def why_not(self) -> str:
        """Why some of the standard controllers (or all cgroups) cannot be used; "" if none missing."""
        parts = [f"{c}: {self.reasons[c]}" for c in STANDARD if c in self.reasons]
        if self.slurm_job:
            parts.insert(0, f"this runs in Slurm job {self.slurm_job}, so containers stay in the job's cgroup "
                         "(Slurm limits and tracks them there) and rootless enforces no limit of its own: ask "
                         "Slurm for resources (srun/sbatch --mem, --cpus-per-task), or give --cgroup-parent")
        elif self.kind == "none":
            parts.insert(0, "no cgroup is delegated to you, so containers share your cgroup and no "
                         "limit can be enforced")
        return "; ".join(parts)

    def hierarchy_for(self, controller: str) -> Hierarchy | None:
        for h in self.hierarchies:
            if controller in h.controllers:
                return h
        return None

    def check(self, limits: Limits) -> None:
        """LimitUnavailable (or UsageError) if a limit cannot be enforced here; creates nothing."""
        from .create import check
        check(self, limits)

    def sweep(self, prefix: str, older_than: float = 60.0) -> None:
        """Remove empty container cgroups named ``prefix...`` left by an engine that was killed.

        Only those older than ``older_than`` seconds: a neighbour's cgroup that exists but does
        not hold its process yet must not be taken.
        """
        import time
        now = time.time()
        for h in self.hierarchies:
            try:
                entries = [e for e in os.scandir(h.parent) if e.name.startswith(prefix) and e.is_dir()]
            except OSError:
                continue
            for e in entries:
                try:
                    if now - e.stat().st_mtime > older_than and not has_processes(e.path):
                        os.rmdir(e.path)
                except OSError:
                    pass  # in use, or gone meanwhile

    def create(self, name: str, limits: Limits):
        """A new cgroup for a container, limits applied; LimitUnavailable before creating anything."""
        from .create import create
        return create(self, name, limits)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def usable(directory: str, version: int) -> str | None:
    """None if this user may create and populate children of ``directory``; else why not."""
    if not os.path.isdir(directory):
        return f"{directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable for you"
    names = ["cgroup.procs"] + (["cgroup.subtree_control"] if version == 2 else [])
    for n in names:
        if not files.writable(os.path.join(directory, n)):
            return f"{os.path.join(directory, n)} is not writable for you"
    return None


def has_processes(directory: str) -> bool:
    return bool((files.read(os.path.join(directory, "cgroup.procs")) or "").strip())


def _place(mount: Mount, cur: str) -> tuple[str | None, str]:
    """The placement rule: (parent directory for containers or None, why none)."""
    top = mount.mountpoint.rstrip("/") or "/"
    d = cur
    while d != top and d.startswith(top + "/"):
        d = os.path.dirname(d)
        if usable(d, mount.version) is None:
            return d, ""
    if usable(cur, mount.version) is None:
        return cur, ""
    return None, (f"your cgroup there ({mount.cgpath_of(cur)}) is not in a subtree delegated to you "
                  f"({usable(cur, mount.version)})")


def slurm_job(cgroup_file: str = "/proc/self/cgroup", environ: dict[str, str] | None = None) -> str | None:
    """The id of the Slurm job this process runs in on its node (rootless.slurm.current), or None."""
    step = slurm.current(cgroup_file, environ)
    return step.job if step else None


def default_parent() -> str | None:
    """The cgroup parent when none is given on the command line: $ROOTLESS_CGROUP_PARENT, but not
    inside a Slurm job (there it is the submitting shell's, copied in by Slurm)."""
    value = os.environ.get(ENV) or None
    return None if value is None or slurm_job() else value


def detect(parent: str | None = None) -> Setup:
    """Find the hierarchies to use: ``parent`` (the engine's --cgroup-parent or $ROOTLESS_CGROUP_PARENT,
    directories separated by ':', one per hierarchy) or, without it, the placement rule above."""
    mounts = [m for m in cgroup_mounts() if not m.named]
    chosen: list[tuple[Mount, str]] = []
    not_delegated: dict[Mount, str] = {}
    if parent:
        for d in (p for p in parent.split(":") if p):
            d = os.path.realpath(d)
            m = mount_of_dir(mounts, d)
            if m is None:
                raise CgroupError(f"cgroup parent {d} is not in a cgroup filesystem: give directories of "
                                  "hierarchies mounted under /sys/fs/cgroup")
            if any(m == c[0] for c in chosen):
                raise CgroupError(f"cgroup parent {d} is in the same hierarchy as another one given "
                                  f"({m.describe()}): give one directory per hierarchy")
            why = usable(d, m.version)
            if why:
                raise CgroupError(f"cannot use cgroup parent {d}: {why}. "
                                  + (SYSTEMD_FIX if m.version == 2 else v1_fix(_first(m), _user())))
            chosen.append((m, d))
        for m in mounts:
            if all(m != c[0] for c in chosen):
                not_delegated[m] = f"no directory of the cgroup parent ({parent}) is in it"
    elif (job := slurm_job()) is not None:
        return _build(mounts, [], {}, job)
    else:
        for ctrls, path in own_cgroups():
            m = mount_for(mounts, ctrls)
            if m is None or (ctrls and m.named):
                continue
            cur = m.dir_for(path)
            if cur is None:
                continue
            d, why = _place(m, cur)
            if d is None:
                not_delegated[m] = why
            else:
                chosen.append((m, d))
    return _build(mounts, chosen, not_delegated)


def _first(m: Mount) -> str:
    return sorted(m.controllers)[0] if m.controllers else "unified"


def _build(mounts: list[Mount], chosen: list[tuple[Mount, str]], not_delegated: dict[Mount, str],
           slurm: str | None = None) -> Setup:
    setup = Setup(kind="none", slurm_job=slurm)
    if slurm is not None:
        for c in STANDARD:
            setup.reasons[c] = (f"containers stay in the cgroup of Slurm job {slurm} (ask Slurm for resources: "
                                "srun/sbatch --mem, --cpus-per-task; or give --cgroup-parent)")
        return setup
    user = _user()
    v2_root = next((m for m in mounts if m.version == 2), None)
    v2_ctrls = set((files.read(os.path.join(v2_root.mountpoint, "cgroup.controllers")) or "").split()) \
        if v2_root else set()
    for m, d in chosen:
        if m.version == 1:
            setup.hierarchies.append(Hierarchy(m, d, frozenset(m.controllers)))
            continue
        offered = set((files.read(os.path.join(d, "cgroup.controllers")) or "").split())
        enabled = set((files.read(os.path.join(d, "cgroup.subtree_control")) or "").split())
        busy = has_processes(d) and d != m.mountpoint
        usable_here = set(enabled)
        for c in offered - enabled:
            if busy:
                setup.reasons[c] = (
                    f"{d} has processes of its own ({d}/cgroup.procs is not empty) and cgroup v2 lets a "
                    f"cgroup enable controllers for its children only while it has none: move them into a "
                    f"leaf (mkdir {d}/leaf && echo PID > {d}/leaf/cgroup.procs), or start rootless from "
                    f"a child cgroup of {d}")
            else:
                usable_here.add(c)
        for c in v2_ctrls - offered:
            setup.reasons.setdefault(c, f"the {c} controller is not delegated to {d}: it is missing from "
                                        f"{d}/cgroup.controllers; {SYSTEMD_FIX}")
        setup.hierarchies.append(Hierarchy(m, d, frozenset(usable_here), frozenset(enabled)))
    setup.hierarchies.sort(key=lambda h: h.version, reverse=True)   # v2 first
    for m, why in not_delegated.items():
        if m.version == 2:
            for c in v2_ctrls:
                setup.reasons.setdefault(c, f"the {m.describe()} is not delegated to you: {why}; {SYSTEMD_FIX}")
        else:
            for c in m.controllers:
                setup.reasons.setdefault(c, f"the {m.describe()} is not delegated to you: {why}; "
                                            f"{v1_fix(c, user)}")
    available = setup.available_controllers
    for c in STANDARD:
        if c in available:
            setup.reasons.pop(c, None)
        elif c not in setup.reasons:
            setup.reasons[c] = (f"this kernel offers no {c} controller (it is neither in a mounted cgroup v1 "
                                "hierarchy nor in cgroup v2's cgroup.controllers)")
    if any(h.version == 1 for h in setup.hierarchies):
        setup.kind = "v1"
    elif setup.hierarchies:
        setup.kind = "v2"
    return setup
