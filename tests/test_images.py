"""Images end to end against a real registry (Debian's docker-registry on 127.0.0.1):
push, pull, layer sharing, whiteouts under every storage driver, rmi, login."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from .registry_server import PASSWORD, USER, running_registry

pytestmark = [pytest.mark.both_modes,
              pytest.mark.skipif(not shutil.which("docker-registry"),
                                 reason="docker-registry (Debian's Distribution server) is not installed")]


@pytest.fixture(scope="module")
def registry():
    with running_registry() as reg:
        yield reg


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A tar layer: (path, content) files, (path/, None) directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in entries:
            info = tarfile.TarInfo(path.rstrip("/"))
            info.mtime = 946684800
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def own_layer() -> bytes:
    """A one-file layer no other image has (busybox's layer is in the tests' store since import:
    a pull of it finds it there)."""
    import uuid as _uuid
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("own.txt")
        info.size = 32
        tar.addfile(info, io.BytesIO(_uuid.uuid4().hex.encode()))
    return out.getvalue()


def push_image(registry, repo_tag: str, layers: list[bytes], cmd: list[str] | None = None,
               compression: str = "gzip") -> str:
    """Push an OCI image of gzip (or zstd) layers with our registry client; its manifest digest."""
    from rootless.registry import RegistryClient, Reference
    ref = Reference.parse(f"{registry.host}/{repo_tag}")
    if compression == "zstd":
        import zstandard
        blobs = [zstandard.ZstdCompressor().compress(layer) for layer in layers]
    else:
        blobs = [gzip.compress(layer, mtime=0) for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/bin:/usr/bin:/sbin"]},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer) for layer in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": f"application/vnd.oci.image.layer.v1.tar+{compression}", "digest": _digest(b),
                    "size": len(b)} for b in blobs]}).encode()
    with RegistryClient(ref.registry) as client:
        for data in blobs + [config]:
            if not client.blob_exists(ref.repository, _digest(data)):
                tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"blob-{os.getpid()}"
                tmp.write_bytes(data)
                try:
                    client.push_blob(ref.repository, _digest(data), tmp)
                finally:
                    tmp.unlink()
        return client.put_manifest(ref.repository, ref.tag, manifest, "application/vnd.oci.image.manifest.v1+json")


@pytest.fixture(scope="module")
def base_layer(busybox_tar) -> bytes:
    return busybox_tar.read_bytes()


def test_push_pull_run_round_trip(rl, registry):
    name = f"{registry.host}/round/trip:1"
    assert rl("tag", "busybox", "roundtrip:1").returncode == 0
    pushed = rl("push", "roundtrip:1", name)
    assert pushed.returncode == 0, pushed.stderr
    assert rl("rmi", "roundtrip:1").returncode == 0
    pulled = rl("pull", name)
    assert pulled.returncode == 0, pulled.stderr
    assert "1 already in the store" in pulled.stderr  # busybox:latest still holds the layer
    assert rl("run", "--rm", name, "echo", "from the registry").stdout == "from the registry\n"
    rows = json.loads(rl("images", "--format", "json").stdout)
    assert {"Repository": f"{registry.host}/round/trip", "Tag": "1"}.items() <= next(
        r for r in rows if r["Repository"].endswith("/round/trip")).items()
    assert rl("rmi", name).returncode == 0


def test_layers_are_shared_between_images(rl, registry, base_layer):
    push_image(registry, "shared/a:1", [base_layer, _layer([("a.txt", b"A")])])
    push_image(registry, "shared/b:1", [base_layer, _layer([("b.txt", b"B")])])
    first = rl("pull", f"{registry.host}/shared/a:1")
    second = rl("pull", f"{registry.host}/shared/b:1")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "pulled 1 new layer(s), 1 already in the store" in second.stderr
    assert rl("run", "--rm", f"{registry.host}/shared/b:1", "cat", "/b.txt").stdout == "B"
    for tag in ("a", "b"):
        rl("rmi", f"{registry.host}/shared/{tag}:1")


@pytest.mark.parametrize("driver", ["fuse-overlay", "overlay", "vfs"])
def test_whiteouts_and_opaque_directories(rl, registry, base_layer, driver):
    name = f"{registry.host}/white/out:1"
    push_image(registry, "white/out:1", [
        base_layer,
        _layer([("data/", None), ("data/keep", b"keep"), ("data/gone", b"gone"),
                ("opq/", None), ("opq/old", b"old")]),
        _layer([("data/.wh.gone", b""), ("opq/", None), ("opq/.wh..wh..opq", b""), ("opq/new", b"new")]),
    ])
    assert rl("pull", name).returncode == 0
    out = rl("run", "--rm", "--storage-driver", driver, name, "sh", "-c", "ls -a /data /opq").stdout.split()
    assert "keep" in out and "gone" not in out and ".wh.gone" not in out
    assert "new" in out and "old" not in out and ".wh..wh..opq" not in out
    rl("rmi", name)


def test_corrupt_layer_is_refused_and_the_store_is_unchanged(rl, registry, base_layer):
    from rootless.registry import RegistryClient, Reference  # a config whose diff id lies
    good = _layer([("x", b"x")])
    ref = Reference.parse(f"{registry.host}/bad/image:1")
    blob = gzip.compress(good, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(b"something else")]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _digest(blob),
                    "size": len(blob)}]}).encode()
    tmp = Path(f"/tmp/blob-{os.getpid()}")
    with RegistryClient(ref.registry) as client:
        for data in (blob, config):
            tmp.write_bytes(data)
            client.push_blob(ref.repository, _digest(data), tmp)
        tmp.unlink()
        client.put_manifest(ref.repository, "1", manifest, "application/vnd.oci.image.manifest.v1+json")
    layers_before = sorted(os.listdir(rl.root / "layers"))
    tags_before = rl("images", "--format", "json").stdout
    proc = rl("pull", f"{registry.host}/bad/image:1")
    assert proc.returncode == 125
    assert "the image config says" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(rl.root / "layers")) == layers_before
    assert rl("images", "--format", "json").stdout == tags_before


def test_rmi_refuses_an_image_in_use(rl):
    assert rl("tag", "busybox", "inuse:1").returncode == 0
    assert rl("run", "--name", "user-of-inuse", "inuse:1", "true").returncode == 0
    try:
        proc = rl("rmi", "inuse:1")
        assert proc.returncode == 1 and "used by container user-of-inuse" in proc.stderr
        assert rl("rmi", "-f", "inuse:1").returncode == 0
    finally:
        rl("rm", "user-of-inuse")


def test_login_push_logout_with_basic_auth(rl, tmp_path):
    with running_registry("basic") as reg:
        env = {"HOME": str(tmp_path)}
        assert rl("tag", "busybox", "private:1").returncode == 0
        denied = rl("push", "private:1", f"{reg.host}/private/app:1", env=env)
        assert denied.returncode == 125 and f"rootless login {reg.host}" in denied.stderr
        wrong = rl("login", "-u", USER, "--password-stdin", reg.host, input="nope\n", env=env)
        assert wrong.returncode == 125
        ok = rl("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD + "\n", env=env)
        assert ok.returncode == 0 and "Login Succeeded" in ok.stdout
        assert (tmp_path / ".config/containers/auth.json").stat().st_mode & 0o077 == 0
        assert rl("push", "private:1", f"{reg.host}/private/app:1", env=env).returncode == 0
        assert rl("logout", reg.host, env=env).returncode == 0
        assert rl("pull", f"{reg.host}/private/app:1", env=env).returncode == 125
        rl("rmi", "private:1")


def test_zstd_layers(rl, registry, base_layer):
    name = f"{registry.host}/zstd/image:1"
    push_image(registry, "zstd/image:1", [base_layer, _layer([("z.txt", b"zstd!")])], compression="zstd")
    assert rl("pull", name).returncode == 0
    assert rl("run", "--rm", name, "cat", "/z.txt").stdout == "zstd!"
    rl("rmi", name)


def test_import_of_a_zstd_tarball(rl, busybox_tar, tmp_path):
    import zstandard
    packed = tmp_path / "rootfs.tar.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(busybox_tar.read_bytes()))
    assert rl("import", str(packed), "zstdimport:1").returncode == 0
    assert rl("run", "--rm", "zstdimport:1", "echo", "ok").stdout == "ok\n"
    rl("rmi", "zstdimport:1")


def test_containers_of_one_image_share_its_layers_on_disk(rl):
    def usage(path: Path) -> int:
        total = 0
        for dirpath, _, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
                except OSError:
                    pass
        return total
    layers_before = sorted(os.listdir(rl.root / "layers"))
    ids = [rl("run", "-d", "--network", "none", "busybox", "sleep", "30").stdout.strip() for _ in range(2)]
    try:
        assert all(len(i) == 64 for i in ids)
        assert sorted(os.listdir(rl.root / "layers")) == layers_before     # nothing unpacked again
        layer_size = sum(usage(rl.root / "layers" / d) for d in layers_before)
        for cid in ids:     # each container holds only its own changes, not a copy of the image
            assert usage(rl.root / "containers" / cid) < min(layer_size / 10, 512 * 1024)
    finally:
        for cid in ids:
            rl("rm", "-f", cid)


def test_login_push_pull_with_token_auth(rl, tmp_path):
    # The registry verifies real signed JWTs issued by a small token server of the test suite.
    with running_registry("token") as reg:
        env = {"HOME": str(tmp_path)}
        assert rl("tag", "busybox", "tokenized:1").returncode == 0
        denied = rl("push", "tokenized:1", f"{reg.host}/tok/app:1", env=env)
        assert denied.returncode == 125 and "rootless login" in denied.stderr
        ok = rl("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD + "\n", env=env)
        assert ok.returncode == 0, ok.stderr
        assert rl("push", "tokenized:1", f"{reg.host}/tok/app:1", env=env).returncode == 0
        assert rl("rmi", "tokenized:1").returncode == 0
        pulled = rl("pull", f"{reg.host}/tok/app:1", env=env)
        assert pulled.returncode == 0, pulled.stderr
        assert rl("run", "--rm", f"{reg.host}/tok/app:1", "echo", "token ok").stdout == "token ok\n"
        rl("rmi", f"{reg.host}/tok/app:1")


# ----------------------------------------------------------------------------- compression on push

def _remote_manifest(registry, repo_tag: str) -> tuple[str, dict]:
    from rootless.registry import RegistryClient, Reference
    ref = Reference.parse(f"{registry.host}/{repo_tag}")
    with RegistryClient(ref.registry) as client:
        m = client.get_manifest(ref.repository, ref.tag)
    return m.digest, json.loads(m.data)


def _remote_blob_head(registry, repo: str, digest: str, tmp_path: Path) -> bytes:
    from rootless.registry import RegistryClient
    dest = tmp_path / f"blob-{digest[7:19]}"
    with RegistryClient(registry.host) as client:
        client.fetch_blob(repo, digest, dest)
    head = dest.read_bytes()[:6]
    dest.unlink()
    return head


def test_push_compresses_layers_made_here_once(rl, registry, busybox_tar, tmp_path):
    own = tmp_path / "own.tar"        # a layer of its own (busybox's is shared with other tests)
    shutil.copy(busybox_tar, own)
    with tarfile.open(own, "a") as tar:
        info = tarfile.TarInfo("own.txt")
        data = os.urandom(16).hex().encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert rl("import", str(own), "compress/me:1").returncode == 0
    plain = own.stat().st_size
    first = rl("push", "compress/me:1", f"{registry.host}/gz/one:1")
    assert first.returncode == 0, first.stderr
    _, manifest = _remote_manifest(registry, "gz/one:1")
    (layer,) = manifest["layers"]
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer["size"] < plain / 1.5, (layer["size"], plain)
    assert _remote_blob_head(registry, "gz/one", layer["digest"], tmp_path).startswith(b"\x1f\x8b")
    # the layer is kept unpacked (with its tar-split), the compressed blob is not: its descriptor
    # is recorded, and a second push sends the same blob (gzip here depends on the data only)
    diff_id = _digest(own.read_bytes())
    assert not (rl.root / "blobs/sha256" / layer["digest"][7:]).exists()
    assert not (rl.root / "blobs/sha256" / diff_id[7:]).exists()
    assert json.loads((rl.root / "compressed" / f"{diff_id[7:]}.gzip").read_text())["digest"] == layer["digest"]
    second = rl("push", "compress/me:1", f"{registry.host}/gz/two:1")
    assert second.returncode == 0, second.stderr
    assert _remote_manifest(registry, "gz/two:1")[1]["layers"] == [layer]
    again = rl("push", "compress/me:1", f"{registry.host}/gz/one:1")     # found there: not compressed
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    # the image itself is unchanged: save writes it as before, and pull of the push runs
    assert rl("save", "-o", str(tmp_path / "saved.tar"), "compress/me:1").returncode == 0
    with tarfile.open(tmp_path / "saved.tar") as tar:
        assert any(m.size == plain for m in tar.getmembers())
    assert rl("rmi", "compress/me:1").returncode == 0
    pulled = rl("pull", f"{registry.host}/gz/one:1")
    assert pulled.returncode == 0, pulled.stderr
    assert rl("run", "--rm", f"{registry.host}/gz/one:1", "echo", "gz").stdout == "gz\n"
    assert rl("rmi", f"{registry.host}/gz/one:1").returncode == 0
    assert rl("image", "prune", "-f").returncode == 0
    assert not (rl.root / "blobs/sha256" / layer["digest"][7:]).exists()   # went with its layer
    assert all((rl.root / "layers" / n.split(".")[0]).exists() for n in os.listdir(rl.root / "compressed"))


def test_push_with_zstd(rl, registry, busybox_tar, tmp_path):
    assert rl("import", str(busybox_tar), "compress/zstd:1").returncode == 0
    bad = rl("push", "--compression-format", "lz4", "compress/zstd:1", f"{registry.host}/zs/one:1")
    assert bad.returncode == 125 and "gzip or zstd" in bad.stderr and "Traceback" not in bad.stderr
    proc = rl("push", "--compression-format", "zstd", "compress/zstd:1", f"{registry.host}/zs/one:1")
    assert proc.returncode == 0, proc.stderr
    (layer,) = _remote_manifest(registry, "zs/one:1")[1]["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert _remote_blob_head(registry, "zs/one", layer["digest"], tmp_path).startswith(b"\x28\xb5\x2f\xfd")
    assert rl("rmi", "compress/zstd:1").returncode == 0
    assert rl("pull", f"{registry.host}/zs/one:1").returncode == 0
    assert rl("run", "--rm", f"{registry.host}/zs/one:1", "echo", "zs").stdout == "zs\n"
    # a pulled zstd layer pushed with gzip asked for is recompressed; without, sent as it is
    assert rl("push", f"{registry.host}/zs/one:1", f"{registry.host}/zs/same:1").returncode == 0
    assert _remote_manifest(registry, "zs/same:1")[1]["layers"] == [layer]
    proc = rl("push", "--compression-format", "gzip", f"{registry.host}/zs/one:1", f"{registry.host}/zs/gz:1")
    assert proc.returncode == 0, proc.stderr
    (gz,) = _remote_manifest(registry, "zs/gz:1")[1]["layers"]
    assert gz["mediaType"].endswith("+gzip") and gz["digest"] != layer["digest"]
    rl("rmi", f"{registry.host}/zs/one:1")


def test_a_pulled_image_is_pushed_with_its_own_blobs(rl, registry, base_layer):
    digest = push_image(registry, "orig/img:1", [base_layer, _layer([("o.txt", b"original")])])
    _, original = _remote_manifest(registry, "orig/img:1")
    assert rl("pull", "-q", f"{registry.host}/orig/img:1").returncode == 0
    proc = rl("push", f"{registry.host}/orig/img:1", f"{registry.host}/orig/copy:1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == digest                      # the manifest byte for byte
    copy_digest, copy = _remote_manifest(registry, "orig/copy:1")
    assert copy_digest == digest and copy["layers"] == original["layers"]
    rl("rmi", f"{registry.host}/orig/img:1")


def test_podman_pulls_and_runs_a_pushed_compressed_image(rl, registry, busybox_tar, tmp_path):
    from .conftest import RANGE_MODE
    from .test_build import _environmental, _podman
    if not RANGE_MODE:
        pytest.skip("podman needs a subordinate id range")
    podman, cleanup = _podman(tmp_path)
    try:
        assert rl("import", "-c", 'CMD ["echo", "hello from rootless"]', str(busybox_tar), "topodman:1").returncode == 0
        for fmt in ("gzip", "zstd"):
            remote = f"{registry.host}/topodman/{fmt}:1"
            proc = rl("push", "--compression-format", fmt, "topodman:1", remote)
            assert proc.returncode == 0, proc.stderr
            pulled = podman("pull", "--tls-verify=false", remote)
            if _environmental(pulled):
                pytest.skip(f"podman cannot work here: {pulled.stderr.strip()[-200:]}")
            assert pulled.returncode == 0, pulled.stderr
            ran = podman("run", "--rm", "--network", "none", remote)
            assert (ran.returncode, ran.stdout) == (0, "hello from rootless\n"), ran.stderr
    finally:
        rl("rmi", "topodman:1")
        cleanup()
