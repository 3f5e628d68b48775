"""``rootless import``: a one-layer image from a root filesystem tarball."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tarfile
from typing import Any

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
    got: layers.Unpacked | None = None
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
            got = layers.unpack_file(store, maps, tmp, f"the layer of {what}", record=True)
            layer_tmp, devices = got.dir, got.devices
        with store.lock():
            # blob, layer, config, manifest, tag: each whole, each visible by one rename
            if store.has_layer(diff_id) and not store.can_make_tar(diff_id):
                got = None                 # unpacked by an older version, without a record
            if got is None or got.tarsplit is None:
                if not store.has_blob(diff_id):     # the layer is kept as its tar too
                    store.adopt_blob(tmp, diff_id)
            if got is not None and store.publish_layer(got.dir, diff_id, got.size, got.tarsplit):
                layer_tmp = None
            if not store.has_layer(diff_id):   # removed by rmi or prune since we looked
                got = layers.unpack_file(store, maps, tmp if os.path.exists(tmp) else store.blob_path(diff_id),
                                         f"the layer of {what}", record=not store.has_blob(diff_id))
                layer_tmp = got.dir
                if got.tarsplit is None and not store.has_blob(diff_id):
                    store.adopt_blob(tmp, diff_id)
                store.publish_layer(got.dir, diff_id, got.size, got.tarsplit)
                layer_tmp = None
            image = new_image(store, None, [diff_id], config_section,
                              [{"created_by": "rootless import " + os.path.basename(source),
                                **({"comment": message} if message else {})}],
                              [ref] if ref else [])
        from .. import events
        events.emit(store.root, "image", "import", image.id, {"name": ref or image.id})
        return image, devices
    finally:
        if layer_tmp:
            remove_tree(maps, layer_tmp)
            if got is not None and got.tarsplit and os.path.exists(got.tarsplit):
                os.unlink(got.tarsplit)
        if os.path.exists(tmp):
            os.unlink(tmp)


_OCI_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": MEDIA_LAYER,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_image(store: Store, parent: Image | None, diff_ids: list[str], config: dict[str, Any],
              history: list[dict[str, Any]], tags: list[str], *, author: str = "",
              created: str | None = None) -> Image:
    """Write a new image: ``parent``'s layers (none for a base image) then ``diff_ids``, whose
    blobs must be in the store (uncompressed layer tars named by their digest); ``config`` is its
    run configuration (the config's ``config`` section: Cmd, Env, ...); its history is
    ``parent``'s, then ``history`` (entries without ``created`` get ``created``; one per new
    layer, plus any marked ``empty_layer``).  Tags it with each of ``tags``.

    The one way images are written (import, commit, build).  Call with the store locked.
    """
    created = created or now_rfc3339()
    if parent is not None:
        base_manifest = store.read_json(parent.manifest_digest)
        base_diff_ids = list(parent.diff_ids)
        # an OCI manifest names its layers with OCI's media types (a pulled image may have Docker's);
        # a pulled layer the store had already has no compressed blob here: name the plain one
        base_layers = []
        for d, diff_id in zip(base_manifest.get("layers") or [], base_diff_ids):
            if not os.path.exists(store.blob_path(d["digest"])) and os.path.exists(store.blob_path(diff_id)):
                d = {"mediaType": MEDIA_LAYER, "digest": diff_id, "size": os.path.getsize(store.blob_path(diff_id))}
            base_layers.append({**d, "mediaType": _OCI_LAYER_TYPES.get(d.get("mediaType", ""), d.get("mediaType"))})
        base_history = list(parent.config.get("history") or [])
        arch = {k: parent.config[k] for k in ("architecture", "os", "variant", "os.version")
                if k in parent.config}
    else:
        base_layers, base_diff_ids, base_history = [], [], []
        arch = {"architecture": ARCH.get(platform.machine(), platform.machine()), "os": "linux"}
    sizes = {d: store.tar_size(d) for d in diff_ids}
    image_config: dict[str, Any] = {
        "created": created,
        **arch,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": base_diff_ids + list(diff_ids)},
        "history": base_history + [{"created": created, **h} for h in history],
    }
    if author:
        image_config["author"] = author
    config_raw = json.dumps(image_config, sort_keys=True).encode()
    config_digest = store.put_blob(config_raw)
    manifest = {
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_raw)},
        "layers": base_layers + [{"mediaType": MEDIA_LAYER, "digest": d, "size": sizes[d]} for d in diff_ids],
    }
    manifest_digest = store.put_blob(json.dumps(manifest, sort_keys=True).encode())
    refs = [reference.normalize(t) for t in tags]
    for ref in refs:
        store.set_tag(ref, manifest_digest)
    return store.image(manifest_digest, refs[0] if refs else None)


__all__ = ["import_rootfs", "new_image", "now_rfc3339"]
