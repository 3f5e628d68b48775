"""Image commands end to end: save/load (docker-archive, oci-archive; skopeo reads and writes
them), export, inspect, history, system df, image prune, and hostile archives for import,
load and pull (rejected, or kept inside the layer; the store unchanged on failure)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from .conftest import RANGE_MODE, ROOTLESS, Rootless

pytestmark = pytest.mark.both_modes


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info, data = e if isinstance(e, tuple) else (e, None)
            info.mtime = info.mtime or 946684800
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, data


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), target
    return info


def docker_archive(layers: list[bytes], tag: str | None, diff_ids: list[str] | None = None,
                   extra: list | None = None, config_name: str | None = None) -> bytes:
    """A docker-archive as ``docker save`` writes it."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids or [_digest(l) for l in layers]},
                         "history": [{"created": "2000-01-01T00:00:00Z", "created_by": f"layer {i}"}
                                     for i in range(len(layers))]}).encode()
    cname = config_name or _digest(config)[7:] + ".json"
    entries: list = [_file(cname, config)]
    names = []
    for layer in layers:
        d = _digest(layer)[7:]
        entries += [_dir(d), _file(f"{d}/layer.tar", layer)]
        names.append(f"{d}/layer.tar")
    manifest = [{"Config": cname, "RepoTags": [tag] if tag else None, "Layers": names}]
    entries += (extra or []) + [_file("manifest.json", json.dumps(manifest).encode())]
    return _tar(entries)


def _time(rfc3339: str) -> str:
    """Go writes 10:56:39.80224Z for 10:56:39.802240Z."""
    head, dot, frac = rfc3339.rstrip("Z").partition(".")
    return head + (dot + frac.rstrip("0") if frac.rstrip("0") else "")


def snapshot(rl: Rootless) -> dict:
    """What a failed command must leave as it was."""
    root = rl.root
    return {"tags": (root / "tags.json").read_text() if (root / "tags.json").exists() else "",
            "blobs": sorted(os.listdir(root / "blobs/sha256")),
            "layers": sorted(os.listdir(root / "layers")),
            "tmp": sorted(os.listdir(root / "tmp"))}


@pytest.fixture
def archives(tmp_path) -> Path:
    d = tmp_path / "archives"
    d.mkdir()
    return d


# ----------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_save_load_round_trip(rl, archives, fmt):
    path = archives / f"bb-{fmt}.tar"
    assert rl("tag", "busybox", "saved/bb:1").returncode == 0
    try:
        proc = rl("save", "--format", fmt, "-o", str(path), "saved/bb:1")
        assert proc.returncode == 0, proc.stderr
        names = tarfile.open(path).getnames()
        if fmt == "docker-archive":
            assert {"manifest.json", "repositories"} <= set(names)
            manifest = json.loads(tarfile.open(path).extractfile("manifest.json").read())
            assert manifest[0]["RepoTags"] == ["saved/bb:1"]
        else:
            assert {"oci-layout", "index.json"} <= set(names)
        image_id = rl("inspect", "--format", "{{.Id}}", "saved/bb:1").stdout.strip()
        assert rl("rmi", "saved/bb:1").returncode == 0
        layers_before = {n: os.stat(rl.root / "layers" / n).st_ino for n in os.listdir(rl.root / "layers")}
        loaded = rl("load", "-i", str(path))
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.strip() == "Loaded image: saved/bb:1"
        # busybox:latest holds the same layer: it was not unpacked again
        assert {n: os.stat(rl.root / "layers" / n).st_ino for n in os.listdir(rl.root / "layers")} == layers_before
        assert rl("inspect", "--format", "{{.Id}}", "saved/bb:1").stdout.strip() == image_id
        assert rl("run", "--rm", "saved/bb:1", "echo", "loaded").stdout == "loaded\n"
    finally:
        rl("rmi", "saved/bb:1")


