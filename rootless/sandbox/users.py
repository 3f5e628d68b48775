"""Resolving ``--user`` against the container's own /etc/passwd and /etc/group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve(spec: str, passwd: str = "/etc/passwd", group: str = "/etc/group") -> Identity:
    """Docker's ``-u`` forms: ``NAME``, ``UID``, ``NAME:GROUP``, ``UID:GID`` (and mixes).

    Raises ``LookupError`` with Docker's wording when a name is not in the files.
    """
    user, _, grp = (spec or "0").partition(":")
    users = [e for e in _entries(passwd) if len(e) >= 7]
    entry = None
    if user.isdigit():
        uid = int(user)
        entry = next((e for e in users if e[2] == user), None)
    else:
        entry = next((e for e in users if e[0] == user), None)
        if entry is None:
            raise LookupError(f"unable to find user {user}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    groups_file = [e for e in _entries(group) if len(e) >= 4]
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            match = next((e for e in groups_file if e[0] == grp), None)
            if match is None:
                raise LookupError(f"unable to find group {grp}: no matching entries in group file")
            gid = int(match[2])
    name = entry[0] if entry else None
    extra = tuple(sorted({int(e[2]) for e in groups_file
                          if name and name in e[3].split(",") and e[2].isdigit()} - {gid}))
    home = entry[5] if entry and entry[5] else "/"
    return Identity(uid, gid, (gid,) + extra, home)


def add_groups(ident: Identity, extra: tuple[str, ...], group: str = "/etc/group") -> Identity:
    """``ident`` with more supplementary groups (Docker's --group-add): gids, or names looked
    up in the container's /etc/group."""
    groups_file = [e for e in _entries(group) if len(e) >= 3]
    gids = list(ident.groups)
    for g in extra:
        if g.isdigit():
            gid = int(g)
        else:
            match = next((e for e in groups_file if e[0] == g and e[2].isdigit()), None)
            if match is None:
                raise LookupError(f"unable to find group {g}: no matching entries in group file")
            gid = int(match[2])
        if gid not in gids:
            gids.append(gid)
    return Identity(ident.uid, ident.gid, tuple(gids), ident.home)
