"""The layer stack: where a name lives, whiteouts and opaque directories.

Layer 0 is the upper directory (absent for a read-only mount), layers 1..n
are the lowerdirs, top first.  Every object keeps the same relative path in
every layer (no redirects).  Functions here only read the backing trees,
except :meth:`Layers.make_whiteout`, :meth:`Layers.clear_whiteout` and
:meth:`Layers.set_opaque`, which write to the upper layer.  OSError from the
backing filesystem propagates to the caller, which turns it into a FUSE error.

Formats read (all layers): a character device 0/0 named NAME; an OCI file
``.wh.NAME``; an opaque directory marked by ``.wh..wh..opq`` or an
``{trusted,user}.overlay.opaque`` xattr equal to ``y``.  Whiteouts written:
a character device 0/0 when mknod allows it, else an empty ``.wh.NAME`` file.
"""
from __future__ import annotations

import errno
import os
import stat as stat_mod
from typing import NamedTuple

WH_PREFIX = b".wh."
NAME_MAX = 255            # of every filesystem an upper or lower layer can live on
OPAQUE_MARKER = b".wh..wh..opq"
OPAQUE_XATTRS = (b"user.overlay.opaque", b"trusted.overlay.opaque")

# Names never shown to or accepted from processes using the mount.
HIDDEN_XATTR_PREFIXES = (b"user.overlay.", b"trusted.overlay.", b"user.fuseoverlayfs.",
                         b"user.fuse_overlay.", b"user.containers.override_stat")
# Names never copied from a lower object to its upper copy.
NOCOPY_XATTR_PREFIXES = (b"user.overlay.", b"trusted.overlay.", b"user.fuse_overlay.")


def wh_file_name(name: bytes) -> bytes | None:
    """The OCI whiteout file name for ``name``, or None when it would be too long to exist
    (names of 252-255 bytes: only the character-device form can hide those)."""
    return WH_PREFIX + name if len(name) + len(WH_PREFIX) <= NAME_MAX else None


def is_whiteout(st: os.stat_result) -> bool:
    return stat_mod.S_ISCHR(st.st_mode) and st.st_rdev == 0


def hidden_xattr(name: bytes) -> bool:
    return name.startswith(HIDDEN_XATTR_PREFIXES)


# Backing paths handed to system calls stay shorter than this, so that a name (and a
# ``.wh.`` prefix) can still be appended without reaching PATH_MAX (4096 with its NUL).
PATH_ROOM = 4096 - 1 - 1 - NAME_MAX - len(WH_PREFIX) - 16
_PROC_FD = b"/proc/self/fd/%d"


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _exists(path: bytes) -> bool:
    try:
        os.lstat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False


class Found(NamedTuple):
    """Result of a probe: topmost layer, its stat, and for a directory the
    layers whose same-named directories are merged into it (top first)."""
    layer: int
    st: os.stat_result
    dirlayers: tuple[int, ...]


