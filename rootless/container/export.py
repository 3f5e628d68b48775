"""``rootless export``: a container's root filesystem as a tar, as the container sees it.

The tree is merged here, not mounted: the image's layers (bottom first) and the container's
own upper directory, top layer winning, whiteouts (character devices 0/0, or ``.wh.NAME``
files) hiding what is below them and opaque directories (``user.overlay.opaque`` /
``trusted.overlay.opaque`` = ``y``, or ``.wh..wh..opq``) hiding everything below them.  A vfs
container's copy already has its changes applied and is archived as it is.

Files may be owned by sub-ids and unreadable to the caller, so the walk runs as root of a
user namespace with the caller's maps (``userns.fork_into_userns``) and streams the tar to a
pipe that the caller copies to the output.  Owners are written as the container sees them.
"""

from __future__ import annotations

import os
import socket
import stat
import tarfile
from typing import BinaryIO, NoReturn

from .records import Containers
from ..errors import StoreError
from ..sandbox import channel, idmap
from ..sandbox.userns import fork_into_userns, wait
from ..image.store import Store

WH = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    for attr in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, attr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return os.path.lexists(os.path.join(path, OPAQUE_MARKER))


def merged(layer_dirs: list[str]):
    """Yield (relative path, host path) of the merged tree of ``layer_dirs`` (bottom first), parents first."""
    top = len(layer_dirs) - 1

    def walk(rel: str, floor: int):
        entries: dict[str, tuple[str, int]] = {}   # name -> (path, layer index) of the top-most entry
        stops: dict[str, int] = {}                 # name -> lowest layer index that still counts for it
        hidden: set[str] = set()
        for i in range(top, floor - 1, -1):
            d = os.path.join(layer_dirs[i], rel) if rel else layer_dirs[i]
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break                                # a file here hides the directories below
            for name in sorted(os.listdir(d)):
                if name == OPAQUE_MARKER:
                    continue
                if name.startswith(WH):
                    target = name[len(WH):]
                    if target not in entries:
                        hidden.add(target)
                    stops.setdefault(target, i + 1)
                    continue
                path = os.path.join(d, name)
                est = os.lstat(path)
                if name in hidden:
                    continue
                if _is_whiteout(est):
                    if name not in entries:
                        hidden.add(name)
                    stops.setdefault(name, i + 1)
                    continue
                if name in entries:
                    if not stat.S_ISDIR(est.st_mode):
                        stops.setdefault(name, i + 1)
                    continue
                entries[name] = (path, i)
                if not stat.S_ISDIR(est.st_mode):
                    stops.setdefault(name, i + 1)
            if i > floor and rel and _opaque(d):
                break
        for name in sorted(entries):
            path, _i = entries[name]
            child = f"{rel}/{name}" if rel else name
            yield child, path
            if stat.S_ISDIR(os.lstat(path).st_mode):
                yield from walk(child, max(floor, stops.get(name, floor)))

    yield from walk("", 0)


def _write_tar(layer_dirs: list[str], fd: int) -> None:
    with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in merged(layer_dirs):
            info = tar.gettarinfo(path, arcname=rel)
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def layer_dirs_of(store: Store, cid: str, image_id: str) -> list[str]:
    directory = store.container_dir(cid)
    upper = os.path.join(directory, "upper")
    if not os.path.isdir(upper):
        rootfs = os.path.join(directory, "rootfs")
        if not os.path.isdir(rootfs):
            raise StoreError(f"container {cid[:12]} has no root filesystem in the store")
        return [rootfs]
    try:
        config = store.read_json(image_id)
    except OSError:
        raise StoreError(f"the image {image_id} of container {cid[:12]} is missing from the store") from None
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    missing = [d for d in diff_ids if not store.has_layer(d)]
    if missing:
        raise StoreError(f"layer {missing[0]} of container {cid[:12]}'s image is missing from the store")
    return [store.layer_dir(d) for d in diff_ids] + [upper]


def export(store: Store, maps: idmap.IdMaps, name: str, out: BinaryIO) -> None:
    rec = Containers(store).find(name)
    dirs = layer_dirs_of(store, rec.id, rec.image_id)
    r, w = os.pipe()

    def child(sock: socket.socket) -> NoReturn:
        os.close(r)
        _write_tar(dirs, w)
        channel.send(sock, "done")
        os._exit(0)

    try:
        pid, sock = fork_into_userns(maps, child, name="rootless-export")
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    os.close(w)
    try:
        with os.fdopen(r, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        out.flush()
        with sock:
            try:
                channel.expect(sock, "done")
            except channel.ChildError as e:
                raise StoreError(f"cannot export container {rec.name}: {e}") from None
    finally:
        wait(pid)


__all__ = ["export", "merged"]
