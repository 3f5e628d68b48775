"""Creating a container's cgroup: check every limit can be enforced, then mkdir and write them."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Protocol

from . import files, v1, v2
from .cgroup import ContainerCgroup, Part
from .errors import CgroupError, LimitUnavailable
from .limits import CONTROLLER, FLAGS, OPPORTUNISTIC, STANDARD, Limits, parse_cpuset


class Setup(Protocol):
    """What this module needs of ``detect.Setup``, whose ``check`` and ``create`` call it
    (so it does not import ``detect``: no import loop)."""
    hierarchies: list
    reasons: dict[str, str]

    def hierarchy_for(self, controller: str): ...


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,254}$")


def _only(limits: Limits, controllers: frozenset[str]) -> Limits:
    """The limits whose controller is in ``controllers``; the others None."""
    return dataclasses.replace(limits, **{k: None for k in FLAGS if CONTROLLER[k] not in controllers})


def check(setup: Setup, limits: Limits) -> None:
    """LimitUnavailable naming each limit that cannot be enforced, why, and how to fix it."""
    limits.check()
    missing = [f"{', '.join(flags)} needs the {c} controller, but {setup.reasons.get(c, 'it is not available')}"
               for c, flags in limits.controllers().items() if setup.hierarchy_for(c) is None]
    if missing:
        raise LimitUnavailable("cannot enforce the resource limits: " + "; ".join(missing))
    if limits.cpuset_cpus is not None:
        h = setup.hierarchy_for("cpuset")
        name = "cpuset.cpus.effective" if h.version == 2 else "cpuset.effective_cpus"
        text = files.read(os.path.join(h.parent, name))
        if text and text.strip():
            have = parse_cpuset(text.strip())
            extra = parse_cpuset(limits.cpuset_cpus) - have
            if extra:
                raise LimitUnavailable(f"cannot enforce --cpuset-cpus {limits.cpuset_cpus}: CPUs "
                                       f"{','.join(map(str, sorted(extra)))} are not available to "
                                       f"{h.parent} ({os.path.join(h.parent, name)} is {text.strip()})")


def create(setup: Setup, name: str, limits: Limits) -> ContainerCgroup:
    if not _NAME.match(name) or name.startswith("cgroup."):
        raise CgroupError(f"invalid cgroup name '{name}': use letters, digits and _ . @ - only")
    check(setup, limits)
    asked = set(limits.controllers())
    for h in setup.hierarchies:
        if h.version == 2:
            required = asked & h.controllers
            v2.enable(h.parent, [c for c in STANDARD if c in required or (c in OPPORTUNISTIC and c in h.controllers)],
                      required)
    made: list[Part] = []
    try:
        for h in setup.hierarchies:
            d = os.path.join(h.parent, name)
            try:
                os.mkdir(d)
            except FileExistsError:
                raise CgroupError(f"cgroup {d} already exists: a container of that name is running, or one "
                                  f"was not cleaned up (remove it with 'rmdir {d}')") from None
            except OSError as e:
                raise CgroupError(f"cannot create cgroup {d}: {e.strerror}") from None
            part = Part(d, h.version, h.mount.controllers if h.version == 1 else frozenset())
            made.append(part)
            if h.version == 1:
                if "cpuset" in h.mount.controllers:
                    v1.init_cpuset(h.parent, d)
                v1.apply(d, h.mount.controllers, _only(limits, h.mount.controllers))
            else:
                v2.apply(d, _only(limits, h.controllers))
    except BaseException:
        try:
            ContainerCgroup(made).remove()
        except CgroupError:
            pass
        raise
    return ContainerCgroup(made)
