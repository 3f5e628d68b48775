"""Manifest media types, descriptors, and choosing a platform from an index.

Pure functions on bytes and dicts: no network, no files.  Malformed documents raise
``UnsupportedManifest`` (a ``RegistryError``) saying what is wrong; a bad ``--platform``
string raises ``InvalidPlatform`` (a ``ValueError`` and a ``UsageError``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .errors import UnsupportedManifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class InvalidPlatform(UsageError, ValueError):
    pass


_MACHINES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv7": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "i386": ("386", None), "i486": ("386", None), "i586": ("386", None), "i686": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
    "mips64": ("mips64le", None), "loongarch64": ("loong64", None),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """``linux/arm64``, ``linux/arm/v7``; also ``arm64`` alone (os linux)."""
        parts = text.strip().lower().split("/")
        if len(parts) == 1 and parts[0]:
            parts = ["linux", parts[0]]
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidPlatform(f"invalid platform '{text}': use OS/ARCH[/VARIANT], e.g. linux/arm64")
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(parts[1], parts[1])
        return cls(parts[0], arch, parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> "Platform":
        machine = os.uname().machine
        arch, variant = _MACHINES.get(machine, (machine, None))
        return cls("linux", arch, variant)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_json(cls, d: Any, where: str) -> "Descriptor":
        if not isinstance(d, dict):
            raise UnsupportedManifest(f"{where}: a descriptor is not an object")
        digest, size = d.get("digest"), d.get("size")
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise UnsupportedManifest(f"{where}: descriptor digest {digest!r} is not a sha256 digest")
        if not isinstance(size, int) or size < 0:
            raise UnsupportedManifest(f"{where}: descriptor of {digest} has no valid size")
        p = d.get("platform")
        platform = None
        if isinstance(p, dict):
            platform = Platform(str(p.get("os", "")), str(p.get("architecture", "")), p.get("variant") or None)
        return cls(str(d.get("mediaType", "")), digest, size, tuple(d.get("urls") or ()), platform,
                   dict(d.get("annotations") or {}))


@dataclass(frozen=True)
class ImageManifest:
    """An image manifest's parts.  ``layers`` are in order, base first."""
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def load_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise UnsupportedManifest(f"{where}: the manifest is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UnsupportedManifest(f"{where}: the manifest is not a JSON object")
    return doc


def detect_media_type(doc: dict[str, Any], content_type: str | None) -> str:
    """The manifest's media type: its ``mediaType`` field, else the Content-Type, else by shape."""
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct in IMAGE_MANIFESTS + INDEXES + DOCKER_SCHEMA1:
        return ct
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc and "config" in doc:
        return OCI_MANIFEST
    return ct


def parse_image_manifest(data: bytes, where: str = "manifest") -> ImageManifest:
    """Config and layer descriptors of an OCI or Docker schema 2 image manifest."""
    doc = load_json(data, where)
    mt = detect_media_type(doc, None)
    if mt not in IMAGE_MANIFESTS:
        raise UnsupportedManifest(f"{where}: media type '{mt}' is not an image manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise UnsupportedManifest(f"{where}: the manifest has no list of layers")
    return ImageManifest(mt, Descriptor.from_json(doc.get("config"), where),
                         tuple(Descriptor.from_json(x, where) for x in layers))


def index_entries(data: bytes, where: str = "index") -> list[Descriptor]:
    doc = load_json(data, where)
    items = doc.get("manifests")
    if not isinstance(items, list):
        raise UnsupportedManifest(f"{where}: the index has no list of manifests")
    return [Descriptor.from_json(x, where) for x in items]


def _variant_rank(arch: str, variant: str | None) -> int:
    if variant is None:
        return 8 if arch == "arm64" else 0
    try:
        return int(variant.lstrip("v"))
    except ValueError:
        return -1


def select_platform(entries: list[Descriptor], want: Platform, where: str) -> Descriptor:
    """The index entry to run on ``want``.  An exact variant wins; for arm, the highest
    variant not above the wanted one; with no wanted variant, the highest.  Entries whose
    platform is unknown (attestations) are skipped.  Raises ``UnsupportedManifest`` listing
    what the index offers when nothing fits."""
    usable = [e for e in entries if e.platform is not None and e.media_type not in DOCKER_SCHEMA1]
    same = [e for e in usable if e.platform.os == want.os and e.platform.architecture == want.architecture]
    if same:
        if want.variant is not None:
            exact = [e for e in same if _variant_rank(want.architecture, e.platform.variant)
                     == _variant_rank(want.architecture, want.variant)]
            if exact:
                return exact[0]
            limit = _variant_rank(want.architecture, want.variant)
            lower = [e for e in same if _variant_rank(want.architecture, e.platform.variant) <= limit]
            if lower:
                return max(lower, key=lambda e: _variant_rank(want.architecture, e.platform.variant))
        else:
            return max(same, key=lambda e: _variant_rank(want.architecture, e.platform.variant))
    offered = sorted({str(e.platform) for e in usable if e.platform.os != "unknown"})
    raise UnsupportedManifest(f"{where} has no image for {want} (it has: {', '.join(offered) or 'none'}): "
                              "choose one with --platform")
