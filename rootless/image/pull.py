"""``rootless pull``: an image from a registry into the store.

Manifest (an index is resolved to this host's platform), config, then every layer the
store does not have yet, downloaded in parallel, each verified by the registry client
(size, sha256) before it is kept; then each new layer is decompressed — checking its
sha256 against the config's diff id — and unpacked once (``layers.unpack``).  A layer the
store already has (shared with another image) is neither downloaded nor unpacked again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile

from . import layers
from ..errors import StoreError
from ..progress import Progress
from ..registry import Reference, RegistryClient, parse_image_manifest
from ..sandbox import idmap
from .store import Image, Store

GZIP = ("application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.oci.image.layer.v1.tar+gzip")
PLAIN = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")


def _decompress(src: str, dst: str, media_type: str) -> str:
    """``src`` (as downloaded) into the plain tar ``dst``; its sha256 (the diff id)."""
    h = hashlib.sha256()
    if media_type in GZIP or media_type.endswith("+gzip"):
        opener = gzip.open
    elif media_type.endswith("+zstd"):
        def opener(path, mode):  # noqa: ANN001 - same shape as gzip.open
            import zstandard
            return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    elif media_type in PLAIN or media_type.endswith(".tar"):
        opener = open
    else:
        raise StoreError(f"layer type {media_type} is not supported (foreign or unknown layers): "
                         "pull an image with gzip, zstd or plain layers")
    try:
        with opener(src, "rb") as f, open(dst, "wb") as out:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
    except Exception as e:  # gzip, zstd and I/O errors alike: the layer is unreadable
        raise StoreError(f"layer {os.path.basename(src)} is not a valid {media_type}: {e}") from None
    return "sha256:" + h.hexdigest()


def pull(store: Store, maps: idmap.IdMaps, ref_text: str, platform: str | None = None,
         tls_verify: bool = True, quiet: bool = False) -> Image:
    ref = Reference.parse(ref_text)
    tmp = tempfile.mkdtemp(dir=os.path.join(store.root, "tmp"))
    try:
        with RegistryClient(ref.registry, insecure=None if tls_verify else True) as client:
            m = client.get_manifest(ref.repository, ref.reference, platform)
            manifest = parse_image_manifest(m.data)
            config_raw = client.get_blob(ref.repository, manifest.config.digest)
            config = json.loads(config_raw)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
            if len(diff_ids) != len(manifest.layers):
                raise StoreError(f"{ref}: the image config lists {len(diff_ids)} layers, its manifest "
                                 f"{len(manifest.layers)}: the image is broken")
            wanted = [(layer, diff) for layer, diff in zip(manifest.layers, diff_ids)
                      if not store.has_layer(diff)]
            progress = None if quiet else Progress("download", [(l.digest, l.size) for l, _ in wanted])
            client.fetch_blobs(ref.repository,
                               [(l.digest, os.path.join(tmp, l.digest[7:]), l.size) for l, _ in wanted],
                               progress=(lambda d, done, total: progress.update(d, done, total))
                               if progress else None)
        with store.lock():
            downloaded = {d for _, d in wanted}
            gone = [d for d in diff_ids if d not in downloaded and not store.has_layer(d)]
            if gone:  # removed by rmi/prune between our look and the lock
                raise StoreError(f"layer {gone[0]} of {ref} was removed from the store while it was being "
                                 "pulled (by rmi or image prune): pull again")
            for layer, diff_id in wanted:
                if store.has_layer(diff_id):
                    continue
                plain = os.path.join(tmp, layer.digest[7:] + ".tar")
                got = _decompress(os.path.join(tmp, layer.digest[7:]), plain, layer.media_type)
                if got != diff_id:
                    raise StoreError(f"layer {layer.digest} of {ref} decompresses to {got}, but the image "
                                     f"config says {diff_id}: the image is corrupt or tampered with")
                layers.unpack(store, maps, plain, diff_id, f"layer {layer.digest} of {ref}")
                os.unlink(plain)
                blob = os.path.join(tmp, layer.digest[7:])
                if not os.path.exists(store.blob_path(layer.digest)):
                    store.adopt_blob(blob, layer.digest)
            if store.put_blob(config_raw) != manifest.config.digest:
                raise StoreError(f"{ref}: config digest mismatch")
            if store.put_blob(m.data) != m.digest:
                raise StoreError(f"{ref}: manifest digest mismatch")
            if ref.tag:
                store.set_tag(Reference(ref.registry, ref.repository, ref.tag).familiar, m.digest)
        if not quiet:
            print(f"{ref}: pulled {len(wanted)} new layer(s), {len(manifest.layers) - len(wanted)} "
                  "already in the store", file=__import__("sys").stderr)
        return store.image(m.digest, str(ref))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
