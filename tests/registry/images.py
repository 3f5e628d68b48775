"""Hand-made test images: gzip'd tar layers of generated files, a config, a manifest,
multi-platform indexes and OCI layouts for skopeo.  Deterministic for a given seed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from rootless.registry import manifest as mt


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class Image:
    config: Blob
    layers: list[Blob]
    manifest: bytes
    media_type: str
    platform: str = "linux/amd64"
    blobs: dict[str, Blob] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip'd tar of ``files``; returns (compressed bytes, diff id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), digest_of(tar_bytes)


def make_image(seed: str, *, platform: str = "linux/amd64", oci: bool = True, layers: int = 2,
               layer_size: int = 4096) -> Image:
    """An image with ``layers`` layers of pseudo-random (incompressible) files."""
    os_, arch, *variant = platform.split("/")
    blobs, diff_ids = [], []
    layer_type = mt.OCI_LAYER_GZIP if oci else mt.DOCKER_LAYER_GZIP
    for i in range(layers):
        name = f"{seed}-{platform}-{i}"
        content = random.Random(name).randbytes(layer_size)
        data, diff_id = make_layer({f"layer{i}/file": content, f"layer{i}/name": name.encode()})
        blobs.append(Blob(data, layer_type))
        diff_ids.append(diff_id)
    config_doc = {"architecture": arch, "os": os_, "config": {"Cmd": ["/bin/sh"], "Env": [f"SEED={seed}"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids},
                  "history": [{"created_by": f"layer {i}"} for i in range(layers)]}
    if variant:
        config_doc["variant"] = variant[0]
    config = Blob(json.dumps(config_doc, sort_keys=True).encode(), mt.OCI_CONFIG if oci else mt.DOCKER_CONFIG)
    manifest_doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST if oci else mt.DOCKER_MANIFEST,
                    "config": config.descriptor(), "layers": [b.descriptor() for b in blobs]}
    manifest = json.dumps(manifest_doc, indent=2).encode()
    img = Image(config, blobs, manifest, manifest_doc["mediaType"], platform)
    img.blobs = {b.digest: b for b in [config, *blobs]}
    return img


def make_index(images: list[Image], *, oci: bool = True) -> tuple[bytes, str]:
    """An OCI index (or Docker manifest list) of ``images``; returns (bytes, media type)."""
    media_type = mt.OCI_INDEX if oci else mt.DOCKER_MANIFEST_LIST
    entries = []
    for img in images:
        os_, arch, *variant = img.platform.split("/")
        p = {"os": os_, "architecture": arch}
        if variant:
            p["variant"] = variant[0]
        entries.append({"mediaType": img.media_type, "digest": img.digest, "size": img.size, "platform": p})
    doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return json.dumps(doc, indent=2).encode(), media_type


def push_image(client, repo: str, tag: str | None, image: Image, tmp: Path) -> str:
    """Push ``image``'s blobs (skipping those present) and manifest with ``client``."""
    for blob in image.blobs.values():
        if not client.blob_exists(repo, blob.digest):
            path = tmp / blob.digest.split(":")[1]
            path.write_bytes(blob.data)
            client.push_blob(repo, blob.digest, path)
    return client.put_manifest(repo, tag or image.digest, image.manifest, image.media_type)


def write_oci_layout(root: Path, image: Image, tag: str) -> None:
    """An OCI image layout directory holding ``image`` under ``tag`` (for ``skopeo copy oci:``)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for b in [*image.blobs.values(), Blob(image.manifest, image.media_type)]:
        (blobs / b.digest.split(":")[1]).write_bytes(b.data)
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
             "manifests": [{"mediaType": image.media_type, "digest": image.digest, "size": image.size,
                            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (root / "index.json").write_text(json.dumps(index))


def read_oci_layout(root: Path) -> tuple[dict, bytes]:
    """(index.json, first manifest bytes) of an OCI layout written by skopeo."""
    index = json.loads((root / "index.json").read_text())
    d = index["manifests"][0]["digest"]
    return index, (root / "blobs" / "sha256" / d.split(":")[1]).read_bytes()


def tree(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
