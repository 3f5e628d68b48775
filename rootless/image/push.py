"""``rootless push``: an image from the store to a registry.

Layers go compressed.  A layer made here (import, commit, build) is stored as a plain tar
named by its diff id: push compresses it (gzip by default, or ``compression_format``) into
the store (``compression.compress_file``, outside the lock; the blob adopted and the pairing
diff id -> compressed blob recorded with the lock, ``Store.remember_compressed``), so a
second push of it, or of another image with it, sends the same blob without compressing
again.  A layer that came compressed (pulled) is pushed as it came — unless a
``compression_format`` is given and it is in another one (Podman's ``--compression-format``
with its ``--force-compression`` default): then it is recompressed the same way.  When
nothing changes, the manifest is pushed byte for byte as stored (so its digest holds);
otherwise an OCI manifest naming the compressed blobs (the image's config unchanged) is
pushed, and the store's own manifest is left as it is (``save`` writes what it always did).

Every blob the manifest names (config and layers) is then checked: kept if the registry has
it, mounted from another repository of the same registry when one is known to hold it,
uploaded otherwise; then the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

from . import compression
from ..errors import StoreError, UsageError
from ..progress import ProgressFactory
from ..registry import Reference, RegistryClient, parse_image_manifest
from .store import Image, Store

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.container.image.v1+json": OCI_CONFIG,
}


def check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in compression.FORMATS:
        raise UsageError(f"invalid --compression-format '{fmt}': use gzip or zstd")


def compressed_layers(store: Store, image: Image, manifest: dict[str, Any], fmt: str | None,
                      progress: ProgressFactory | None = None) -> tuple[list[dict[str, Any]], bool]:
    """The layer descriptors to push for ``image`` (whose manifest is ``manifest``), every
    layer compressed (``fmt``, default gzip, as described above), and whether any differs
    from the stored manifest's."""
    want = fmt or "gzip"
    layers = list(manifest.get("layers") or [])
    if len(layers) != len(image.diff_ids):
        raise StoreError(f"image {image.ref or image.id} is broken: its manifest has {len(layers)} layers, "
                         f"its config {len(image.diff_ids)}: pull or import it again")
    out: list[dict[str, Any]] = []
    todo: list[int] = []                 # indexes of layers to compress
    for i, (desc, diff_id) in enumerate(zip(layers, image.diff_ids)):
        path = store.blob_path(desc["digest"])
        try:
            kind = compression.file_kind(path)
        except OSError:
            raise StoreError(f"blob {desc['digest']} of {image.ref or image.id} is missing from the store: "
                             "pull or import it again") from None
        if kind != "plain" and (fmt is None or kind == fmt):
            out.append(desc)
            continue
        made = store.compressed(diff_id, want)
        out.append(made if made is not None else desc)
        if made is None:
            todo.append(i)
    if todo:
        tmp = store.new_temp_dir("push")
        try:
            bar = progress("compress", [(out[i]["digest"], os.path.getsize(store.blob_path(out[i]["digest"])))
                                        for i in todo]) if progress else None
            for i in todo:
                diff_id, src = image.diff_ids[i], out[i]["digest"]
                made = store.compressed(diff_id, want)      # the same layer twice in the image
                if made is not None:
                    out[i] = made
                    continue
                dst = os.path.join(tmp, diff_id[7:] + "." + want)
                cb = (lambda done, key=src: bar.update(key, done)) if bar else None
                try:
                    digest, size, got = compression.compress_file(store.blob_path(src), dst, want, cb)
                except FileNotFoundError:
                    raise StoreError(f"blob {src} of {image.ref or image.id} was removed from the store "
                                     "while it was being pushed: push again") from None
                except compression.ERRORS as e:
                    raise StoreError(f"blob {src} of {image.ref or image.id} in the store is corrupt ({e}): "
                                     "pull or import the image again") from None
                if got != diff_id:
                    raise StoreError(f"blob {src} of {image.ref or image.id} holds {got}, but the image config "
                                     f"says {diff_id}: the store is corrupt; pull or import the image again")
                if bar:
                    bar.update(src, os.path.getsize(store.blob_path(src)))
                desc = {"mediaType": compression.MEDIA_TYPES[want], "digest": digest, "size": size}
                with store.lock():       # the blob, then the record that names it
                    if not store.has_blob(digest):
                        store.adopt_blob(dst, digest)
                    store.remember_compressed(diff_id, want, desc)
                out[i] = desc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out, out != layers


def push(store: Store, source: str, destination: str | None = None, tls_verify: bool = True,
         progress: ProgressFactory | None = None, report: Callable[[str], None] | None = None,
         compression_format: str | None = None, credentials=None) -> str:
    """Push image ``source`` to ``destination`` (default: the same name); the digest of the
    manifest pushed.  ``compression_format``: ``gzip`` or ``zstd`` for every layer (default:
    plain layers gzip, compressed ones as they are).  ``progress`` as for ``pull`` (verbs
    ``compress`` and ``upload``); ``report`` hears what became of each blob.  ``credentials``:
    a ``registry.Credentials`` (the API's X-Registry-Auth), else those of the auth files."""
    check_format(compression_format)
    image = store.resolve(source)
    ref = Reference.parse(destination or source)
    if ref.digest:
        raise StoreError(f"cannot push to a digest ({ref}): give a tag")
    with open(store.blob_path(image.manifest_digest), "rb") as f:
        manifest_raw = f.read()
    manifest_doc = json.loads(manifest_raw)
    if not os.path.exists(store.blob_path(image.id)):
        raise StoreError(f"blob {image.id} of {source} is missing from the store: pull or import it again")
    layers, changed = compressed_layers(store, image, manifest_doc, compression_format, progress)
    if changed:   # an OCI manifest naming the compressed blobs (a Docker one cannot name zstd)
        config = dict(manifest_doc["config"])
        config["mediaType"] = _OCI_TYPES.get(config.get("mediaType", ""), config.get("mediaType", OCI_CONFIG))
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
               "layers": [{**d, "mediaType": _OCI_TYPES.get(d.get("mediaType", ""), d.get("mediaType"))}
                          for d in layers]}
        doc.update({k: v for k, v in manifest_doc.items() if k in ("annotations",)})
        manifest_raw = json.dumps(doc, sort_keys=True).encode()
    manifest = parse_image_manifest(manifest_raw)
    blobs = [manifest.config] + list(manifest.layers)
    for d in blobs:
        if not os.path.exists(store.blob_path(d.digest)):
            raise StoreError(f"blob {d.digest} of {source} is missing from the store: pull or import it again")
    bar = progress("upload", [(d.digest, d.size) for d in blobs]) if progress else None
    others = sorted({t.rsplit(":", 1)[0] for t in store.tags()} - {ref.familiar.rsplit(":", 1)[0]})
    mount_from = [Reference.parse(o).repository for o in others
                  if Reference.parse(o).registry == ref.registry]
    with RegistryClient(ref.registry, insecure=None if tls_verify else True,
                        **({"credentials": credentials} if credentials else {})) as client:
        for d in blobs:
            outcome = client.ensure_blob(ref.repository, d.digest, store.blob_path(d.digest),
                                         mount_from=mount_from,
                                         progress=(lambda done, total, dg=d.digest: bar.update(dg, done, total))
                                         if bar else None)
            if bar:
                bar.update(d.digest, d.size, d.size)
            if report is not None:
                report(f"{d.digest[7:19]}: {outcome}")
        digest = client.put_manifest(ref.repository, ref.tag or "latest", manifest_raw, manifest.media_type)
    return digest
