"""``rootless import``: a one-layer image from a root filesystem tarball."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tarfile

from . import changes as changes_mod
from . import compression, layers, reference
from .. import atomic
from ..errors import StoreError, UsageError
from ..sandbox import idmap
from ..sandbox.remove import remove_tree
from .store import Image, Store

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
        "riscv64": "riscv64"}
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _check_tarball(path: str, size: int, name: str) -> None:
    """Refuse, in the user's terms, what is not a tar archive (``path``: already decompressed)."""
    kinds = f"a tar archive, plain or compressed with {compression.KINDS}"
    if size == 0:
        raise UsageError(f"{name} is empty: give a root filesystem tarball ({kinds})")
    try:
        with tarfile.open(path, "r:") as tar:
            tar.next()
    except (tarfile.TarError, EOFError):
        raise UsageError(f"{name} is not a tar archive: give a root filesystem tarball ({kinds})") from None


def import_rootfs(store: Store, maps: idmap.IdMaps, source: str, ref: str | None,
                  changes: list[str], message: str = "") -> tuple[Image, list[str]]:
    """Store ``source`` (a path, or ``-`` for stdin) as a one-layer image tagged ``ref``.

    Returns the image and the device nodes that could not be created.
    """
    if ref:
        ref = reference.normalize(ref)
    config_section: dict = {"Env": [DEFAULT_PATH]}
    for change in changes:
        changes_mod.apply(config_section, change)

    tmp = os.path.join(store.tmp_dir(), atomic.temp_name("import") + ".tar")
    layer_tmp = None
    what = "standard input" if source == "-" else source
    try:
        with open(tmp, "xb") as out:
            try:
                raw = sys.stdin.buffer if source == "-" else open(source, "rb")
            except OSError as e:
                raise UsageError(f"cannot read {source}: {e.strerror}") from None
            try:
                diff_id = compression.copy_hashing(compression.open_decompressed(raw), out)
            except compression.ERRORS as e:
                raise StoreError(f"cannot read the archive {source}: {e}") from None
            finally:
                if raw is not sys.stdin.buffer:
                    raw.close()
        size = os.path.getsize(tmp)
        _check_tarball(tmp, size, what)
        devices: list[str] = []
        if not store.has_layer(diff_id):   # unpacked without the lock: nothing sees it yet
            layer_tmp, unpacked_size, devices = layers.unpack_temp(store, maps, tmp, f"the layer of {what}")
        with store.lock():
            # blob, layer, config, manifest, tag: each whole, each visible by one rename
            if not store.has_blob(diff_id):
                store.adopt_blob(tmp, diff_id)
            if layer_tmp and store.publish_layer(layer_tmp, diff_id, unpacked_size):
                layer_tmp = None
            if not store.has_layer(diff_id):   # removed by rmi or prune since we looked
                layer_tmp, unpacked_size, devices = layers.unpack_temp(store, maps, store.blob_path(diff_id),
                                                                        f"the layer of {what}")
                store.publish_layer(layer_tmp, diff_id, unpacked_size)
                layer_tmp = None
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            config = {
                "created": now,
                "architecture": ARCH.get(platform.machine(), platform.machine()),
                "os": "linux",
                "config": config_section,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": now, "created_by": "rootless import " + os.path.basename(source),
                             **({"comment": message} if message else {})}],
            }
            config_raw = json.dumps(config, sort_keys=True).encode()
            config_digest = store.put_blob(config_raw)
            manifest = {
                "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_raw)},
                "layers": [{"mediaType": MEDIA_LAYER, "digest": diff_id, "size": size}],
            }
            manifest_digest = store.put_blob(json.dumps(manifest, sort_keys=True).encode())
            if ref:
                store.set_tag(ref, manifest_digest)
        return store.image(manifest_digest, ref), devices
    finally:
        if layer_tmp:
            remove_tree(maps, layer_tmp)
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["import_rootfs"]
