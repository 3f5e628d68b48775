"""``rootless pull``: an image from a registry into the store.

Manifest (an index is resolved to this host's platform) and config first; then whatever the
store lacks of the image: a layer blob it does not keep (the compressed blob, which ``push``
and ``save`` need, even when the layer is unpacked already, e.g. by an ``import`` of the same
content) is downloaded, every download verified by the registry client (size, sha256); a
layer it has not unpacked is decompressed — its sha256 checked against the config's diff id
— and unpacked (``layers.unpack_temp``) into a temporary directory, as soon as its blob is
complete, while the other blobs go on downloading (so a pull of several layers costs about
the larger of download and unpack time, not their sum).  All of that happens
without the store lock: other commands (``run``) go on meanwhile.  Then, with the lock, the
store is looked at again (``rmi`` may have removed something meanwhile: then the missing
parts are fetched in another round) and the new parts are made visible, each by one rename,
in an order that keeps the store whole at every step: blobs, layers, config, manifest, tag.
A pull killed at any point leaves only temporary files (removed by the next command that
takes the lock) and complete blobs or layers no tag refers to yet.

A download that stalls (less than 1 KiB in ``ROOTLESS_PULL_STALL_TIMEOUT`` seconds, default
30) is retried with backoff and then fails naming the registry and the blob; Ctrl-C stops the
downloads at once (the registry client shuts their connections) and the temporary directory
goes with them.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

from . import compression, layers
from ..errors import StoreError, UsageError
from ..progress import ProgressFactory
from ..registry import DownloadStalled, Reference, RegistryClient, parse_image_manifest
from ..sandbox import idmap
from ..sandbox.remove import remove_tree
from .store import Image, Store

GZIP = ("application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.oci.image.layer.v1.tar+gzip")
PLAIN = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")


SUPPORTED = "gzip, zstd or plain layers"
STALL_ENV = "ROOTLESS_PULL_STALL_TIMEOUT"
DEFAULT_STALL_TIMEOUT = 30.0


def stall_timeout(environ: dict[str, str] | None = None) -> float:
    """The stall timeout in seconds: ``ROOTLESS_PULL_STALL_TIMEOUT``, else 30."""
    text = (os.environ if environ is None else environ).get(STALL_ENV, "").strip()
    if not text:
        return DEFAULT_STALL_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 < value < 1e6):
        raise UsageError(f"{STALL_ENV}={text!r} is not a number of seconds: give one like 30 (the "
                         "longest a download may go without receiving 1 KiB), or unset it")
    return value


def _check_type(media_type: str) -> None:
    if not (media_type in GZIP or media_type in PLAIN or media_type.endswith(("+gzip", "+zstd", ".tar"))):
        raise StoreError(f"layer type {media_type} is not supported (foreign or unknown layers): "
                         f"pull an image with {SUPPORTED}")


def _format(media_type: str) -> str | None:
    """``gzip`` or ``zstd`` for a layer's media type, else None."""
    if media_type in GZIP or media_type.endswith("+gzip"):
        return "gzip"
    if media_type.endswith(("+zstd", ".zstd")):
        return "zstd"
    return None


def _diff_id(src: str, dst: str | None, layer, ref: Reference) -> str:
    """The sha256 of layer ``src`` decompressed (written to ``dst`` unless None)."""
    try:
        return compression.decompress_file(src, dst)
    except compression.ERRORS as e:
        raise StoreError(f"layer {layer.digest} of {ref} is not a valid {layer.media_type}: {e}") from None


