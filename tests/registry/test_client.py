"""RegistryClient against a real anonymous docker-registry on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from rootless.errors import RootlessError
from rootless.registry import (BlobUnknown, DigestMismatch, ManifestUnknown, Platform, RegistryClient,
                               RegistryError, UnsupportedManifest, parse_image_manifest)
from rootless.registry import manifest as mt
from rootless.registry.reference import InvalidReference

from .images import digest_of, make_image, make_index, push_image, tree


@pytest.fixture
def client(registry):
    with RegistryClient(registry.host, backoff=0.01) as c:
        yield c


def pull(client: RegistryClient, repo: str, ref: str, dest: Path, platform=None):
    """What the engine's pull does: manifest, config, layers in parallel."""
    m = client.get_manifest(repo, ref, platform=platform)
    parsed = parse_image_manifest(m.data)
    config = client.get_blob(repo, parsed.config.digest)
    dest.mkdir(parents=True, exist_ok=True)
    client.fetch_blobs(repo, [(l.digest, dest / l.digest.split(":")[1], l.size) for l in parsed.layers])
    return m, config, parsed


def test_plain_http_for_loopback(client, registry):
    assert client.allow_http
    assert client.base_url() == registry.url


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_push_and_pull_round_trip(client, tmp_path, oci):
    repo = f"round/{'oci' if oci else 'docker'}"
    img = make_image(f"rt-{oci}", oci=oci, layers=3, layer_size=300_000)
    digest = push_image(client, repo, "v1", img, tmp_path)
    assert digest == img.digest

    m, config, parsed = pull(client, repo, "v1", tmp_path / "out")
    assert (m.digest, m.media_type, m.data) == (img.digest, img.media_type, img.manifest)
    d, media_type, data = m                       # unpacks as the brief's 3-tuple
    assert d == img.digest and data == img.manifest
    assert m.index_digest is None
    assert config == img.config.data
    for layer in img.layers:
        assert (tmp_path / "out" / layer.digest.split(":")[1]).read_bytes() == layer.data
    assert parsed.layers[0].media_type == (mt.OCI_LAYER_GZIP if oci else mt.DOCKER_LAYER_GZIP)
    # by digest too
    assert client.get_manifest(repo, img.digest).data == img.manifest
    # no temporary files left next to the blobs
    assert all(not n.startswith(".") for n in tree(tmp_path / "out"))