def test_load_gzip_from_stdin_and_layer_missing_from_the_store(tmp_path, busybox_tar):
    """A fresh store: the layer is unpacked from the archive; gzip on stdin is read."""
    a = Rootless(tmp_path / "store-a")
    b = Rootless(tmp_path / "store-b")
    try:
        assert a("import", str(busybox_tar), "bb:gz").returncode == 0
        saved = subprocess.run([*ROOTLESS, "save", "bb:gz"], capture_output=True, env=a.env)
        assert saved.returncode == 0, saved.stderr
        proc = b("load", input=gzip.compress(saved.stdout, compresslevel=1))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"Loaded image: bb:gz\n"
        assert b("run", "--rm", "bb:gz", "cat", "/etc/passwd").stdout.startswith("root:")
        # nothing left by load; a --rm container's files go just after run answers
        # ("removing-*", records.deferred_removals): they must be gone soon too
        deadline = time.monotonic() + 20
        while os.listdir(tmp_path / "store-b" / "tmp") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.listdir(tmp_path / "store-b" / "tmp") == []
    finally:
        for r in (a, b):
            subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(r.root)], env=r.env, timeout=60)


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed")
def test_skopeo_reads_and_writes_our_archives(rl, archives):
    docker, oci = archives / "d.tar", archives / "o.tar"
    assert rl("save", "-o", str(docker), "busybox").returncode == 0
    assert rl("save", "--format", "oci-archive", "-o", str(oci), "busybox").returncode == 0
    want = json.loads(rl("inspect", "busybox").stdout)[0]
    for transport, path in (("docker-archive", docker), ("oci-archive", oci)):
        proc = subprocess.run(["skopeo", "inspect", f"{transport}:{path}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["Layers"] and info["Os"] == "linux"
        assert _time(info["Created"]) == _time(want["Created"])
        cfg = subprocess.run(["skopeo", "inspect", "--raw", "--config", f"{transport}:{path}"],
                             capture_output=True)
        assert _digest(cfg.stdout) == want["Id"]
    # skopeo converts ours, and writes archives we load
    layout = archives / "layout"
    copy = subprocess.run(["skopeo", "copy", f"docker-archive:{docker}", f"oci:{layout}:bb"],
                          capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr
    for dest, tag in ((f"oci-archive:{archives}/sk-oci.tar:skopeo/oci:1", "skopeo/oci:1"),
                      (f"docker-archive:{archives}/sk-docker.tar:skopeo/docker:1", "skopeo/docker:1")):
        copy = subprocess.run(["skopeo", "copy", f"oci:{layout}:bb", dest], capture_output=True, text=True)
        assert copy.returncode == 0, copy.stderr
        proc = rl("load", "-i", dest.split(":")[1])
        assert proc.returncode == 0, proc.stderr
        assert tag in proc.stdout
        got = json.loads(rl("inspect", tag).stdout)[0]  # skopeo rewrites the config: compare its content
        assert (_time(got["Created"]), got["RootFS"], got["Config"]["Cmd"]) == \
            (_time(want["Created"]), want["RootFS"], want["Config"]["Cmd"])
        assert rl("run", "--rm", tag, "echo", "ok").stdout == "ok\n"
        rl("rmi", tag)


@pytest.mark.skipif(not shutil.which("podman"), reason="podman is not installed")
def test_podman_loads_our_archives_and_we_load_podmans(rl, archives):
    import tempfile
    run_root = tempfile.mkdtemp(prefix="rl-podman-", dir="/tmp")  # podman wants <= 50 characters
    podman = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
              "--root", str(archives / "p-root"), "--runroot", run_root]
    # podman's run-time dir is ours too: the pause process it leaves (pause.pid there) is stopped below
    env = {**os.environ, "XDG_RUNTIME_DIR": run_root}
    docker, oci = archives / "d.tar", archives / "o.tar"
    assert rl("save", "-o", str(docker), "busybox").returncode == 0
    assert rl("save", "--format", "oci-archive", "-o", str(oci), "busybox").returncode == 0
    try:
        for path in (docker, oci):
            proc = subprocess.run([*podman, "load", "-i", str(path)], capture_output=True, text=True, timeout=60,
                                  env=env)
            environmental = ("insufficient UIDs", "newuidmap", "permission denied", "cannot set up namespace",
                             "cannot re-exec", "not allowed")
            if proc.returncode != 0 and any(e.lower() in proc.stderr.lower() for e in environmental):
                pytest.skip(f"podman cannot work in this environment: {proc.stderr.strip()[-300:]}")
            assert proc.returncode == 0, proc.stderr
            assert "Loaded image" in proc.stdout
        out = archives / "from-podman.tar"
        proc = subprocess.run([*podman, "save", "-o", str(out), "docker.io/library/busybox:latest"],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert rl("rmi", "busybox").returncode == 0
        loaded = rl("load", "-i", str(out))
        assert loaded.returncode == 0 and loaded.stdout == "Loaded image: busybox:latest\n", loaded.stderr
        assert rl("run", "--rm", "busybox", "echo", "ok").stdout == "ok\n"
    finally:
        pause = _podman_pause_pid(Path(run_root))       # 'podman unshare' joins it
        subprocess.run([*podman, "unshare", "rm", "-rf", str(archives / "p-root"), run_root],
                       capture_output=True, timeout=60, env=env)
        if pause:
            try:
                os.kill(pause, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(run_root, ignore_errors=True)
        if rl("inspect", "busybox").returncode != 0:  # leave the session's image as we found it
            rl("load", "-i", str(docker), check=True)


def _podman_pause_pid(run_root: Path) -> int:
    """Rootless podman leaves a pause process holding its namespaces: it is ours to stop."""
    try:
        return int((run_root / "libpod" / "tmp" / "pause.pid").read_text())
    except (OSError, ValueError):
        return 0


def test_untagged_image_is_loaded_by_id_and_pruned_as_dangling(rl, archives):
    layer = _tar([_file(f"untagged-{uuid.uuid4().hex}")])
    path = archives / "untagged.tar"
    path.write_bytes(docker_archive([layer], None))
    proc = rl("load", input=path.read_bytes())  # plain tar on stdin
    assert proc.returncode == 0, proc.stderr
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert stdout.startswith("Loaded image ID: sha256:") and "until you tag it" in stderr
    image_id = stdout.split()[-1]
    assert rl("inspect", "-f", "{{.Id}}", image_id[7:19]).stdout.strip() == image_id
    assert rl("history", "-q", image_id[7:19]).returncode == 0
    out = json.loads(rl("image", "prune", "-f", "--format", "json").stdout)
    assert any(e.get("Untagged", "").startswith("localhost/untagged/") for e in out["ImagesDeleted"])
    assert rl("inspect", image_id[7:19]).returncode == 1
    assert rl("inspect", "busybox").returncode == 0  # named images stay


def test_docker_25_layout_is_read_and_checked(rl, archives):
    """Docker 25+ names config and layers blobs/sha256/HEX in manifest.json: those names are digests."""
    layer = _tar([_file(f"d25-{uuid.uuid4().hex}")])
    config = json.dumps({"os": "linux", "architecture": "amd64",
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    def archive(config_name: str, layer_name: str) -> bytes:
        manifest = [{"Config": config_name, "RepoTags": ["d25/img:1"], "Layers": [layer_name]}]
        return _tar([_dir("blobs/"), _dir("blobs/sha256/"), _file(config_name, config), _file(layer_name, layer),
                     _file("manifest.json", json.dumps(manifest).encode())])
    path = archives / "d25.tar"
    before = snapshot(rl)
    path.write_bytes(archive(f"blobs/sha256/{'1' * 64}", f"blobs/sha256/{_digest(layer)[7:]}"))
    proc = rl("load", "-i", str(path))
    assert proc.returncode == 125 and "tampered" in proc.stderr
    path.write_bytes(archive(f"blobs/sha256/{_digest(config)[7:]}", f"blobs/sha256/{'2' * 64}"))
    proc = rl("load", "-i", str(path))
    assert proc.returncode == 125 and "tampered" in proc.stderr
    assert snapshot(rl) == before
    path.write_bytes(archive(f"blobs/sha256/{_digest(config)[7:]}", f"blobs/sha256/{_digest(layer)[7:]}"))
    proc = rl("load", "-i", str(path))
    assert proc.returncode == 0 and proc.stdout == "Loaded image: d25/img:1\n", proc.stderr
    assert rl("inspect", "-f", "{{.Id}}", "d25/img:1").stdout.strip() == _digest(config)
    rl("rmi", "d25/img:1")


# ----------------------------------------------------------------------------- hostile archives

def _escape_layer(marker: str) -> bytes:
    """Every way out of a layer we know of, with ``marker`` in each name."""
    return _tar([
        _dir("tmp/"),
        _file(f"../../../../../../../../tmp/{marker}-dotdot"),
        _file(f"../{marker}-up"),
        _file(f"/tmp/{marker}-abs"),
        _link("etc", "/tmp"),
        _file(f"etc/{marker}-via-symlink"),
        _link("up", "../../../.."),
        _file(f"up/tmp/{marker}-via-relative-symlink"),
    ])


def _nothing_escaped(rl: Rootless, marker: str) -> None:
    outside = [Path("/tmp"), Path("/"), rl.root, rl.root / "layers", rl.root.parent, rl.root / "tmp"]
    for d in outside:
        leaked = [n for n in os.listdir(d) if marker in n]
        assert not leaked, f"{leaked} escaped into {d}"


def _layer_with(rl: Rootless, marker: str) -> list[str]:
    """Files with ``marker`` in their names found inside layer directories."""
    found = []
    for layer in (rl.root / "layers").iterdir():
        for dirpath, _dirs, files in os.walk(layer):
            found += [os.path.relpath(os.path.join(dirpath, f), layer) for f in files if marker in f]
    return found


def test_load_keeps_escaping_paths_inside_the_layer(rl, archives):
    marker = f"esc{uuid.uuid4().hex[:8]}"
    path = archives / "escape.tar"
    path.write_bytes(docker_archive([_escape_layer(marker)], "hostile/escape:1"))
    proc = rl("load", "-i", str(path))
    try:
        _nothing_escaped(rl, marker)
        if proc.returncode == 0:
            inside = _layer_with(rl, marker)
            assert any(p.endswith(f"{marker}-dotdot") for p in inside), inside
        else:
            assert "Traceback" not in proc.stderr
    finally:
        rl("rmi", "hostile/escape:1")


def test_import_keeps_escaping_paths_inside_the_layer(rl, archives):
    marker = f"imp{uuid.uuid4().hex[:8]}"
    path = archives / "rootfs.tar"
    path.write_bytes(_escape_layer(marker))
    proc = rl("import", str(path), "hostile/import:1")
    try:
        _nothing_escaped(rl, marker)
        if proc.returncode == 0:
            assert any(p.endswith(f"{marker}-abs") for p in _layer_with(rl, marker))
    finally:
        rl("rmi", "hostile/import:1")


@pytest.mark.parametrize("command", ["load", "import"])
def test_hard_link_out_of_the_layer(rl, archives, command):
    marker = f"hl{uuid.uuid4().hex[:8]}"
    layer = _tar([_link(f"{marker}-passwd", "/etc/passwd", hard=True),
                  _link(f"{marker}-up", "../../../../../../etc/passwd", hard=True)])
    path = archives / "hardlink.tar"
    path.write_bytes(docker_archive([layer], "hostile/hardlink:1") if command == "load" else layer)
    before = snapshot(rl)
    host_passwd = os.stat("/etc/passwd")
    proc = rl("load", "-i", str(path)) if command == "load" else rl("import", str(path), "hostile/hardlink:1")
    try:
        assert os.stat("/etc/passwd").st_nlink == host_passwd.st_nlink
        if proc.returncode == 0:
            for p in _layer_with(rl, marker):
                assert os.stat(next((rl.root / "layers").glob(f"*/{p}"))).st_ino != host_passwd.st_ino
        else:
            assert "Traceback" not in proc.stderr and proc.returncode == 125
            assert snapshot(rl) == before
    finally:
        rl("rmi", "hostile/hardlink:1")


def test_digest_mismatch_is_refused_and_the_store_is_unchanged(rl, archives):
    good = _tar([_file("good", b"good")])
    evil = _tar([_file("good", b"evil")])
    path = archives / "mismatch.tar"
    path.write_bytes(docker_archive([evil], "hostile/mismatch:1", diff_ids=[_digest(good)]))
    before = snapshot(rl)
    proc = rl("load", "-i", str(path))
    assert proc.returncode == 125
    assert "the image config says" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(rl) == before
    # a config renamed to another digest
    path.write_bytes(docker_archive([good], "hostile/mismatch:1", config_name="0" * 64 + ".json"))
    proc = rl("load", "-i", str(path))
    assert proc.returncode == 125 and "tampered" in proc.stderr
    assert snapshot(rl) == before


def test_second_image_failing_undoes_the_first(rl, archives):
    """Two images in one archive; the second is corrupt: nothing of the first is kept."""
    marker = uuid.uuid4().hex[:8]
    first = docker_archive([_tar([_file(f"first-{marker}")])], "hostile/first:1")
    ok_entries = tarfile.open(fileobj=io.BytesIO(first))
    entries = [(m, ok_entries.extractfile(m).read() if m.isfile() else None) for m in ok_entries]
    manifest = json.loads(next(d for m, d in entries if m.name == "manifest.json"))
    good, evil = _tar([_file("g", b"1")]), _tar([_file("g", b"2")])
    cfg = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [_digest(good)]}}).encode()
    manifest.append({"Config": "second.json", "RepoTags": ["hostile/second:1"], "Layers": ["evil/layer.tar"]})
    out = [(m, d) for m, d in entries if m.name != "manifest.json"]
    out += [_file("second.json", cfg), _file("evil/layer.tar", evil),
            _file("manifest.json", json.dumps(manifest).encode())]
    path = archives / "two.tar"
    path.write_bytes(_tar([(m, d) if d is not None else m for m, d in out]))
    before = snapshot(rl)
    proc = rl("load", "-i", str(path))
    assert proc.returncode == 125 and "the image config says" in proc.stderr
    assert snapshot(rl) == before
    assert rl("inspect", "hostile/first:1").returncode == 1


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_truncated_archive_is_refused(rl, archives, busybox_tar, cut):
    layer = busybox_tar.read_bytes()
    data = docker_archive([layer], "hostile/truncated:1")
    # manifest.json is last: cut inside the layer, or just inside the manifest's data
    manifest_at = tarfile.open(fileobj=io.BytesIO(data)).getmember("manifest.json").offset_data
    path = archives / "truncated.tar"
    path.write_bytes(data[:int(len(data) * cut)] if cut < 0.9 else data[:manifest_at + 10])
    before = snapshot(rl)
    for args in (["-i", str(path)],):
        proc = rl("load", *args)
        assert proc.returncode == 125, proc.stderr
        assert ("truncated" in proc.stderr or "missing from the archive" in proc.stderr
                or "not a valid" in proc.stderr), proc.stderr
        assert "Traceback" not in proc.stderr
    gz = archives / "truncated.tar.gz"
    gz.write_bytes(gzip.compress(data)[:len(data) // 3])
    proc = rl("load", "-i", str(gz))
    assert proc.returncode == 125 and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(rl) == before


def test_archive_names_escaping_the_archive_are_refused(rl, archives):
    layer = _tar([_file("a")])
    for extra, layer_name in (([], "../../../../etc/passwd"),
                              ([_link("evil/layer.tar", "/etc/passwd")], "evil/layer.tar"),
                              ([_link("evil/layer.tar", "../../../etc/passwd")], "evil/layer.tar")):
        cfg = json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
        manifest = [{"Config": "c.json", "RepoTags": ["hostile/names:1"], "Layers": [layer_name]}]
        path = archives / "names.tar"
        path.write_bytes(_tar([_file("c.json", cfg), *extra, _file("manifest.json", json.dumps(manifest).encode())]))
        before = snapshot(rl)
        proc = rl("load", "-i", str(path))
        assert proc.returncode == 125 and "Traceback" not in proc.stderr, proc.stderr
        assert "outside the archive" in proc.stderr or "missing from the archive" in proc.stderr \
            or "out of the archive" in proc.stderr, proc.stderr
        assert snapshot(rl) == before


def test_not_an_archive(rl, archives):
    path = archives / "junk.tar"
    path.write_bytes(b"this is not a tar file at all" * 100)
    before = snapshot(rl)
    proc = rl("load", "-i", str(path))
    assert proc.returncode == 125 and "Traceback" not in proc.stderr
    assert snapshot(rl) == before


@pytest.mark.parametrize("compress", [False, True])
def test_import_of_a_truncated_tarball_is_refused(rl, archives, busybox_tar, compress):
    data = busybox_tar.read_bytes()
    data = (gzip.compress(data, compresslevel=1) if compress else data)
    path = archives / "truncated-rootfs.tar"
    path.write_bytes(data[:len(data) // 2])
    before = snapshot(rl)
    proc = rl("import", str(path), "hostile/truncated-import:1")
    assert proc.returncode == 125 and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(rl) == before


@pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry is not installed")
def test_pull_keeps_escaping_paths_inside_the_layer(rl):
    from .registry_server import running_registry
    from .test_images import push_image
    marker = f"pull{uuid.uuid4().hex[:8]}"
    with running_registry() as reg:
        push_image(reg, "hostile/pull:1", [_escape_layer(marker)])
        proc = rl("pull", "-q", f"{reg.host}/hostile/pull:1")
        try:
            _nothing_escaped(rl, marker)
            if proc.returncode == 0:
                assert any(p.endswith(f"{marker}-dotdot") for p in _layer_with(rl, marker))
        finally:
            rl("rmi", f"{reg.host}/hostile/pull:1")


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("driver", ["auto", "vfs"])
def test_export_has_the_containers_changes(rl, archives, driver):
    name = f"exp-{uuid.uuid4().hex[:6]}"
    proc = rl("run", "--name", name, "--storage-driver", driver, "busybox", "sh", "-c",
              "echo changed > /new.txt && rm /bin/ls && rm -rf /usr && mkdir /usr && echo only > /usr/only")
    assert proc.returncode == 0, proc.stderr
    try:
        path = archives / "export.tar"
        proc = rl("export", "-o", str(path), name)
        assert proc.returncode == 0, proc.stderr
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
            assert tar.extractfile("new.txt").read() == b"changed\n"
            assert "bin/ls" not in names and "bin/sh" in names
            assert {n for n in names if n.startswith("usr/")} == {"usr/only"}
            assert "etc/passwd" in names
        streamed = subprocess.run([*ROOTLESS, "export", name], capture_output=True, env=rl.env)
        assert streamed.returncode == 0 and streamed.stdout[:512] == path.read_bytes()[:512]
    finally:
        rl("rm", name)


def test_export_unknown_container(rl, archives):
    proc = rl("export", "-o", str(archives / "x.tar"), "no-such-container")
    assert proc.returncode == 125 and "no such container" in proc.stderr
    assert not (archives / "x.tar").exists()


# ----------------------------------------------------------------------------- inspect, history, df

def test_inspect_image(rl):
    proc = rl("inspect", "busybox")
    assert proc.returncode == 0, proc.stderr
    [img] = json.loads(proc.stdout)
    assert img["Id"].startswith("sha256:") and "busybox:latest" in img["RepoTags"]
    assert img["Config"]["Cmd"] == ["/bin/sh"] and img["Os"] == "linux"
    assert img["RootFS"]["Type"] == "layers" and len(img["RootFS"]["Layers"]) == 1 and img["Size"] > 0
    assert rl("inspect", "--format", "{{.Config.Cmd}} {{json .RepoTags}}", "busybox").stdout == \
        '[/bin/sh] ["busybox:latest"]\n'
    assert rl("inspect", "--type", "image", "-f", "{{.Id}}", img["Id"][7:19]).stdout.strip() == img["Id"]
    missing = rl("inspect", "busybox", "nothing-here")
    assert missing.returncode == 1 and "No such object: nothing-here" in missing.stderr
    assert len(json.loads(missing.stdout)) == 1
    bad = rl("inspect", "-f", "{{.Nope}}", "busybox")
    assert bad.returncode == 125 and "can't evaluate field Nope" in bad.stderr


def test_inspect_container(rl):
    name = f"insp-{uuid.uuid4().hex[:6]}"
    assert rl("run", "--name", name, "busybox", "sh", "-c", "exit 3").returncode == 3
    try:
        [c] = json.loads(rl("inspect", "--type", "container", name).stdout)
        assert c["Name"] == "/" + name and c["State"]["Status"] == "exited"
        assert c["State"]["ExitCode"] == 3 and c["State"]["Running"] is False
        assert c["Config"]["Cmd"] == ["sh", "-c", "exit 3"] and c["Config"]["Image"] == "busybox:latest"
        assert c["Image"] == json.loads(rl("inspect", "busybox").stdout)[0]["Id"]
        assert rl("inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", name).stdout == "3 false\n"
        assert rl("inspect", "--type", "image", name).returncode == 1
    finally:
        rl("rm", name)


@pytest.mark.parametrize("driver", ["fuse-overlay", "overlay", "vfs"])
def test_inspect_and_ps_name_the_driver_that_mounted_the_root(rl, driver):
    """Not the one guessed from the files (an upper directory is there for both overlays)."""
    name = f"drv-{uuid.uuid4().hex[:6]}"
    ran = rl("run", "--name", name, "--storage-driver", driver, "--network", "none", "busybox", "true")
    try:
        if ran.returncode != 0 and "cannot work here" in ran.stderr:
            pytest.skip(f"{driver} cannot work on this host: {ran.stderr.strip()}")
        assert ran.returncode == 0, ran.stderr
        [c] = json.loads(rl("inspect", "--type", "container", name, check=True).stdout)
        assert c["Driver"] == driver and c["GraphDriver"]["Name"] == driver
        rows = json.loads(rl("ps", "-a", "--filter", f"name={name}", "--format", "json", check=True).stdout)
        assert [r["Driver"] for r in rows] == [driver]
    finally:
        rl("rm", "-f", name)


def test_history(rl):
    proc = rl("history", "busybox")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert "rootless import" in lines[1]
    rows = json.loads(rl("history", "--format", "json", "busybox").stdout)
    assert rows[0]["Id"].startswith("sha256:") and rows[0]["Size"] > 0
    assert rl("history", "-q", "busybox").stdout.strip() == rows[0]["Id"][7:19]


def test_history_of_a_multi_layer_image(rl, archives):
    layers = [_tar([_file("one")]), _tar([_file("two", b"22")])]
    path = archives / "two-layers.tar"
    path.write_bytes(docker_archive(layers, "hist/two:1"))
    assert rl("load", "-i", str(path)).returncode == 0
    try:
        rows = json.loads(rl("history", "--format", "json", "hist/two:1").stdout)
        assert [r["CreatedBy"] for r in rows] == ["layer 1", "layer 0"]
        assert rows[1]["Id"] == "<missing>" and rows[0]["Size"] == 2   # unpacked: the one 2-byte file
    finally:
        rl("rmi", "hist/two:1")


def test_system_df(rl):
    proc = rl("system", "df")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:5] == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    rows = json.loads(rl("system", "df", "--format", "json").stdout)
    assert [r["Type"] for r in rows] == ["Images", "Containers", "Local Volumes", "Build Cache"]
    assert rows[0]["TotalCount"] >= 1 and rows[0]["Size"] > 0


# ----------------------------------------------------------------------------- prune

def test_image_prune(tmp_path, busybox_tar, archives):
    rl = Rootless(tmp_path / "store-prune")
    try:
        assert rl("import", str(busybox_tar), "keep:1").returncode == 0
        other = archives / "other.tar"
        other.write_bytes(docker_archive([_tar([_file("other")])], "unused:1"))
        assert rl("load", "-i", str(other)).returncode == 0
        assert rl("run", "--name", "user", "keep:1", "true").returncode == 0
        # garbage: a stray blob and a half-unpacked layer
        (rl.root / "blobs/sha256" / ("f" * 64)).write_bytes(b"stray")
        (rl.root / "layers/.tmp-leftover").mkdir()
        proc = rl("image", "prune", "-f")
        assert proc.returncode == 0, proc.stderr
        assert "Total reclaimed space" in proc.stdout
        assert not (rl.root / "blobs/sha256" / ("f" * 64)).exists()
        assert not (rl.root / "layers/.tmp-leftover").exists()
        assert len(os.listdir(rl.root / "layers")) == 2  # both images are tagged
        # -a: the unused image goes, the one a container uses stays (even untagged)
        assert rl("rmi", "-f", "keep:1").returncode == 0
        out = json.loads(rl("image", "prune", "-a", "-f", "--format", "json").stdout)
        assert {"Untagged": "unused:latest"} not in out["ImagesDeleted"]
        assert {"Untagged": "unused:1"} in out["ImagesDeleted"] and out["SpaceReclaimed"] > 0
        assert len(os.listdir(rl.root / "layers")) == 1
        assert rl("export", "-o", str(archives / "user.tar"), "user").returncode == 0  # its image is whole
        assert rl("rm", "user").returncode == 0
        assert rl("image", "prune", "-f").returncode == 0
        assert os.listdir(rl.root / "layers") == [] and os.listdir(rl.root / "blobs/sha256") == []
        # without -f, a "no" answer removes nothing
        assert rl("import", str(busybox_tar), "again:1").returncode == 0
        proc = rl("image", "prune", "-a", input="n\n")
        assert proc.returncode == 0 and rl("inspect", "again:1").returncode == 0
    finally:
        subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(rl.root)], env=rl.env, timeout=60)


def test_one_reference_form_for_every_command(rl):
    """busybox, busybox:latest and docker.io/library/busybox name the same stored image
    (the store's parser and the registry's used to disagree: "No such image")."""
    import json as _json
    ids = {_json.loads(rl("inspect", ref, check=True).stdout)[0]["Id"]
           for ref in ("busybox", "busybox:latest", "docker.io/library/busybox",
                       "index.docker.io/library/busybox:latest")}
    assert len(ids) == 1
    rl("tag", "docker.io/library/busybox", "docker.io/library/samename:1", check=True)
    assert "samename" in rl("images").stdout
    rl("run", "--rm", "samename:1", "true", check=True)
    rl("rmi", "docker.io/samename:1", check=True)
    assert "samename" not in rl("images").stdout


def test_localhost_names_find_local_images_both_ways(rl):
    """Podman names what it built or imported localhost/NAME: that name finds our local NAME,
    and NAME finds an image loaded as localhost/NAME; a registry's name never falls back."""
    import json as _json
    busybox_id = _json.loads(rl("inspect", "busybox", check=True).stdout)[0]["Id"]
    assert rl("run", "--rm", "localhost/busybox", "true").returncode == 0
    rl("tag", "busybox", "localhost/onlylocal:2", check=True)
    try:
        found = _json.loads(rl("inspect", "onlylocal:2", check=True).stdout)[0]["Id"]
        assert found == busybox_id
        assert rl("run", "--rm", "onlylocal:2", "true").returncode == 0
        miss = rl("inspect", "127.0.0.1:5999/busybox")
        assert miss.returncode != 0
    finally:
        rl("rmi", "localhost/onlylocal:2", check=True)


def test_import_keeps_modes_and_times_of_files_not_owned_by_root(rl, archives, busybox_tar):
    """Debian's /usr/bin/chage is 2755 root:shadow, /etc/shadow 0640 root:shadow.  In single-uid
    mode their owner becomes root; their mode and time must stay (a lost chmod left chage
    non-executable and /etc/shadow world-readable)."""
    extra = []
    for name, data, uid, gid, mode in [("usr/bin/chage", b"#!/bin/sh\necho chage\n", 0, 42, 0o2755),
                                       ("etc/shadow", b"root:*::::::\n", 0, 42, 0o640),
                                       ("etc/daemon.conf", b"x\n", 1, 1, 0o600)]:
        info, data = _file(name, data)
        info.uid, info.gid, info.mode, info.mtime = uid, gid, mode, 1234567890
        extra.append((info, data))
    path = archives / "owners.tar"
    with tarfile.open(busybox_tar) as src, tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
        for m in src:
            if m.name.lstrip("./") not in ("etc/shadow", "usr/bin/chage", "etc/daemon.conf"):
                out.addfile(m, src.extractfile(m) if m.isreg() else None)
        for info, data in extra:
            out.addfile(info, io.BytesIO(data))
    image = f"owners-{uuid.uuid4().hex[:8]}:1"
    rl("import", str(path), image, check=True)
    try:
        proc = rl("run", "--rm", "--network", "none", image, "stat", "-c", "%n %a %u %g %Y",
                  "/usr/bin/chage", "/etc/shadow", "/etc/daemon.conf")
        assert proc.returncode == 0, proc.stderr
        owners = ["0 42", "0 42", "1 1"] if RANGE_MODE else ["0 0"] * 3
        assert proc.stdout.splitlines() == [
            f"/usr/bin/chage 2755 {owners[0]} 1234567890", f"/etc/shadow 640 {owners[1]} 1234567890",
            f"/etc/daemon.conf 600 {owners[2]} 1234567890"]
        assert rl("run", "--rm", "--network", "none", image, "/usr/bin/chage").stdout == "chage\n"
    finally:
        rl("rmi", image)
