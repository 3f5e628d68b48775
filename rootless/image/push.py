"""``rootless push``: an image from the store to a registry.

Every blob the manifest names (config and layers) is checked first: kept if the registry
has it, mounted from another repository of the same registry when one is known to hold it,
uploaded otherwise; then the manifest, byte for byte as stored (so its digest holds).
"""

from __future__ import annotations

import os
from typing import Callable

from ..errors import StoreError
from ..progress import ProgressFactory
from ..registry import Reference, RegistryClient, parse_image_manifest
from .store import Store


def push(store: Store, source: str, destination: str | None = None, tls_verify: bool = True,
         progress: ProgressFactory | None = None, report: Callable[[str], None] | None = None) -> str:
    """Push image ``source`` to ``destination`` (default: the same name); the manifest digest.
    ``progress`` as for ``pull``; ``report`` hears what became of each blob."""
    image = store.resolve(source)
    ref = Reference.parse(destination or source)
    if ref.digest:
        raise StoreError(f"cannot push to a digest ({ref}): give a tag")
    with open(store.blob_path(image.manifest_digest), "rb") as f:
        manifest_raw = f.read()
    manifest = parse_image_manifest(manifest_raw)
    blobs = [manifest.config] + list(manifest.layers)
    for d in blobs:
        if not os.path.exists(store.blob_path(d.digest)):
            raise StoreError(f"blob {d.digest} of {source} is missing from the store: pull or import it again")
    bar = progress("upload", [(d.digest, d.size) for d in blobs]) if progress else None
    others = sorted({t.rsplit(":", 1)[0] for t in store.tags()} - {ref.familiar.rsplit(":", 1)[0]})
    mount_from = [Reference.parse(o).repository for o in others
                  if Reference.parse(o).registry == ref.registry]
    with RegistryClient(ref.registry, insecure=None if tls_verify else True) as client:
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