class Layers:
    """Root paths of the layers and the read-side overlay rules."""

    def __init__(self, upper: bytes | None, lowers: list[bytes]) -> None:
        self.roots: list[bytes | None] = [upper] + list(lowers)
        self.upper = upper
        self.whiteout_as_file = False
        self.held: list[int] = []      # fds behind the long paths :meth:`real` returned
        self.dirfds: dict[bytes, int] = {}   # path opened -> its fd in ``held``, for reuse

    def real(self, layer: int, path: bytes) -> bytes:
        """The backing path of ``path`` (``b''`` or ``b'/a/b'``) in ``layer``: root + path,
        or, when that would be too long for a system call (deep trees reached through the
        mount with relative paths), ``/proc/self/fd/N/rest`` where N is an ``O_PATH`` fd of a
        directory on the way (opened here, closed by :meth:`release` once no request is
        running).  Raises OSError if a directory on the way cannot be opened."""
        root = self.roots[layer]
        assert root is not None
        if len(root) + len(path) < PATH_ROOM:
            return root + path
        return self._long(root, path)

    def _long(self, base: bytes, rest: bytes) -> bytes:
        while len(base) + len(rest) >= PATH_ROOM:
            cut = rest.rfind(b"/", 0, PATH_ROOM - len(base))
            if cut <= 0:
                raise OSError(errno.ENAMETOOLONG, "backing path component too long", base + rest[:200])
            prefix = base + rest[:cut]
            fd = self.dirfds.get(prefix)
            if fd is None:
                fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self.held.append(fd)
                self.dirfds[prefix] = fd
            base, rest = _PROC_FD % fd, rest[cut:]
        return base + rest

    def forget_dirfds(self) -> None:
        """Stop reusing the directory fds opened so far (they stay open until
        :meth:`release`): called whenever a request that may move or remove
        directories starts or ends, so an fd is reused only while the path it was opened
        by still leads to it."""
        self.dirfds.clear()

    def release(self) -> None:
        """Close the directory fds :meth:`real` opened for long paths."""
        held, self.held = self.held, []
        self.dirfds.clear()
        for fd in held:
            os.close(fd)

    def is_opaque(self, layer: int, path: bytes) -> bool:
        try:
            real = self.real(layer, path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        for name in OPAQUE_XATTRS:
            try:
                if os.getxattr(real, name, follow_symlinks=False) == b"y":
                    return True
            except OSError:
                pass
        return _exists(real + b"/" + OPAQUE_MARKER)

    def root_layers(self) -> tuple[int, ...]:
        return tuple(i for i, root in enumerate(self.roots) if root is not None)

    def probe(self, dirlayers: tuple[int, ...], parent: bytes, name: bytes) -> Found | None:
        """Find ``parent/name`` looking through ``dirlayers`` top-down.

        Returns None when the name does not exist or is whited out."""
        child = parent + b"/" + name
        wh = wh_file_name(name)
        top: Found | None = None
        merged: list[int] = []
        last = len(dirlayers) - 1
        for i, layer in enumerate(dirlayers):
            try:
                real = self.real(layer, child)
            except (FileNotFoundError, NotADirectoryError):
                real = None
            st = _lstat(real) if real is not None else None
            if st is not None:
                if is_whiteout(st):
                    break
                if top is None:
                    if not stat_mod.S_ISDIR(st.st_mode):
                        return Found(layer, st, ())
                    top = Found(layer, st, ())
                elif not stat_mod.S_ISDIR(st.st_mode):
                    break
                merged.append(layer)
                if i == last or self.is_opaque(layer, child):
                    break
            if i != last and wh is not None and real is not None and _exists(real[:-len(name)] + wh):
                break
        if top is None:
            return None
        return Found(top.layer, top.st, tuple(merged))

    def list_merged(self, dirlayers: tuple[int, ...], path: bytes) -> list[tuple[bytes, int]]:
        """Visible entries of a directory as (name, topmost layer), upper
        entries first, duplicates removed, whiteouts and ``.wh.*`` hidden."""
        seen: set[bytes] = set()
        hidden: set[bytes] = set()
        out: list[tuple[bytes, int]] = []
        for layer in dirlayers:
            hide_below: set[bytes] = set()
            try:
                it = os.scandir(self.real(layer, path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    name = entry.name if isinstance(entry.name, bytes) else os.fsencode(entry.name)
                    if name.startswith(WH_PREFIX):
                        if name != OPAQUE_MARKER:
                            hide_below.add(name[len(WH_PREFIX):])
                        continue
                    if name in seen or name in hidden:
                        continue
                    try:
                        if not entry.is_file(follow_symlinks=False) and not entry.is_dir(follow_symlinks=False) \
                                and not entry.is_symlink():
                            if is_whiteout(entry.stat(follow_symlinks=False)):
                                hidden.add(name)
                                continue
                    except FileNotFoundError:
                        continue
                    seen.add(name)
                    out.append((name, layer))
            hidden |= hide_below
        return out

    # -- writes to the upper layer -------------------------------------

    def make_whiteout(self, parent: bytes, name: bytes) -> None:
        """Hide ``parent/name`` of the lower layers (parent must be in upper)."""
        assert self.upper is not None
        if not self.whiteout_as_file:
            try:
                os.mknod(self.real(0, parent + b"/" + name), stat_mod.S_IFCHR | 0, os.makedev(0, 0))
                return
            except PermissionError:
                self.whiteout_as_file = True
        wh = wh_file_name(name)
        if wh is None:
            raise OSError(errno.ENAMETOOLONG, "this upper filesystem cannot hold a whiteout for a name "
                          "this long (mknod of a 0/0 device was refused)")
        fd = os.open(self.real(0, parent + b"/" + wh),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)

    def clear_whiteout(self, parent: bytes, name: bytes) -> bool:
        """Remove any whiteout for ``name`` in the upper ``parent``; True if
        one was there (the new object must then hide the lower ones)."""
        assert self.upper is not None
        removed = False
        p = self.real(0, parent + b"/" + name)
        st = _lstat(p)
        if st is not None and is_whiteout(st):
            os.unlink(p)
            removed = True
        wh = wh_file_name(name)
        if wh is None:
            return removed
        try:
            os.unlink(self.real(0, parent + b"/" + wh))
            removed = True
        except (FileNotFoundError, NotADirectoryError):
            pass
        return removed

    def clear_dir_for_removal(self, path: bytes) -> None:
        """Delete whiteouts and markers from an upper directory that looks
        empty through the overlay, so that rmdir/rename over it works."""
        assert self.upper is not None
        real = self.real(0, path)
        with os.scandir(real) as it:
            for entry in it:
                name = os.fsencode(entry.name)
                p = real + b"/" + name
                if name.startswith(WH_PREFIX):
                    os.unlink(p)
                    continue
                st = os.lstat(p)
                if is_whiteout(st):
                    os.unlink(p)
                else:
                    raise OSError(errno.ENOTEMPTY, "directory not empty", p)

    def set_opaque(self, path: bytes) -> None:
        assert self.upper is not None
        real = self.real(0, path)
        try:
            os.setxattr(real, OPAQUE_XATTRS[0], b"y", follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            os.close(os.open(real + b"/" + OPAQUE_MARKER,
                             os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
