"""Unpacking a layer tarball into the store, safely, through the user namespace.

The extraction runs as root of a user namespace with the caller's id maps, so that
files get the owners the archive says (container uid 1000 becomes a sub-uid on the
host), and *chrooted into the new layer directory*: every path the archive names —
``../..``, absolute paths, symlinked parents, hard-link targets — is resolved by the
kernel inside the layer, so nothing can land outside it (the class of bug behind
CVE-2018-15664 and CVE-2019-14271).  The layer is built in a temporary directory and
renamed into place, so a failed unpack leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import tarfile

from ..errors import StoreError
from ..sandbox.remove import remove_tree
from ..sandbox import channel, idmap
from ..sandbox.userns import run_as_root
from . import whiteouts
from .store import Store


def check_owners(tar_path: str, maps: idmap.IdMaps) -> list[str]:
    """Refuse an archive whose owners do not fit in the id maps; the device nodes it has."""
    devices = []
    limit_u, limit_g = maps.size("uid"), maps.size("gid")
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if maps.single:
                pass  # owners other than 0 cannot be kept without a range: files become root's
            elif m.uid >= limit_u or m.gid >= limit_g:
                kind, value = ("uid", m.uid) if m.uid >= limit_u else ("gid", m.gid)
                raise StoreError(
                    f"'{m.name}' in the image is owned by {kind} {value}, which does not fit in your "
                    f"subordinate {kind} range (container {kind}s 0-{(limit_u if kind == 'uid' else limit_g) - 1}). "
                    f"Ask an administrator for a range of at least {value + 1} ids in /etc/sub{kind}")
            if (m.ischr() or m.isblk()) and (m.devmajor, m.devminor) != (0, 0):
                devices.append(m.name)
    return devices


def _extract_chrooted(tar_path: str, layer: str, single: bool) -> None:
    """Unpack as root of the user namespace, chrooted in ``layer``.  In single-uid mode only
    uid 0 exists: every entry is unpacked as root's (tarfile skips an entry's chmod and
    utime when its chown fails, which would lose setgid bits, x bits and times)."""
    with open(tar_path, "rb") as f:
        os.chroot(layer)
        os.chdir("/")
        with tarfile.open(fileobj=f, copybufsize=1 << 20) as tar:
            members = [m for m in tar
                       if not ((m.ischr() or m.isblk()) and (m.devmajor, m.devminor) != (0, 0))]
            if single:
                for m in members:
                    m.uid = m.gid = 0
            current: list[tarfile.TarInfo] = []

            def tracked():   # extractall takes members one at a time: the failing one is current
                for m in members:
                    current[:] = [m]
                    yield m
                current.clear()
            # Safe by the chroot; Python 3.14's default 'data' filter would refuse absolute symlinks.
            extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            try:
                tar.extractall("/", members=tracked(), numeric_owner=True, **extra)
            except (OSError, KeyError) as e:
                if not current:
                    raise
                raise LayerEntryError(_explain(current[0], e)) from None
        whiteouts.to_overlay("/")


class LayerEntryError(Exception):
    """An entry of the archive that cannot be unpacked, explained (raised in the unpacking child)."""


def _explain(m: tarfile.TarInfo, e: BaseException) -> str:
    """Why entry ``m`` could not be unpacked, in the archive's terms (we are chrooted in the layer)."""
    import errno
    import stat
    if isinstance(e, KeyError):
        return (f"entry '{m.name}' is a hard link to '{m.linkname}', which is not in the layer before it "
                "(an archive that tries to reach outside itself, or a broken one)")
    parts = [p for p in posixpath.normpath("/" + m.name).split("/") if p]
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if os.path.isdir("/" + prefix):
            continue
        try:
            st = os.lstat("/" + prefix)
        except OSError:
            break
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink("/" + prefix)
            try:
                os.stat("/" + prefix)
                tail = "which is not a directory"
            except OSError as e2:
                tail = ("which is part of a symbolic link loop" if e2.errno == errno.ELOOP
                        else "which leads nowhere in this layer")
            kind = f"a symbolic link to '{target}', {tail}"
        elif stat.S_ISREG(st.st_mode):
            kind = "a file"
        else:
            kind = "something other than a directory"
        return f"entry '{m.name}' needs '{prefix}' to be a directory, but the layer has it as {kind}"
    why = os.strerror(e.errno).lower() if isinstance(e, OSError) and e.errno else str(e)
    return f"entry '{m.name}' cannot be created ({why})"


def unpacked_size(tar_path: str) -> int:
    """The layer's size once unpacked, as Docker counts it: the sum of its regular files."""
    with tarfile.open(tar_path) as tar:
        return sum(m.size for m in tar if m.isreg())


def unpack_temp(store: Store, maps: idmap.IdMaps, tar_path: str, what: str) -> tuple[str, int, list[str]]:
    """Unpack ``tar_path`` (uncompressed) into a new temporary directory of the store (no lock
    needed: nothing sees it); (that directory, the unpacked size, the device nodes skipped).
    ``store.publish_layer`` makes it a layer; a killed unpack leaves a directory that the next
    command taking the store lock removes."""
    try:
        devices = check_owners(tar_path, maps)
        size = unpacked_size(tar_path)
    except (tarfile.TarError, EOFError) as e:
        reason = "it is empty" if os.path.getsize(tar_path) == 0 else "it is truncated or not a tar file"
        raise StoreError(f"{what} is not a valid tar archive ({reason}): the image is corrupt; "
                         "get or make it again") from None
    tmp = store.layer_temp_dir()
    try:
        run_as_root(maps, lambda: _extract_chrooted(tar_path, tmp, maps.single), name="rootless-unpack")
    except channel.ChildError as e:
        remove_tree(maps, tmp)
        text = str(e)
        if text.startswith("entry '"):
            text += "; the archive is broken, or made to write where it should not: refused"
        raise StoreError(f"cannot unpack {what}: {text}") from None
    except BaseException:
        remove_tree(maps, tmp)
        raise
    return tmp, size, devices


def unpack(store: Store, maps: idmap.IdMaps, tar_path: str, diff_id: str, what: str = "") -> list[str]:
    """Unpack ``tar_path`` (uncompressed) as layer ``diff_id``; returns the device nodes skipped.
    Call with the store locked.

    ``what`` names the layer in errors, as the user knows it (e.g. "the layer of FILE").
    """
    tmp, size, devices = unpack_temp(store, maps, tar_path, what or f"layer {diff_id}")
    try:
        if not store.publish_layer(tmp, diff_id, size):
            remove_tree(maps, tmp)  # another command unpacked the same layer meanwhile
    except BaseException:
        remove_tree(maps, tmp)
        raise
    return devices
