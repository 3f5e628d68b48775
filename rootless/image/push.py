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

A pulled layer is kept unpacked, without its blob (``pull.py``): push asks the registry for
the blob it came as (or, with a ``compression_format`` it did not come in, one push made of
it before: ``Store.compressed_record``), and mounts it from another repository of the
registry when one is known; a registry that has neither gets the layer's tar made again from
the layer directory (``layers.layer_tar``, checked against its diff id) and compressed, in a
temporary file that is not kept (the pairing is recorded: the next push asks for that
digest).  So a pulled image pushed back where its blobs are goes byte for byte, manifest
included; elsewhere its layers may be compressed anew and the manifest changes with them.

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
from ..sandbox import idmap
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


def _candidate(store: Store, desc: dict[str, Any], diff_id: str, fmt: str | None) -> dict[str, Any] | None:
    """For a layer the store keeps no blob of (pulled: kept unpacked), the compressed blob to
    look for at the registry: the one it came as, or one push made of it before."""
    from .pull import _format
    came_as = _format(desc.get("mediaType", ""))
    if fmt is None and came_as:
        return desc
    want = fmt or "gzip"
    if came_as == want and store.compressed_record(diff_id, want) is not None:
        return desc
    return store.compressed_record(diff_id, want)


def compressed_layers(store: Store, image: Image, manifest: dict[str, Any], fmt: str | None,
                      progress: ProgressFactory | None = None, tmp: str | None = None,
                      present: Callable[[str], str | None] | None = None,
                      maps: idmap.IdMaps | None = None
                      ) -> tuple[list[dict[str, Any]], bool, dict[str, str], dict[str, str]]:
    """The layer descriptors to push for ``image`` (whose manifest is ``manifest``), every
    layer compressed (``fmt``, default gzip, as described above); whether any differs from the
    stored manifest's; {digest: how the registry has it} for the blobs ``present`` (a look at
    the registry: ``"exists"``, ``"mounted"`` or None) found there; and {digest: a file in
    ``tmp``} for blobs made here that the store does not keep (made from a layer's tar-split)."""
    want = fmt or "gzip"
    layers = list(manifest.get("layers") or [])
    if len(layers) != len(image.diff_ids):
        raise StoreError(f"image {image.ref or image.id} is broken: its manifest has {len(layers)} layers, "
                         f"its config {len(image.diff_ids)}: pull or import it again")
    what = image.ref or image.id
    out: list[dict[str, Any]] = []
    todo: list[int] = []                 # indexes of layers to compress
    found: dict[str, str] = {}
    made_here: dict[str, str] = {}
    unkept: set[int] = set()             # layers without a blob: their compressed form is not kept
    for i, (desc, diff_id) in enumerate(zip(layers, image.diff_ids)):
        path = store.blob_path(desc["digest"])
        try:
            kind = compression.file_kind(path)
        except OSError:
            kind = None
        if kind is None:                 # a pulled layer, kept unpacked with its tar-split
            if not store.can_make_tar(diff_id, desc["digest"]):
                raise StoreError(f"blob {desc['digest']} of {what} is missing from the store: "
                                 "pull or import it again")
            unkept.add(i)
            cand = _candidate(store, desc, diff_id, fmt)
            outcome = present(cand["digest"]) if cand is not None and present is not None else None
            if cand is not None and outcome:
                out.append(cand)
                found[cand["digest"]] = outcome
                continue
            out.append(desc)
            todo.append(i)
            continue
        if kind != "plain" and (fmt is None or kind == fmt):
            out.append(desc)
            continue
        made = store.compressed(diff_id, want)
        out.append(made if made is not None else desc)
        if made is None:
            todo.append(i)
    if todo:
        bar = progress("compress", [(image.diff_ids[i], _tar_size(store, image.diff_ids[i], out[i]["digest"]))
                                    for i in todo]) if progress else None
        done_here: dict[str, dict[str, Any]] = {}
        for i in todo:
            diff_id, src = image.diff_ids[i], out[i]["digest"]
            made = done_here.get(diff_id) or store.compressed(diff_id, want)  # the same layer twice
            if made is not None:
                out[i] = made
                continue
            if tmp is None:
                raise StoreError("internal error: no directory to compress layers in")
            came_as = None
            if i in unkept:
                from .pull import _format
                came_as = _format(layers[i].get("mediaType", ""))
            this = want if i not in unkept or fmt is not None or not came_as else came_as
            dst = os.path.join(tmp, diff_id[7:] + "." + this)
            cb = (lambda done, key=diff_id: bar.update(key, done)) if bar else None
            try:
                with _layer_tar(store, maps, diff_id, src) as f:
                    digest, size, got = compression.compress_stream(f, dst, this, cb)
            except FileNotFoundError:
                raise StoreError(f"blob {src} of {what} was removed from the store "
                                 "while it was being pushed: push again") from None
            except compression.ERRORS as e:
                raise StoreError(f"blob {src} of {what} in the store is corrupt ({e}): "
                                 "pull or import the image again") from None
            if got != diff_id:
                raise StoreError(f"blob {src} of {what} holds {got}, but the image config "
                                 f"says {diff_id}: the store is corrupt; pull or import the image again")
            if bar:
                bar.update(diff_id, _tar_size(store, diff_id, src))
            desc = {"mediaType": compression.MEDIA_TYPES[this], "digest": digest, "size": size}
            with store.lock():       # the blob (kept only for a layer that keeps its tar), then the record
                if i in unkept:
                    made_here[digest] = dst
                else:
                    if not store.has_blob(digest):
                        store.adopt_blob(dst, digest)
                store.remember_compressed(diff_id, this, desc)
            done_here[diff_id] = desc
            out[i] = desc
    return out, out != layers, found, made_here


