"""Reading layered trees: whiteouts, opaque directories, the merged view.

The one place that knows how a layer directory or an overlay's upper directory says "deleted"
and "replaced".  Both overlays (the kernel's, with ``userxattr``, and fuse-overlay) and our
layer directories use these forms, and every reader here accepts all of them:

* a whiteout: a character device 0/0 named NAME (the kernel overlay's form, and what
  ``to_overlay`` makes of OCI whiteouts), or an empty file ``.wh.NAME`` (OCI's form, which
  fuse-overlay writes where mknod is refused);
* an opaque directory (nothing below it shows through): the xattr ``user.overlay.opaque`` or
  ``trusted.overlay.opaque`` equal to ``y``, or a file ``.wh..wh..opq`` in it.

Xattrs that belong to an overlay and not to the files (``PRIVATE_XATTR_PREFIXES``) are never
part of an image.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterator

WH_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")
PRIVATE_XATTR_PREFIXES = ("user.overlay.", "trusted.overlay.", "user.fuseoverlayfs.", "user.fuse_overlay.",
                          "user.containers.override_stat")


def is_device_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def private_xattr(name: str) -> bool:
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def is_opaque(path: str) -> bool:
    """Whether directory ``path`` hides everything below it in lower layers."""
    for attr in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, attr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return os.path.lexists(os.path.join(path, OPAQUE_MARKER))


@dataclass
class Listing:
    """One directory of a layer, split: its ordinary entries (name, lstat), sorted by name; the
    names its whiteouts hide; whether it is opaque."""
    entries: list[tuple[str, os.stat_result]] = field(default_factory=list)
    whiteouts: list[str] = field(default_factory=list)
    opaque: bool = False


def read_dir(path: str) -> Listing:
    out = Listing(opaque=is_opaque(path))
    hidden = set()
    with os.scandir(path) as it:
        names = sorted(e.name for e in it)
    for name in names:
        if name == OPAQUE_MARKER:
            continue
        if name.startswith(WH_PREFIX):
            hidden.add(name[len(WH_PREFIX):])
            continue
        try:
            st = os.lstat(os.path.join(path, name))
        except FileNotFoundError:
            continue                     # removed meanwhile (a running container)
        if is_device_whiteout(st):
            hidden.add(name)
        else:
            out.entries.append((name, st))
    out.whiteouts = sorted(hidden)
    return out


@dataclass
class TreeWhiteouts:
    """Paths relative to a layer: what its whiteouts hide, the whiteout entries themselves
    (``.wh.NAME`` files, or the devices, which are at the hidden path), its opaque directories
    and their ``.wh..wh..opq`` markers."""
    hidden: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)


def in_tree(layer: str) -> TreeWhiteouts:
    out = TreeWhiteouts()
    for dirpath, dirs, files in os.walk(layer):
        rel = os.path.relpath(dirpath, layer)
        if rel != "." and is_opaque(dirpath):
            out.opaque.append(rel)
        for name in files + dirs:
            entry = os.path.normpath(os.path.join(rel, name))
            if name == OPAQUE_MARKER:
                out.markers.append(entry)
            elif name.startswith(WH_PREFIX):
                out.hidden.append(os.path.normpath(os.path.join(rel, name[len(WH_PREFIX):])))
                out.markers.append(entry)
            else:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if is_device_whiteout(st):
                    out.hidden.append(entry)
    return out


def to_overlay(root: str) -> None:
    """OCI whiteouts under ``root`` into the kernel overlay's format, which both overlays read.

    ``.wh.NAME`` becomes a character device 0/0 named NAME; ``.wh..wh..opq`` in a directory
    becomes its ``user.overlay.opaque=y`` xattr (the ``userxattr`` form: we are not root of
    the host).  Where the kernel refuses the device node (before Linux 5.8 in a user
    namespace) the OCI files are kept: fuse-overlay reads those too.
    """
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(WH_PREFIX):
                continue
            path = os.path.join(dirpath, name)
            try:
                if name == OPAQUE_MARKER:
                    os.setxattr(dirpath, "user.overlay.opaque", b"y")
                else:
                    target = os.path.join(dirpath, name[len(WH_PREFIX):])
                    os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))
                os.unlink(path)
            except OSError:
                pass


def merged(layer_dirs: list[str]) -> Iterator[tuple[str, str]]:
    """(relative path, host path) of every entry of the merged tree of ``layer_dirs`` (bottom
    first), parents first, names sorted: what an overlay of them shows."""
    top = len(layer_dirs) - 1

    def walk(rel: str, floor: int) -> Iterator[tuple[str, str]]:
        entries: dict[str, tuple[str, bool]] = {}  # name -> (path, is a directory) of the top-most entry
        stops: dict[str, int] = {}                 # name -> lowest layer index that still counts for it
        hidden: set[str] = set()
        for i in range(top, floor - 1, -1):
            d = os.path.join(layer_dirs[i], rel) if rel else layer_dirs[i]
            try:
                st = os.lstat(d)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISDIR(st.st_mode):
                break                                # a file here hides the directories below
            listing = read_dir(d)
            for target in listing.whiteouts:
                if target not in entries:
                    hidden.add(target)
                stops.setdefault(target, i + 1)
            for name, est in listing.entries:
                if name in hidden:
                    continue
                is_dir = stat.S_ISDIR(est.st_mode)
                if name in entries:
                    if not is_dir:
                        stops.setdefault(name, i + 1)
                    continue
                entries[name] = (os.path.join(d, name), is_dir)
                if not is_dir:
                    stops.setdefault(name, i + 1)
            if i > floor and rel and listing.opaque:
                break
        for name in sorted(entries):
            path, is_dir = entries[name]
            child = f"{rel}/{name}" if rel else name
            yield child, path
            if is_dir:
                yield from walk(child, max(floor, stops.get(name, floor)))

    yield from walk("", 0)


__all__ = ["WH_PREFIX", "OPAQUE_MARKER", "is_device_whiteout", "private_xattr", "is_opaque", "read_dir",
           "Listing", "in_tree", "TreeWhiteouts", "to_overlay", "merged"]
