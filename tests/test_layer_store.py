"""A pulled layer is kept once: unpacked, with the tar-split record that makes its tar again.

Against the real registry (Debian's docker-registry on 127.0.0.1) with images whose layers are
busybox's and random data: no compressed layer blob stays in the store and the store is about
its unpacked size; ``save`` gives tars whose sha256 are the diff ids; ``push`` back where the
blobs are gives the same manifest, and to a registry that has none of them an image that pulls
and runs; a layer changed behind the store's back is refused with the fix; a layer the record
cannot describe (an archive naming a file twice) keeps its blob; a store of an older rootless
(blobs, no records) keeps working.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import ROOTLESS, Rootless

pytestmark = [pytest.mark.both_modes,
              pytest.mark.skipif(not shutil.which("docker-registry"),
                                 reason="docker-registry (Debian's Distribution server) is not installed")]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tar.addfile(e)
            else:
                info = tarfile.TarInfo(e[0])
                info.size, info.mode, info.mtime = len(e[1]), 0o644, 946684800
                tar.addfile(info, io.BytesIO(e[1]))
    return buf.getvalue()


def _info(name: str, kind: bytes, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mtime = kind, 946684800
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o777
    for k, v in kw.items():
        setattr(info, k, v)
    return info


@pytest.fixture(scope="module")
def registry():
    from .registry_server import running_registry
    with running_registry() as reg:
        yield reg


@pytest.fixture
def store(tmp_path, run_dir):
    rl = Rootless(tmp_path / "store", run_dir)
    yield rl
    for c in json.loads(rl("ps", "-a", "--format", "json").stdout or "[]"):
        rl("rm", "-f", c["Id"])
    subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(rl.root)], env=rl.env, timeout=120)


@pytest.fixture(scope="module")
def layers(busybox_tar) -> list[bytes]:
    """busybox, two layers of random data (files of several sizes), and one of every kind of
    entry: long names, hard and symbolic links, a whiteout, an opaque directory, a fifo."""
    rand = [_tar([(f"data{i}/blob{j}", os.urandom(size)) for j, size in enumerate((1 << 20, 700_001, 0, 511))])
            for i in range(2)]
    odd = _tar([_info("bin", tarfile.DIRTYPE),
                ("odd/" + "long" * 40 + "/name.txt", b"a long name\n"),
                ("odd/target", b"linked\n"),
                _info("odd/hard", tarfile.LNKTYPE, linkname="odd/target"),
                _info("odd/soft", tarfile.SYMTYPE, linkname="/odd/target"),
                _info("odd/fifo", tarfile.FIFOTYPE),
                ("data0/.wh.blob3", b""),
                ("odd/sub/.wh..wh..opq", b""),
                ("odd/ünïcode", b"\xff" * 600)])
    return [busybox_tar.read_bytes(), *rand, odd]


def _push(registry, repo_tag: str, layers: list[bytes]) -> str:
    from .test_images import push_image
    return push_image(registry, repo_tag, layers, cmd=["/bin/sh", "-c", "cat /odd/target"])


def _du(rl: Rootless, *paths: Path) -> int:
    """Bytes on disk under ``paths`` (as root of the user namespace: layers hold sub-ids' files)."""
    proc = rl("unshare", "du", "-s", "-c", "--block-size=1", *map(str, paths))
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1].split()[0])


def test_a_pulled_image_keeps_no_layer_blob_and_its_size_is_its_unpacked_size(store, registry, layers, tmp_path):
    rl = store
    manifest_digest = _push(registry, "split/img:1", layers)
    ref = f"{registry.host}/split/img:1"
    proc = rl("pull", "-q", ref)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((rl.root / "blobs/sha256" / manifest_digest[7:]).read_bytes())
    for d in manifest["layers"]:
        assert not (rl.root / "blobs/sha256" / d["digest"][7:]).exists()
    assert sorted(os.listdir(rl.root / "tarsplit")) == sorted(os.listdir(rl.root / "layers"))
    unpacked = _du(rl, rl.root / "layers")
    total = _du(rl, rl.root / "blobs", rl.root / "layers", rl.root / "tarsplit", rl.root / "sizes",
                rl.root / "compressed")
    assert total <= 1.1 * unpacked, (total, unpacked)
    assert rl("run", "--rm", ref).stdout == "linked\n"
    rows = json.loads(rl("system", "df", "--format", "json").stdout)
    (images,) = [r for r in rows if r["Type"] == "Images"]
    assert 0.9 * unpacked <= images["Size"] <= 1.1 * unpacked, (images, unpacked)