def _tar_size(store: Store, diff_id: str, blob_digest: str) -> int:
    """About how many plain bytes compressing the layer reads (for the progress bar)."""
    for digest in (diff_id, blob_digest):
        if store.has_blob(digest):
            return os.path.getsize(store.blob_path(digest))
    try:
        from .tarsplit import total_size
        with open(store.tarsplit_path(diff_id), "rb") as f:
            return total_size(f)
    except (OSError, ValueError):
        return store.layer_size(diff_id)


def _layer_tar(store: Store, maps: idmap.IdMaps | None, diff_id: str, blob_digest: str):
    from .layers import layer_tar
    return layer_tar(store, maps, diff_id, blob_digest)


def push(store: Store, source: str, destination: str | None = None, tls_verify: bool = True,
         progress: ProgressFactory | None = None, report: Callable[[str], None] | None = None,
         compression_format: str | None = None, credentials=None, maps: idmap.IdMaps | None = None) -> str:
    """Push image ``source`` to ``destination`` (default: the same name); the digest of the
    manifest pushed.  ``compression_format``: ``gzip`` or ``zstd`` for every layer (default:
    plain layers gzip, compressed ones as they are).  ``progress`` as for ``pull`` (verbs
    ``compress`` and ``upload``); ``report`` hears what became of each blob.  ``credentials``:
    a ``registry.Credentials`` (the API's X-Registry-Auth), else those of the auth files.
    ``maps``: the id maps to make a layer's tar again with (default: this host's)."""
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
    others = sorted({t.rsplit(":", 1)[0] for t in store.tags()} - {ref.familiar.rsplit(":", 1)[0]})
    mount_from = [Reference.parse(o).repository for o in others
                  if Reference.parse(o).registry == ref.registry]
    tmp = store.new_temp_dir("push")
    try:
        with RegistryClient(ref.registry, insecure=None if tls_verify else True,
                            **({"credentials": credentials} if credentials else {})) as client:
            def present(digest: str) -> str | None:
                if client.blob_exists(ref.repository, digest):
                    return "exists"
                for other in mount_from:
                    if other != ref.repository and client.mount_blob(ref.repository, digest, other):
                        return "mounted"
                return None
            layers, changed, found, made_here = compressed_layers(
                store, image, manifest_doc, compression_format, progress, tmp, present, maps)
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
                if d.digest not in found and d.digest not in made_here and not os.path.exists(store.blob_path(d.digest)):
                    raise StoreError(f"blob {d.digest} of {source} is missing from the store: pull or import it again")
            bar = progress("upload", [(d.digest, d.size) for d in blobs]) if progress else None
            for d in blobs:
                if d.digest in found:
                    outcome = found[d.digest]
                else:
                    outcome = client.ensure_blob(ref.repository, d.digest,
                                                 made_here.get(d.digest) or store.blob_path(d.digest),
                                                 mount_from=mount_from,
                                                 progress=(lambda done, total, dg=d.digest: bar.update(dg, done, total))
                                                 if bar else None)
                if bar:
                    bar.update(d.digest, d.size, d.size)
                if report is not None:
                    report(f"{d.digest[7:19]}: {outcome}")
            digest = client.put_manifest(ref.repository, ref.tag or "latest", manifest_raw, manifest.media_type)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from .. import events
    events.emit(store.root, "image", "push", ref.familiar, {"name": ref.familiar})
    return digest