def pull(store: Store, maps: idmap.IdMaps, ref_text: str, platform: str | None = None,
         tls_verify: bool = True, progress: ProgressFactory | None = None,
         report: Callable[[str], None] | None = None, credentials=None) -> Image:
    """Pull ``ref_text`` into the store.  ``progress(verb, [(key, size)])``: an object whose
    ``update(key, done, total)`` hears of each download (the face draws it); ``report``: the
    closing line ("pulled N new layer(s)...").  ``credentials``: a ``registry.Credentials``
    (the API's X-Registry-Auth), else those of the auth files."""
    ref = Reference.parse(ref_text)
    stall = stall_timeout()
    tmp = store.new_temp_dir("pull")
    downloaded: dict[str, str] = {}               # blob digest -> its file under tmp
    unpacked: dict[str, tuple[str, int]] = {}     # diff id -> (temporary layer dir, size)
    checked: set[str] = set()                     # blob digests whose diff id we verified
    try:
        with RegistryClient(ref.registry, insecure=None if tls_verify else True, stall_timeout=stall,
                            **({"credentials": credentials} if credentials else {})) as client:
            m = client.get_manifest(ref.repository, ref.reference, platform)
            manifest = parse_image_manifest(m.data)
            config_raw = client.get_blob(ref.repository, manifest.config.digest)
            config = json.loads(config_raw)
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
            if len(diff_ids) != len(manifest.layers):
                raise StoreError(f"{ref}: the image config lists {len(diff_ids)} layers, its manifest "
                                 f"{len(manifest.layers)}: the image is broken")
            pairs = list(zip(manifest.layers, diff_ids))
            new = {l.digest for l, d in pairs if not (store.has_blob(l.digest) and store.has_layer(d))}
            for _round in range(3):
                # What the store lacks, looked at without the lock (looked at again with it).
                need_blob = [l for l, d in pairs if not store.has_blob(l.digest) and l.digest not in downloaded]
                need_layer = [(l, d) for l, d in pairs if not store.has_layer(d) and d not in unpacked]
                for l in need_blob:
                    _check_type(l.media_type)
                fetch = list({l.digest: l for l in need_blob}.values())
                bar = progress("download", [(l.digest, l.size) for l in fetch]) if progress and fetch else None

                def unpack(layer, diff_id) -> None:
                    if diff_id in unpacked:
                        return
                    src = downloaded.get(layer.digest) or store.blob_path(layer.digest)
                    plain = os.path.join(tmp, layer.digest[7:] + ".tar")
                    got = _diff_id(src, plain, layer, ref)
                    _check_diff(got, diff_id, layer, ref)
                    checked.add(layer.digest)
                    layer_tmp, size, _devices = layers.unpack_temp(store, maps, plain,
                                                                    f"layer {layer.digest} of {ref}")
                    unpacked[diff_id] = (layer_tmp, size)
                    os.unlink(plain)

                def arrived(digest: str) -> None:
                    # a blob is complete: unpack its layer while the others download
                    downloaded[digest] = os.path.join(tmp, digest[7:])
                    for layer, diff_id in need_layer:
                        if layer.digest == digest:
                            unpack(layer, diff_id)
                client.fetch_blobs(ref.repository,
                                   [(l.digest, os.path.join(tmp, l.digest[7:]), l.size) for l in fetch],
                                   progress=(lambda d, done, total: bar.update(d, done, total)) if bar else None,
                                   on_done=arrived)
                for layer, diff_id in need_layer:    # those whose blob was here already
                    unpack(layer, diff_id)
                for layer, diff_id in pairs:   # a blob kept for a layer unpacked before: checked too
                    if layer.digest in downloaded and layer.digest not in checked:
                        _check_diff(_diff_id(downloaded[layer.digest], None, layer, ref), diff_id, layer, ref)
                        checked.add(layer.digest)
                with store.lock():
                    lacking = [l.digest for l, d in pairs
                               if (not store.has_blob(l.digest) and l.digest not in downloaded)
                               or (not store.has_layer(d) and d not in unpacked)]
                    if lacking:   # removed by rmi or prune since we looked: another round
                        continue
                    for layer, diff_id in pairs:    # blobs, then layers, config, manifest, tag
                        if not store.has_blob(layer.digest):
                            store.adopt_blob(downloaded.pop(layer.digest), layer.digest)
                    for layer, diff_id in pairs:    # what push may send for a local copy of it
                        fmt = _format(layer.media_type)   # (as the data says: a media type may lie)
                        if fmt and store.compressed(diff_id, fmt) is None \
                                and compression.file_kind(store.blob_path(layer.digest)) == fmt:
                            store.remember_compressed(diff_id, fmt, {"mediaType": compression.MEDIA_TYPES[fmt],
                                                                      "digest": layer.digest, "size": layer.size})
                    for layer, diff_id in pairs:
                        if diff_id in unpacked and not store.has_layer(diff_id):
                            layer_tmp, size = unpacked.pop(diff_id)
                            store.publish_layer(layer_tmp, diff_id, size)
                    if store.put_blob(config_raw) != manifest.config.digest:
                        raise StoreError(f"{ref}: config digest mismatch")
                    if store.put_blob(m.data) != m.digest:
                        raise StoreError(f"{ref}: manifest digest mismatch")
                    if ref.tag:
                        store.set_tag(Reference(ref.registry, ref.repository, ref.tag).familiar, m.digest)
                    break
            else:
                raise StoreError(f"layers of {ref} were removed from the store while it was being pulled, "
                                 "again and again (by rmi or image prune): pull again")
    except DownloadStalled as e:
        raise DownloadStalled(f"{e}, or allow longer pauses with {STALL_ENV}=SECONDS (now {stall:g})") from None
    else:
        from .. import events
        events.emit(store.root, "image", "pull", ref.familiar, {"name": ref.familiar})
        if report is not None:
            report(f"{ref}: pulled {len(new)} new layer(s), {len(manifest.layers) - len(new)} already in the store")
        return store.image(m.digest, str(ref))
    finally:
        for layer_tmp, _size in unpacked.values():
            remove_tree(maps, layer_tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _check_diff(got: str, diff_id: str, layer, ref: Reference) -> None:
    if got != diff_id:
        raise StoreError(f"layer {layer.digest} of {ref} decompresses to {got}, but the image "
                         f"config says {diff_id}: the image is corrupt or tampered with")