def test_save_of_a_pulled_image_gives_its_layers_exact_tars(store, registry, layers, tmp_path):
    rl = store
    _push(registry, "split/save:1", layers)
    ref = f"{registry.host}/split/save:1"
    assert rl("pull", "-q", ref).returncode == 0
    out = tmp_path / "saved.tar"
    proc = rl("save", "-o", str(out), ref)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        got = [_digest(tar.extractfile(name).read()) for name in manifest[0]["Layers"]]
    assert got == [_digest(layer) for layer in layers]
    # an oci-archive names them uncompressed; loaded into another store, it runs
    oci = tmp_path / "saved-oci.tar"
    assert rl("save", "--format", "oci-archive", "-o", str(oci), ref).returncode == 0
    other = Rootless(tmp_path / "other", rl.env.get("XDG_RUNTIME_DIR") and Path(rl.env["XDG_RUNTIME_DIR"]))
    try:
        proc = other("load", "-i", str(oci))
        assert proc.returncode == 0, proc.stderr
        assert other("run", "--rm", ref).stdout == "linked\n"
    finally:
        subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(other.root)], env=other.env, timeout=120)


def test_push_of_a_pulled_image(store, registry, layers, tmp_path):
    rl = store
    digest = _push(registry, "split/push:1", layers)
    ref = f"{registry.host}/split/push:1"
    assert rl("pull", "-q", ref).returncode == 0
    # where the registry has the blobs: the manifest byte for byte
    for dest in (ref, f"{registry.host}/split/pushed:1"):
        proc = rl("push", dest) if dest == ref else rl("push", ref, dest)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == digest
    # to a registry that has none of them: made again, compressed; pulls and runs
    from .registry_server import running_registry
    with running_registry() as fresh:
        remote = f"{fresh.host}/fresh/img:1"
        proc = rl("push", ref, remote)
        assert proc.returncode == 0, proc.stderr
        again = rl("push", ref, f"{fresh.host}/fresh/again:1")   # asks for what the first push made
        assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr
        assert not [n for n in os.listdir(rl.root / "blobs/sha256")
                    if (rl.root / "blobs/sha256" / n).stat().st_size > 100_000]   # nothing kept
        other = Rootless(tmp_path / "other", Path(rl.env["XDG_RUNTIME_DIR"]))
        try:
            proc = other("pull", "-q", remote)
            assert proc.returncode == 0, proc.stderr
            assert other("run", "--rm", remote).stdout == "linked\n"
            assert other("save", "-o", str(tmp_path / "o.tar"), remote).returncode == 0
        finally:
            subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(other.root)], env=other.env, timeout=120)


def test_a_layer_changed_behind_the_stores_back_is_refused_with_the_fix(store, registry, layers, tmp_path):
    rl = store
    _push(registry, "split/tamper:1", layers)
    ref = f"{registry.host}/split/tamper:1"
    assert rl("pull", "-q", ref).returncode == 0
    layer = rl.root / "layers" / _digest(layers[1])[7:]
    proc = rl("unshare", "sh", "-c", f"printf x >> {layer}/data0/blob0")
    assert proc.returncode == 0, proc.stderr
    from .registry_server import running_registry
    with running_registry() as fresh:
        for args in (["save", "-o", str(tmp_path / "s.tar"), ref], ["push", "-q", ref, f"{fresh.host}/t/t:1"]):
            proc = rl(*args)
            assert proc.returncode == 125, (args, proc.stderr)
            assert "was changed since it was unpacked" in proc.stderr and "data0/blob0" in proc.stderr, proc.stderr
            assert "rmi" in proc.stderr and "pull" in proc.stderr and "Traceback" not in proc.stderr
    proc = rl("unshare", "rm", f"{layer}/data0/blob0")
    proc = rl("save", "-o", str(tmp_path / "s.tar"), ref)
    assert proc.returncode == 125 and "data0/blob0" in proc.stderr and "cannot be read" in proc.stderr, proc.stderr


def test_a_layer_the_record_cannot_describe_keeps_its_blob(store, registry, tmp_path):
    """An archive naming the same file twice: the first one's data is gone once unpacked."""
    rl = store
    twice = _tar([("dup/file", b"first" * 200), ("dup/file", b"second" * 100)])
    digest = _push(registry, "split/twice:1", [twice])
    ref = f"{registry.host}/split/twice:1"
    assert rl("pull", "-q", ref).returncode == 0
    manifest = json.loads((rl.root / "blobs/sha256" / digest[7:]).read_bytes())
    assert (rl.root / "blobs/sha256" / manifest["layers"][0]["digest"][7:]).exists()
    assert os.listdir(rl.root / "tarsplit") == []
    out = tmp_path / "s.tar"
    assert rl("save", "-o", str(out), ref).returncode == 0
    with tarfile.open(out) as tar:
        (name,) = json.load(tar.extractfile("manifest.json"))[0]["Layers"]
        assert _digest(tar.extractfile(name).read()) == _digest(twice)


