"""Interoperability with skopeo (containers/image) through a real docker-registry."""

from __future__ import annotations

import json

import pytest

from rootless.registry import Credentials, RegistryClient, parse_image_manifest
from tests.registry_server import PASSWORD, USER, skopeo

from .conftest import needs_skopeo
from .images import digest_of, make_image, make_index, push_image, read_oci_layout, write_oci_layout

pytestmark = needs_skopeo


@pytest.fixture
def skopeo_home(tmp_path):
    home = tmp_path / "skopeo-home"
    home.mkdir()
    return home


def run(home, *args):
    proc = skopeo(*args, home=home)
    assert proc.returncode == 0, f"skopeo {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_skopeo_push_then_client_pull(registry, tmp_path, skopeo_home):
    img = make_image("from-skopeo", layers=2, layer_size=200_000)
    layout = tmp_path / "layout"
    write_oci_layout(layout, img, "v1")
    run(skopeo_home, "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
        f"docker://{registry.host}/skopeo/pushed:v1")
    with RegistryClient(registry.host) as c:
        m = c.get_manifest("skopeo/pushed", "v1")
        parsed = parse_image_manifest(m.data)
        assert parsed.config.digest == img.config.digest
        assert [l.digest for l in parsed.layers] == [l.digest for l in img.layers]
        out = tmp_path / "out"
        out.mkdir()
        c.fetch_blobs("skopeo/pushed", [(l.digest, out / l.digest[7:], l.size) for l in parsed.layers])
        for l in img.layers:
            assert (out / l.digest[7:]).read_bytes() == l.data
        assert c.get_blob("skopeo/pushed", img.config.digest) == img.config.data
        # skopeo kept the manifest as it was (no conversion needed): same digest
        assert m.digest == img.digest
        assert "v1" in c.list_tags("skopeo/pushed")


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_client_push_then_skopeo_reads(registry, tmp_path, skopeo_home, oci):
    repo = f"client/pushed-{'oci' if oci else 'docker'}"
    img = make_image(f"to-skopeo-{oci}", oci=oci, layers=2)
    with RegistryClient(registry.host) as c:
        push_image(c, repo, "v1", img, tmp_path)
    info = json.loads(run(skopeo_home, "inspect", "--tls-verify=false", f"docker://{registry.host}/{repo}:v1"))
    assert info["Digest"] == img.digest
    assert info["Layers"] == [l.digest for l in img.layers]
    raw = run(skopeo_home, "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{repo}:v1")
    assert digest_of(raw.encode()) == img.digest
    out = tmp_path / "oci-out"
    run(skopeo_home, "copy", "--src-tls-verify=false", "--preserve-digests",
        f"docker://{registry.host}/{repo}:v1", f"oci:{out}:v1")
    index, manifest = read_oci_layout(out)
    if oci:
        assert manifest == img.manifest
    for l in img.layers:
        assert (out / "blobs" / "sha256" / l.digest[7:]).read_bytes() == l.data


def test_client_pushed_index_seen_by_skopeo(registry, tmp_path, skopeo_home):
    images = [make_image("sk-multi", platform=p, layers=1) for p in ("linux/amd64", "linux/arm64")]
    with RegistryClient(registry.host) as c:
        for img in images:
            push_image(c, "client/multi", None, img, tmp_path)
        index, media_type = make_index(images)
        c.put_manifest("client/multi", "latest", index, media_type)
    for arch, img in zip(("amd64", "arm64"), images):
        info = json.loads(run(skopeo_home, "--override-arch", arch, "--override-os", "linux", "inspect",
                              "--tls-verify=false", f"docker://{registry.host}/client/multi:latest"))
        assert info["Layers"] == [img.layers[0].digest]
        assert info["Architecture"] == arch
        # skopeo reports the index digest as the image digest, which the client returns too
        assert info["Digest"] == digest_of(index)
    with RegistryClient(registry.host) as c:
        m = c.get_manifest("client/multi", "latest", platform="linux/arm64")
        assert m.index_digest == digest_of(index) and m.digest == images[1].digest


def test_skopeo_push_with_basic_auth(basic_registry, tmp_path, skopeo_home):
    img = make_image("sk-auth", layers=1)
    layout = tmp_path / "layout"
    write_oci_layout(layout, img, "v1")
    run(skopeo_home, "copy", "--dest-tls-verify=false", f"--dest-creds={USER}:{PASSWORD}",
        f"oci:{layout}:v1", f"docker://{basic_registry.host}/sk/auth:v1")
    with RegistryClient(basic_registry.host, credentials=Credentials(USER, PASSWORD)) as c:
        assert c.get_manifest("sk/auth", "v1").digest == img.digest


def test_skopeo_reads_with_our_auth_file(token_registry, tmp_path, skopeo_home):
    """Credentials written by save_credentials (login) are understood by skopeo."""
    from rootless.registry import save_credentials
    img = make_image("sk-token", layers=1)
    with RegistryClient(token_registry.host, credentials=Credentials(USER, PASSWORD)) as c:
        push_image(c, "sk/token", "v1", img, tmp_path)
    authfile = save_credentials(token_registry.host, USER, PASSWORD, skopeo_home / "auth.json")
    info = json.loads(run(skopeo_home, "inspect", "--tls-verify=false", f"--authfile={authfile}",
                          f"docker://{token_registry.host}/sk/token:v1"))
    assert info["Digest"] == img.digest
