"""Platform parsing and selection, descriptors, transport choice (no network)."""

from __future__ import annotations

import json

import pytest

from rootless.registry import InvalidPlatform, Platform, RegistryClient, UnsupportedManifest, is_loopback
from rootless.registry.manifest import (Descriptor, detect_media_type, index_entries, parse_image_manifest,
                                        select_platform)

from .images import make_image, make_index


@pytest.mark.parametrize("text,expect", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("linux/x86_64", Platform("linux", "amd64")),
    ("arm64", Platform("linux", "arm64")),
    ("Linux/ARM/v7", Platform("linux", "arm", "v7")),
])
def test_platform_parse(text, expect):
    assert Platform.parse(text) == expect


@pytest.mark.parametrize("text", ["", "linux/", "a/b/c/d", "/amd64"])
def test_platform_invalid(text):
    with pytest.raises(InvalidPlatform) as e:
        Platform.parse(text)
    assert "OS/ARCH" in str(e.value)


def test_host_platform():
    p = Platform.host()
    assert p.os == "linux" and p.architecture and "/" not in p.architecture


def d(arch, variant=None, os="linux"):
    plat = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    return Descriptor.from_json({"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 1,
                                 "platform": plat}, "t")


def test_select_skips_attestations_and_prefers_variants():
    entries = [d("unknown", os="unknown"), d("arm", "v6"), d("arm", "v7"), d("arm64"), d("amd64")]
    assert select_platform(entries, Platform("linux", "arm", "v7"), "t").platform.variant == "v7"
    assert select_platform(entries, Platform("linux", "arm", "v6"), "t").platform.variant == "v6"
    assert select_platform(entries, Platform("linux", "arm"), "t").platform.variant == "v7"
    assert select_platform(entries, Platform("linux", "arm64", "v8"), "t").platform.architecture == "arm64"
    with pytest.raises(UnsupportedManifest) as e:
        select_platform(entries, Platform("linux", "arm", "v5"), "t")
    assert "unknown" not in str(e.value) and "linux/arm/v6" in str(e.value)


def test_parse_manifests():
    img = make_image("parse", layers=2)
    m = parse_image_manifest(img.manifest)
    assert m.config.digest == img.config.digest
    assert [l.digest for l in m.layers] == [l.digest for l in img.layers]
    index, _ = make_index([img])
    assert [e.digest for e in index_entries(index)] == [img.digest]
    with pytest.raises(UnsupportedManifest):
        parse_image_manifest(index)
    with pytest.raises(UnsupportedManifest):
        parse_image_manifest(b"not json")
    bad = json.loads(img.manifest)
    bad["layers"][0]["digest"] = "sha256:short"
    with pytest.raises(UnsupportedManifest):
        parse_image_manifest(json.dumps(bad).encode())
    # no mediaType field: from Content-Type, else by shape
    doc = {"schemaVersion": 2, "manifests": []}
    assert detect_media_type(doc, None) == "application/vnd.oci.image.index.v1+json"
    assert detect_media_type({"config": {}, "layers": []}, "application/vnd.docker.distribution.manifest.v2+json; x=y") \
        == "application/vnd.docker.distribution.manifest.v2+json"


@pytest.mark.parametrize("host,loop", [
    ("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost", True), ("localhost:80", True),
    ("[::1]:5000", True), ("::1", True), ("10.0.0.1:5000", False), ("quay.io", False),
    ("localhost.example:5000", False), ("docker.io", False),
])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_transport_choice_without_connecting():
    # Constructing a client makes no request; only the policy is checked here.
    for host, insecure, allow in [("127.0.0.1:5000", None, True), ("127.0.0.1:5000", False, False),
                                  ("quay.io", None, False), ("quay.io", True, True),
                                  ("docker.io", None, False)]:
        with RegistryClient(host, insecure=insecure, credentials=None) as c:
            assert c.allow_http is allow, (host, insecure)
    with RegistryClient("docker.io", credentials=None) as c:
        assert c.host == "registry-1.docker.io"
