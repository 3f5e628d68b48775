"""``rootless export``: a container's root filesystem as a tar, as the container sees it.

The tree is merged here, not mounted: the image's layers (bottom first) and the container's
own upper directory, top layer winning, whiteouts and opaque directories read as
``image/whiteouts.py`` reads them (``merged``).  A vfs container's copy already has its changes
applied and is archived as it is.

Files may be owned by sub-ids and unreadable to the caller, so the walk runs as root of a
user namespace with the caller's maps (``userns.fork_into_userns``) and streams the tar to a
pipe that the caller copies to the output.  Owners are written as the container sees them.
"""

from __future__ import annotations

import os
import socket
import tarfile
from typing import BinaryIO, NoReturn

from .records import Containers
from ..errors import StoreError
from ..sandbox import channel, idmap
from ..sandbox.userns import fork_into_userns, wait
from ..image.store import Store
from ..image.whiteouts import merged

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


def squashfs_refusal(name: str, path: str) -> str:
    return (f"container {name} runs the squashfs image {path}, whose files are not in the store: commit, "
            "diff and export (and cp while it is stopped) need the image's layers: 'rootless load' a saved "
            "archive of the image and run it by name")


def layer_dirs_of(store: Store, cid: str, image_id: str, image: str = "") -> list[str]:
    """The directories whose merge is the container's tree: the image's layers and its upper
    directory; a vfs container's copy; a container never started: its image's layers.
    ``image``: the record's image (a squashfs file's path has no layers in the store)."""
    directory = store.container_dir(cid)
    upper = os.path.join(directory, "upper")
    if not os.path.isdir(upper) and os.path.exists(os.path.join(directory, "rootfs.copied")):
        return [os.path.join(directory, "rootfs")]
    try:
        config = store.read_json(image_id)
    except OSError:
        if image.startswith("/"):
            raise StoreError(squashfs_refusal(cid[:12], image)) from None
        raise StoreError(f"the image {image_id} of container {cid[:12]} is missing from the store") from None
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    missing = [d for d in diff_ids if not store.has_layer(d)]
    if missing:
        raise StoreError(f"layer {missing[0]} of container {cid[:12]}'s image is missing from the store")
    return [store.layer_dir(d) for d in diff_ids] + ([upper] if os.path.isdir(upper) else [])


def export(store: Store, maps: idmap.IdMaps, name: str, out: BinaryIO) -> None:
    rec = Containers(store).find(name)
    export_layers(maps, layer_dirs_of(store, rec.id, rec.image_id, rec.image), out, f"container {rec.name}")


def export_layers(maps: idmap.IdMaps, dirs: list[str], out: BinaryIO, what: str) -> None:
    """The merged tree of ``dirs`` (bottom first) as a tar on ``out``, read as root of a user
    namespace with ``maps`` (``what`` names it in errors)."""
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
                raise StoreError(f"cannot export {what}: {e}") from None
    finally:
        wait(pid)


__all__ = ["export", "export_layers", "layer_dirs_of"]