def test_fetch_blob_progress_and_replace(client, tmp_path):
    img = make_image("progress", layers=1, layer_size=2_500_000)
    push_image(client, "progress/x", "latest", img, tmp_path)
    layer = img.layers[0]
    dest = tmp_path / "blob"
    dest.write_bytes(b"old")
    seen = []
    n = client.fetch_blob("progress/x", layer.digest, dest, layer.size, progress=lambda d, t: seen.append((d, t)))
    assert n == layer.size
    assert dest.read_bytes() == layer.data
    assert seen[-1] == (layer.size, layer.size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_fetch_blob_wrong_expected_size_refused(client, tmp_path):
    img = make_image("size", layers=1)
    push_image(client, "size/x", "latest", img, tmp_path)
    layer = img.layers[0]
    for wrong in (layer.size - 1, layer.size + 1):
        dest = tmp_path / f"blob{wrong}"
        with pytest.raises(DigestMismatch):
            client.fetch_blob("size/x", layer.digest, dest, wrong)
        assert not dest.exists()
    assert tree(tmp_path).count("blob") == 0


def test_chunked_push(client, tmp_path):
    img = make_image("chunked", layers=1, layer_size=1_000_000)
    layer = img.layers[0]
    path = tmp_path / "layer"
    path.write_bytes(layer.data)
    seen = []
    client.push_blob("chunked/x", layer.digest, path, progress=lambda d, t: seen.append(d), chunk_size=256 * 1024)
    assert seen[-1] == layer.size
    assert client.blob_exists("chunked/x", layer.digest)
    assert client.get_blob("chunked/x", layer.digest, max_size=10 << 20) == layer.data


def test_push_blob_with_wrong_digest_refused(client, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"some bytes")
    wrong = digest_of(b"other bytes")
    with pytest.raises(DigestMismatch):
        client.push_blob("wrong/x", wrong, path)
    assert not client.blob_exists("wrong/x", wrong)


def test_blob_exists_and_mount(client, tmp_path):
    img = make_image("mount", layers=1)
    push_image(client, "mount/src", "latest", img, tmp_path)
    layer = img.layers[0]
    assert client.blob_exists("mount/src", layer.digest)
    assert not client.blob_exists("mount/dst", layer.digest)
    assert client.mount_blob("mount/dst", layer.digest, "mount/src") is True
    assert client.blob_exists("mount/dst", layer.digest)
    missing = digest_of(b"never pushed")
    assert client.mount_blob("mount/dst", missing, "mount/src") is False
    assert not client.blob_exists("mount/dst", missing)


def test_list_tags(client, tmp_path):
    img = make_image("tags", layers=1)
    for tag in ("a", "b", "1.0"):
        push_image(client, "tags/x", tag, img, tmp_path)
    assert sorted(client.list_tags("tags/x")) == ["1.0", "a", "b"]
    with pytest.raises(ManifestUnknown):
        client.list_tags("tags/nothing")


def test_unknown_manifest_and_blob(client, registry, tmp_path):
    with pytest.raises(ManifestUnknown) as e:
        client.get_manifest("nope/x", "latest")
    assert f"{registry.host}/nope/x:latest" in str(e.value)
    assert isinstance(e.value, RootlessError) and e.value.status == 404
    img = make_image("unknown", layers=1)
    push_image(client, "unknown/x", "latest", img, tmp_path)
    with pytest.raises(ManifestUnknown):
        client.get_manifest("unknown/x", "other")
    with pytest.raises(ManifestUnknown):
        client.get_manifest("unknown/x", digest_of(b"no such manifest"))
    dest = tmp_path / "dest"
    with pytest.raises(BlobUnknown):
        client.fetch_blob("unknown/x", digest_of(b"nothing"), dest)
    assert not dest.exists()


def test_bad_names_are_refused_before_any_request(client):
    with pytest.raises(InvalidReference):
        client.get_manifest("UPPER/x", "latest")
    with pytest.raises(InvalidReference):
        client.get_manifest("ok/x", "sha256:short")
    with pytest.raises(InvalidReference):
        client.fetch_blob("ok/x", "md5:abc", "/nonexistent/x")


def multi_platform(client: RegistryClient, repo: str, tmp_path: Path, oci: bool = True):
    images = [make_image("multi", platform=p, oci=oci, layers=1)
              for p in ("linux/amd64", "linux/arm64/v8", "linux/arm/v6", "linux/arm/v7")]
    for img in images:
        push_image(client, repo, None, img, tmp_path)
    data, media_type = make_index(images, oci=oci)
    client.put_manifest(repo, "latest", data, media_type)
    return images, data


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-list"])
def test_index_resolves_to_platform(client, tmp_path, oci):
    repo = f"multi/{'oci' if oci else 'docker'}"
    images, index = multi_platform(client, repo, tmp_path, oci)
    by_platform = {i.platform: i for i in images}
    for want, expect in [("linux/arm64", "linux/arm64/v8"), ("linux/amd64", "linux/amd64"),
                         ("linux/arm/v7", "linux/arm/v7"), ("linux/arm/v6", "linux/arm/v6"),
                         (Platform("linux", "arm", "v8"), "linux/arm/v7"), ("linux/arm", "linux/arm/v7")]:
        m = client.get_manifest(repo, "latest", platform=want)
        assert m.digest == by_platform[expect].digest, want
        assert m.index_digest == digest_of(index)
        assert m.index_data == index
        assert json.loads(m.data)["config"]["digest"] == by_platform[expect].config.digest
    host = Platform.host()
    if str(host) in ("linux/amd64", "linux/arm64"):
        m = client.get_manifest(repo, "latest")
        assert m.digest == by_platform["linux/amd64" if host.architecture == "amd64" else "linux/arm64/v8"].digest
    raw = client.get_manifest(repo, "latest", resolve=False)
    assert raw.data == index and raw.media_type == (mt.OCI_INDEX if oci else mt.DOCKER_MANIFEST_LIST)
    with pytest.raises(UnsupportedManifest) as e:
        client.get_manifest(repo, "latest", platform="linux/s390x")
    assert "linux/amd64" in str(e.value) and "--platform" in str(e.value)


def test_parallel_fetch_blobs_stops_on_error(client, tmp_path):
    img = make_image("parallel", layers=4, layer_size=100_000)
    push_image(client, "parallel/x", "latest", img, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    items = [(l.digest, out / l.digest.split(":")[1], l.size) for l in img.layers]
    calls = []
    lock = threading.Lock()

    def progress(digest, done, total):
        with lock:
            calls.append(digest)
    client.fetch_blobs("parallel/x", items, max_workers=4, progress=progress)
    assert {c for c in calls} == {l.digest for l in img.layers}
    for l in img.layers:
        assert (out / l.digest.split(":")[1]).read_bytes() == l.data
    bad = out / "bad"
    with pytest.raises(BlobUnknown):
        client.fetch_blobs("parallel/x", [*items, (digest_of(b"missing"), bad, None)])
    assert not bad.exists()


def test_put_manifest_missing_blobs_refused(client):
    img = make_image("dangling", layers=1)
    with pytest.raises(BlobUnknown) as e:
        client.put_manifest("dangling/x", "latest", img.manifest, img.media_type)
    assert "dangling/x" in str(e.value) and "push that first" in str(e.value)
    assert img.config.digest in str(e.value) or any(l.digest in str(e.value) for l in img.layers)
    index, media_type = make_index([img])
    with pytest.raises(BlobUnknown):
        client.put_manifest("dangling/x", "multi", index, media_type)
    with pytest.raises(InvalidReference):
        client.put_manifest("dangling/x", "../etc", img.manifest, img.media_type)
    with pytest.raises(InvalidReference):
        client.get_manifest("dangling/x", "a/b")


def test_ensure_blob(client, tmp_path):
    img = make_image("ensure", layers=1)
    layer = img.layers[0]
    path = tmp_path / "layer"
    path.write_bytes(layer.data)
    assert client.ensure_blob("ensure/a", layer.digest, path) == "pushed"
    assert client.ensure_blob("ensure/a", layer.digest, path) == "exists"
    assert client.ensure_blob("ensure/b", layer.digest, path, mount_from=["ensure/none", "ensure/a"]) == "mounted"
    other = tmp_path / "other"
    other.write_bytes(b"fresh")
    assert client.ensure_blob("ensure/b", digest_of(b"fresh"), other, mount_from=["ensure/a"]) == "pushed"
