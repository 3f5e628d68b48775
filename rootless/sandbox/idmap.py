"""User and group id maps for a new user namespace.

Two modes (user_namespaces(7)):

* **range**: container id 0 is the caller, container ids 1..N are the caller's
  ``/etc/subuid`` (``/etc/subgid``) ranges, written by the setuid helpers
  ``newuidmap`` / ``newgidmap`` — an unprivileged process may not write more
  than its own id.
* **single**: only container id 0 exists, mapped to the caller.  The parent
  writes the maps itself; for ``gid_map`` the kernel first requires
  ``setgroups`` to be denied (CVE-2014-8989), so ``setgroups(2)`` is refused in
  such a container.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass, field

from .spawn import read_all, spawn, wait


@dataclass(frozen=True)
class IdRange:
    inside: int
    outside: int
    count: int


@dataclass(frozen=True)
class IdMaps:
    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    why_single: str = ""  # empty in range mode; else the reason a single mapping is used
    helpers: tuple[str, str] | None = field(default=None)  # (newuidmap, newgidmap) in range mode

    @property
    def single(self) -> bool:
        return self.helpers is None

    def size(self, kind: str = "uid") -> int:
        """How many ids exist in the container (container ids 0..size-1)."""
        ranges = self.uids if kind == "uid" else self.gids
        return max((r.inside + r.count for r in ranges), default=0)

    def to_host(self, container_id: int, kind: str = "uid") -> int | None:
        for r in self.uids if kind == "uid" else self.gids:
            if r.inside <= container_id < r.inside + r.count:
                return r.outside + container_id - r.inside
        return None


def read_subid_ranges(path: str, user: str, uid: int) -> list[tuple[int, int]]:
    """The (start, count) ranges of ``path`` (subuid(5) format) for ``user`` or ``uid``."""
    ranges = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) != 3 or parts[0] not in (user, str(uid)):
                    continue
                try:
                    start, count = int(parts[1]), int(parts[2])
                except ValueError:
                    continue
                if count > 0:
                    ranges.append((start, count))
    except FileNotFoundError:
        pass
    return ranges


def _stack(own: int, ranges: list[tuple[int, int]]) -> tuple[IdRange, ...]:
    out = [IdRange(0, own, 1)]
    inside = 1
    for start, count in ranges:
        out.append(IdRange(inside, start, count))
        inside += count
    return tuple(out)


def detect(subuid_file: str = "/etc/subuid", subgid_file: str = "/etc/subgid") -> IdMaps:
    """The maps this caller can have: range mode when it has ranges and the helpers exist."""
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    single = IdMaps((IdRange(0, uid, 1),), (IdRange(0, gid, 1),))
    sub_u = read_subid_ranges(subuid_file, user, uid)
    sub_g = read_subid_ranges(subgid_file, user, uid)
    if not sub_u or not sub_g:
        missing = " and ".join(f for f, r in ((subuid_file, sub_u), (subgid_file, sub_g)) if not r)
        return IdMaps(single.uids, single.gids,
                      why_single=f"user {user} has no range in {missing}")
    helpers = shutil.which("newuidmap"), shutil.which("newgidmap")
    if not all(helpers):
        return IdMaps(single.uids, single.gids,
                      why_single="newuidmap/newgidmap are not installed (Debian package uidmap)")
    return IdMaps(_stack(uid, sub_u), _stack(gid, sub_g), helpers=(helpers[0], helpers[1]))


def _lines(ranges: tuple[IdRange, ...]) -> str:
    return "".join(f"{r.inside} {r.outside} {r.count}\n" for r in ranges)


def write(pid: int, maps: IdMaps) -> None:
    """Write ``maps`` for the user namespace of process ``pid`` (called from the parent namespace)."""
    if maps.single:
        _write_file(f"/proc/{pid}/uid_map", _lines(maps.uids))
        _write_file(f"/proc/{pid}/setgroups", "deny")
        _write_file(f"/proc/{pid}/gid_map", _lines(maps.gids))
        return
    assert maps.helpers is not None
    # Both helpers at once: each is a setuid exec of a few milliseconds.
    running = [spawn([helper, str(pid)] + [str(n) for r in ranges for n in (r.inside, r.outside, r.count)])
               for helper, ranges in zip(maps.helpers, (maps.uids, maps.gids))]
    errors = []
    for helper, (child, err_fd) in zip(maps.helpers, running):
        detail = read_all(err_fd)
        status = wait(child)
        if status != 0:
            errors.append(f"{os.path.basename(helper)} {pid}: {detail or f'exit status {status}'}")
    if errors:
        raise OSError("; ".join(errors))


def write_identity(pid: int, kind: str) -> None:
    """Map every id of our user namespace to the same id in the user namespace of ``pid`` (a
    child of ours), one line per line of our own map: the kernel maps each line of a child's
    map within a single line of its parent's.  More than our own id needs CAP_SETUID/CAP_SETGID
    in our namespace (user_namespaces(7)); ``setgroups`` is inherited from ours."""
    with open(f"/proc/self/{kind}_map") as f:
        ours = [line.split() for line in f]
    _write_file(f"/proc/{pid}/{kind}_map", "".join(f"{first} {first} {count}\n" for first, _, count in ours))


def _write_file(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise OSError(e.errno, f"write {path}: {e.strerror}") from None


def keep_id(maps: IdMaps, uid: int, gid: int) -> IdMaps:
    """Podman's ``--userns keep-id``: container uid ``uid`` is the caller (and gid ``gid``), the
    other container ids (root included) come from the sub-id range, in order around it.

    Needs a range: with a single mapping, root would not exist in the container.
    """
    if maps.single:
        raise ValueError(f"--userns keep-id needs a subordinate id range ({maps.why_single})")

    def around(ranges: tuple[IdRange, ...], own: int, keep: int) -> tuple[IdRange, ...]:
        subs = [(r.outside, r.count) for r in ranges if r.outside != own or r.count != 1]
        total = sum(c for _, c in subs)
        if total < keep + 1:
            raise ValueError(f"--userns keep-id needs a range of more than {keep} ids, you have {total}")
        out, inside = [], 0
        for start, count in subs:          # container 0..keep-1, then keep+1.. from the ranges
            while count:
                if inside == keep:
                    out.append(IdRange(keep, own, 1))
                    inside += 1
                    continue
                span = min(count, keep - inside) if inside < keep else count
                out.append(IdRange(inside, start, span))
                inside += span
                start += span
                count -= span
        if inside <= keep:
            out.append(IdRange(keep, own, 1))
        return tuple(out)

    return IdMaps(around(maps.uids, uid, uid), around(maps.gids, gid, gid), maps.why_single, maps.helpers)


def translation(stored: tuple[IdRange, ...], seen: tuple[IdRange, ...]) -> str:
    """fuse-overlay's ``uidmapping``/``gidmapping`` value (``DISK:SHOWN:COUNT...``) for a mount
    served in a user namespace mapped by ``seen`` over files unpacked through ``stored``:
    the id that image id J was stored as (host ``stored(J)``) is seen by the daemon as
    ``seen⁻¹(stored(J))``, and is to be shown as J again."""
    out = []
    for s in stored:                       # image ids s.inside.. are host ids s.outside..
        for v in seen:                     # the daemon sees host ids v.outside.. as v.inside..
            lo = max(s.outside, v.outside)
            hi = min(s.outside + s.count, v.outside + v.count)
            if lo < hi:
                out.append(f"{v.inside + lo - v.outside}:{s.inside + lo - s.outside}:{hi - lo}")
    return ":".join(out)