def test_a_store_of_an_older_rootless_keeps_working(store, registry, layers, tmp_path):
    """Layers with their compressed blobs and no tar-split records: save and push use the blobs."""
    rl = store
    digest = _push(registry, "split/old:1", layers[:2])
    ref = f"{registry.host}/split/old:1"
    assert rl("pull", "-q", ref).returncode == 0
    manifest = json.loads((rl.root / "blobs/sha256" / digest[7:]).read_bytes())
    for d, layer in zip(manifest["layers"], layers):
        (rl.root / "blobs/sha256" / d["digest"][7:]).write_bytes(gzip.compress(layer, mtime=0))
        (rl.root / "tarsplit" / _digest(layer)[7:]).unlink()
    out = tmp_path / "s.tar"
    assert rl("save", "-o", str(out), ref).returncode == 0
    with tarfile.open(out) as tar:
        names = json.load(tar.extractfile("manifest.json"))[0]["Layers"]
        assert [_digest(tar.extractfile(n).read()) for n in names] == [_digest(x) for x in layers[:2]]
    from .registry_server import running_registry
    with running_registry() as fresh:
        proc = rl("push", ref, f"{fresh.host}/old/img:1")
        assert proc.returncode == 0 and proc.stdout.strip() == digest, proc.stderr
    assert rl("rmi", ref).returncode == 0
    assert rl("image", "prune", "-f").returncode == 0
    assert os.listdir(rl.root / "blobs/sha256") == [] and os.listdir(rl.root / "layers") == []


def test_a_layer_that_is_not_a_tar_fails_the_pull_and_leaves_nothing(store, registry):
    rl = store
    _push(registry, "split/notar:1", [os.urandom(3 << 20)])
    proc = rl("pull", "-q", f"{registry.host}/split/notar:1")
    assert proc.returncode == 125 and "is not a valid tar archive" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert rl("images", "-q").stdout == ""
    for sub in ("layers", "tarsplit", "tmp", "blobs/sha256"):
        assert os.listdir(rl.root / sub) == [], sub


def test_load_commit_and_build_keep_layers_once_and_give_their_tars_back(store, registry, layers, tmp_path):
    """A loaded layer, a committed one and a build step's are kept as a pulled one is: unpacked
    plus the tar-split record, no blob; save gives their exact tars, push sends them."""
    rl = store
    archive = tmp_path / "in.tar"
    with tarfile.open(archive, "w") as tar:          # a docker-archive of `layers`, by hand
        diff_ids = [_digest(layer) for layer in layers]
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        members = [(f"{d[7:]}/layer.tar", layer) for d, layer in zip(diff_ids, layers)]
        members += [("cfg.json", config), ("manifest.json", json.dumps(
            [{"Config": "cfg.json", "RepoTags": ["split/loaded:1"], "Layers": [m for m, _ in members]}]).encode())]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert rl("load", "-i", str(archive)).returncode == 0
    proc = rl("run", "--name", "split-c", "split/loaded:1", "sh", "-c", "echo made > /new; rm /odd/target")
    assert proc.returncode == 0, proc.stderr
    assert rl("commit", "split-c", "split/committed:1").returncode == 0
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM split/committed:1\nRUN echo built > /built\nCOPY f /f\n")
    (ctx / "f").write_bytes(os.urandom(300_000))
    proc = rl("build", "-q", "-t", "split/built:1", str(ctx))
    assert proc.returncode == 0, proc.stderr
    image = json.loads(rl("image", "inspect", "split/built:1").stdout)[0]
    all_ids = image["RootFS"]["Layers"]
    assert len(all_ids) == len(layers) + 3
    for d in all_ids:
        assert not (rl.root / "blobs/sha256" / d[7:]).exists(), d
        assert (rl.root / "tarsplit" / d[7:]).exists(), d
    out = tmp_path / "saved.tar"
    assert rl("save", "-o", str(out), "split/built:1").returncode == 0
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert [_digest(tar.extractfile(n).read()) for n in manifest[0]["Layers"]] == all_ids
    ref = f"{registry.host}/split/built:1"
    assert rl("tag", "split/built:1", ref).returncode == 0
    proc = rl("push", "-q", ref)
    assert proc.returncode == 0, proc.stderr
    other = Rootless(tmp_path / "other", rl.env.get("XDG_RUNTIME_DIR") and Path(rl.env["XDG_RUNTIME_DIR"]))
    try:
        assert other("pull", "-q", ref).returncode == 0
        proc = other("run", "--rm", ref, "cat", "/new", "/built")
        assert proc.stdout == "made\nbuilt\n", proc.stderr
        assert other("run", "--rm", ref, "ls", "/odd/target").returncode != 0
    finally:
        subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(other.root)], env=other.env, timeout=120)
