"""Ownership kept in an xattr, for mounts without a subuid range.

With ``-o xattr_permissions=2`` the owner, permission bits and (for device
nodes stored as empty regular files) the file type are read from, and
written to, the ``user.fuseoverlayfs.override_stat`` xattr of the backing
file (``user.containers.override_stat`` is read too).  Value format, ASCII:

    UID:GID:MODE[:TYPE]

UID and GID decimal, MODE the permission bits in octal (e.g. ``0755``, may
include 04000/02000/01000), TYPE one of ``file``, ``dir``, ``symlink``,
``pipe``, ``socket``, ``char-MAJOR-MINOR``, ``block-MAJOR-MINOR``; when TYPE
is absent the backing file's type is used.  Malformed values are ignored.
"""
from __future__ import annotations

import os
import stat as stat_mod
from typing import NamedTuple

WRITE_KEY = b"user.fuseoverlayfs.override_stat"
READ_KEYS = (WRITE_KEY, b"user.containers.override_stat")

_TYPES = {"file": stat_mod.S_IFREG, "dir": stat_mod.S_IFDIR, "symlink": stat_mod.S_IFLNK,
          "pipe": stat_mod.S_IFIFO, "socket": stat_mod.S_IFSOCK}
_NAMES = {v: k for k, v in _TYPES.items()}


class Override(NamedTuple):
    uid: int
    gid: int
    mode: int          # full st_mode (type | permission bits)
    rdev: int


def parse(value: bytes, backing_mode: int, backing_rdev: int) -> Override | None:
    try:
        parts = value.decode("ascii").split(":")
        uid, gid, perm = int(parts[0]), int(parts[1]), int(parts[2], 8) & 0o7777
        ftype, rdev = stat_mod.S_IFMT(backing_mode), backing_rdev
        if len(parts) > 3:
            t = parts[3]
            if t in _TYPES:
                ftype = _TYPES[t]
            else:
                kind, major, minor = t.split("-")
                ftype = {"char": stat_mod.S_IFCHR, "block": stat_mod.S_IFBLK}[kind]
                rdev = os.makedev(int(major), int(minor))
        return Override(uid, gid, ftype | perm, rdev)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError):
        return None


def format_value(uid: int, gid: int, mode: int, rdev: int = 0) -> bytes:
    ftype = stat_mod.S_IFMT(mode)
    if ftype in (stat_mod.S_IFCHR, stat_mod.S_IFBLK):
        kind = "char" if ftype == stat_mod.S_IFCHR else "block"
        t = f"{kind}-{os.major(rdev)}-{os.minor(rdev)}"
    else:
        t = _NAMES.get(ftype, "file")
    return f"{uid}:{gid}:{mode & 0o7777:04o}:{t}".encode("ascii")


def read(path: bytes | int, st: os.stat_result) -> Override | None:
    """The override of ``path`` (not following symlinks; or an open fd), or None."""
    for key in READ_KEYS:
        try:
            value = os.getxattr(path, key, follow_symlinks=isinstance(path, int))
        except OSError:
            continue
        ov = parse(value, st.st_mode, st.st_rdev)
        if ov is not None:
            return ov
    return None


def write(path: bytes | int, ov: Override) -> None:
    os.setxattr(path, WRITE_KEY, format_value(ov.uid, ov.gid, ov.mode, ov.rdev),
                follow_symlinks=isinstance(path, int))
