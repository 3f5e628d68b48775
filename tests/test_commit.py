"""``commit`` and ``diff``: a container's changes as a layer and an image, with every storage driver."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid

import pytest

from .conftest import RANGE_MODE, ROOTLESS, layer_tars
from .registry_server import running_registry

pytestmark = pytest.mark.both_modes

DRIVERS = ["fuse-overlay", "overlay", "vfs"]

# Adds, changes, deletes (a lower file: a whiteout; a lower directory removed and made again:
# opaque with the overlays), a hard link, a symlink, a fifo, a mode; with a range, an owner.
CHANGES = ("echo hi > /new && rm /bin/ls && echo more >> /etc/passwd && rm -rf /usr && mkdir /usr "
           "&& echo only > /usr/only && ln /new /newlink && ln -s /new /sym && mkfifo /fifo "
           "&& echo x > /mode && chmod 4711 /mode" + (" && chown 1000:1000 /new" if RANGE_MODE else ""))
EXPECTED = {("C", "/bin"), ("D", "/bin/ls"), ("C", "/etc"), ("C", "/etc/passwd"), ("A", "/new"),
            ("A", "/newlink"), ("A", "/sym"), ("A", "/fifo"), ("A", "/mode"), ("C", "/usr"),
            ("A", "/usr/only"), ("D", "/usr/bin"), ("D", "/usr/sbin")}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _made(rl, driver: str, script: str = CHANGES, *extra: str) -> str:
    name = _name("ch")
    proc = rl("run", "--name", name, "--storage-driver", driver, *extra, "busybox", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    return name


def _diff(rl, name: str) -> set[tuple[str, str]]:
    proc = rl("diff", name)
    assert proc.returncode == 0, proc.stderr
    return {tuple(line.split(" ", 1)) for line in proc.stdout.splitlines()}


def _manifest(rl, ref: str) -> dict:
    tags = json.loads((rl.root / "tags.json").read_text())
    key = next(k for k in tags if k == ref or k.endswith("/" + ref))
    return json.loads((rl.root / "blobs/sha256" / tags[key][7:]).read_text())


def _config(rl, ref: str) -> dict:
    return json.loads((rl.root / "blobs/sha256" / _manifest(rl, ref)["config"]["digest"][7:]).read_text())


def _top_layer(rl, ref: str):
    return tarfile.open(fileobj=io.BytesIO(layer_tars(rl, ref)[-1]))


@pytest.mark.parametrize("driver", DRIVERS)
def test_diff_commit_and_run_see_the_changes(rl, driver):
    name = _made(rl, driver)
    image = f"committed/{name}:1"
    try:
        assert _diff(rl, name) == EXPECTED
        proc = rl("commit", name, image)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == _manifest(rl, image)["config"]["digest"]
        # (links: fuse-overlay numbers the inodes of a lower layer's hard links by path; count them)
        check = ("stat -c '%n %u:%g %a %F' /new /newlink /sym /fifo /mode; ls /usr; "
                 "test -e /bin/ls || echo no-ls; tail -1 /etc/passwd; stat -c %h /newlink")
        out = rl("run", "--rm", "--storage-driver", driver, image, "sh", "-c", check)
        assert out.returncode == 0, out.stderr
        owner = "1000:1000" if RANGE_MODE else "0:0"
        assert out.stdout.splitlines() == [
            f"/new {owner} 644 regular file", f"/newlink {owner} 644 regular file",
            "/sym 0:0 777 symbolic link", "/fifo 0:0 644 fifo", "/mode 0:0 4711 regular file",
            "only", "no-ls", "more", "2"]
    finally:
        rl("rm", name)
        rl("rmi", image)


@pytest.mark.parametrize("driver", DRIVERS)
def test_layer_is_an_oci_layer(rl, driver):
    name = _made(rl, driver)
    image = f"committed/{name}:1"
    try:
        assert rl("commit", name, image).returncode == 0
        with _top_layer(rl, image) as tar:
            members = {m.name: m for m in tar}
        names = list(members)
        for i, n in enumerate(names):   # parents first
            parent = n.rpartition("/")[0]
            assert not parent or parent not in members or names.index(parent) < i, n
        assert members["bin/.wh.ls"].isreg() and members["bin/.wh.ls"].size == 0
        assert "bin/ls" not in members and "bin/sh" not in members   # only the changes
        if driver == "vfs":   # a copy knows what went, not that the directory was made again
            assert {"usr/.wh.bin", "usr/.wh.sbin"} <= set(members)
        else:
            assert "usr/.wh..wh..opq" in members and "usr/.wh.bin" not in members
        assert members["newlink"].islnk() and members["newlink"].linkname == "new"
        assert members["sym"].issym() and members["sym"].linkname == "/new"
        assert members["fifo"].isfifo()
        assert (members["new"].uid, members["new"].gid) == ((1000, 1000) if RANGE_MODE else (0, 0))
        assert members["mode"].mode == 0o4711
        for m in members.values():
            assert m.uname == "" and m.gname == ""
            assert not any(k.startswith(("SCHILY.xattr.user.overlay.", "SCHILY.xattr.trusted.overlay.",
                                         "SCHILY.xattr.user.fuse")) for k in m.pax_headers), m.name
        # the engine's mount points are not changes
        assert not {"etc/hosts", "etc/hostname", "etc/resolv.conf"} & set(members)
    finally:
        rl("rm", name)
        rl("rmi", image)


def test_layer_directory_is_what_unpacking_the_tar_gives(rl, tmp_path):
    """The layer directory is written along with the tar: it must hold what unpacking gives."""
    name = _made(rl, "auto")
    image = f"committed/{name}:1"
    try:
        assert rl("commit", name, image).returncode == 0
        diff_id = _config(rl, image)["rootfs"]["diff_ids"][-1]
        tar_path = tmp_path / "top.tar"
        tar_path.write_bytes(layer_tars(rl, image)[-1])
        script = f"""
import os, sys, stat
from rootless.image import layers
d = "{rl.root}/layers"
fresh = d + "/.test-" + os.urandom(4).hex()
os.mkdir(fresh, 0o755)
try:
    pid = os.fork()
    if pid == 0:     # the extraction chroots: in a child
        try:
            layers._extract_chrooted("{tar_path}", fresh, {not RANGE_MODE})
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    def whiteouts_in(p):
        return "user.overlay.opaque" in os.listxattr(p) or any(
            stat.S_ISCHR(os.lstat(os.path.join(p, n)).st_mode) for n in os.listdir(p))
    def tree(root):
        out = {{}}
        for dp, dn, fn in os.walk(root):
            for n in dn + fn:
                p = os.path.join(dp, n); st = os.lstat(p)
                data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
                out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_rdev,
                    int(st.st_mtime) if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) and not
                    whiteouts_in(p) else 0,     # unpack makes whiteouts after setting the times
                    st.st_nlink, data,
                    os.readlink(p) if stat.S_ISLNK(st.st_mode) else None,
                    os.getxattr(p, "user.overlay.opaque", follow_symlinks=False)
                    if "user.overlay.opaque" in os.listxattr(p, follow_symlinks=False) else None)
        return out
    a, b = tree(d + "/{diff_id[7:]}"), tree(fresh)
    assert a == b, sorted(set(a.items()) ^ set(b.items()))
finally:
    import shutil; shutil.rmtree(fresh)
print("same")
"""
        import subprocess
        import sys
        proc = subprocess.run([*ROOTLESS, "unshare", sys.executable, "-c", script], capture_output=True,
                              text=True, env=rl.env, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stdout + proc.stderr
    finally:
        rl("rm", name)
        rl("rmi", image)


def test_commit_keeps_the_run_config_and_applies_changes(rl):
    name = _name("cfg")
    proc = rl("run", "--name", name, "-e", "FROM_RUN=1", "-w", "/tmp", "busybox", "sh", "-c", "echo a > /a")
    assert proc.returncode == 0, proc.stderr
    image = f"committed/{name}:1"
    try:
        proc = rl("commit", "-m", "the message", "-a", "Jane <jane@example.com>", "-c", 'CMD ["cat", "/a"]',
                  "-c", "ENV ADDED=yes", "-c", "VOLUME /data", "-c", "EXPOSE 8080", name, image)
        assert proc.returncode == 0, proc.stderr
        config = _config(rl, image)
        run = config["config"]
        assert run["Cmd"] == ["cat", "/a"] and run["WorkingDir"] == "/tmp"
        assert "FROM_RUN=1" in run["Env"] and "ADDED=yes" in run["Env"]
        assert not any(e.startswith("HOSTNAME=") for e in run["Env"])
        assert run["Volumes"] == {"/data": {}} and run["ExposedPorts"] == {"8080/tcp": {}}
        assert config["author"] == "Jane <jane@example.com>"
        last = config["history"][-1]
        assert last["comment"] == "the message" and last["author"] == "Jane <jane@example.com>"
        assert last["created_by"] == "sh -c echo a > /a"      # Docker's: the container's command
        out = rl("run", "--rm", image)
        assert out.returncode == 0 and out.stdout == "a\n", out.stderr
        history = rl("history", "--no-trunc", image)
        assert history.returncode == 0 and "the message" in history.stdout, history.stderr
        assert "sh -c echo a > /a" in history.stdout
    finally:
        rl("rm", name)
        rl("rmi", image)


def test_commit_without_changes_adds_no_layer(rl):
    name = _made(rl, "auto", "true")
    try:
        proc = rl("commit", name)
        assert proc.returncode == 0, proc.stderr
        image_id = proc.stdout.strip()
        assert _diff(rl, name) == set()
        out = rl("run", "--rm", image_id, "true")
        assert out.returncode == 0, out.stderr
        tags = [t for t in json.loads((rl.root / "tags.json").read_text()) if image_id[7:19] in t]
        assert tags, "an unnamed commit is named by its id, as load names unnamed images"
        config = _config(rl, tags[0])
        assert len(config["rootfs"]["diff_ids"]) == len(_config(rl, "busybox:latest")["rootfs"]["diff_ids"])
        assert config["history"][-1]["empty_layer"] is True
        for t in tags:
            rl("rmi", t)
    finally:
        rl("rm", name)


def test_commit_of_a_running_container(rl):
    name = _name("live")
    proc = rl("run", "-d", "--name", name, "busybox", "sh", "-c", "echo live > /live; sleep 60")
    assert proc.returncode == 0, proc.stderr
    image = f"committed/{name}:1"
    try:
        for _ in range(100):
            if ("A", "/live") in _diff(rl, name):
                break
            __import__("time").sleep(0.1)
        proc = rl("commit", name, image)
        assert proc.returncode == 0, proc.stderr
        assert rl("exec", name, "true").returncode == 0        # still running, not left frozen
        out = rl("run", "--rm", image, "cat", "/live")
        assert out.stdout == "live\n", out.stderr
        proc = rl("commit", "--pause=false", name, image)
        assert proc.returncode == 0, proc.stderr
    finally:
        rl("rm", "-f", name)
        rl("rmi", image)


def test_same_changes_same_layer_with_source_date_epoch(rl):
    script = "mkdir -p /data/sub && echo same > /data/sub/f && ln /data/sub/f /data/g && rm /bin/ls"
    first, second = _made(rl, "auto", script), _made(rl, "auto", script)
    images = [f"committed/{first}:1", f"committed/{second}:1"]
    try:
        for name, image in zip((first, second), images):
            proc = rl("commit", name, image, env={"SOURCE_DATE_EPOCH": "1000000000"})
            assert proc.returncode == 0, proc.stderr
        ids = [_config(rl, image)["rootfs"]["diff_ids"][-1] for image in images]
        assert ids[0] == ids[1]
        with _top_layer(rl, images[0]) as tar:
            assert all(m.mtime <= 1000000000 for m in tar)
        bad = rl("commit", first, "x:1", env={"SOURCE_DATE_EPOCH": "yesterday"})
        assert bad.returncode == 125 and "SOURCE_DATE_EPOCH" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        for name in (first, second):
            rl("rm", name)
        for image in images:
            rl("rmi", image)


def test_diff_json_and_errors(rl):
    name = _made(rl, "auto", "echo x > /x && rm /bin/ls")
    try:
        proc = rl("diff", "--format", "json", name)
        assert proc.returncode == 0, proc.stderr
        found = json.loads(proc.stdout)
        assert {"Path": "/x", "Kind": 1} in found and {"Path": "/bin/ls", "Kind": 2} in found
        assert {"Path": "/bin", "Kind": 0} in found
        assert [f["Path"] for f in found] == sorted(f["Path"] for f in found)
    finally:
        rl("rm", name)
    for args in (("diff", "no-such-container"), ("commit", "no-such-container")):
        proc = rl(*args)
        assert proc.returncode == 125 and "no such container" in proc.stderr, proc.stderr
    name = _made(rl, "auto", "true")
    try:
        bad = rl("commit", "-c", "RUN echo", name)
        assert bad.returncode == 125 and "RUN is not supported" in bad.stderr
    finally:
        rl("rm", name)


@pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry is not installed")
def test_committed_image_saves_pushes_and_pulls(rl, tmp_path):
    name = _made(rl, "auto")
    image = f"committed/{name}:1"
    try:
        assert rl("commit", name, image).returncode == 0
        archive = tmp_path / "saved.tar"
        proc = rl("save", "-o", str(archive), image)
        assert proc.returncode == 0, proc.stderr
        with tarfile.open(archive) as tar:
            assert any(n.endswith(_config(rl, image)["rootfs"]["diff_ids"][-1][7:]) or "blobs/sha256/" in n
                       for n in tar.getnames())
        with running_registry() as reg:
            remote = f"{reg.host}/committed/{name}:1"
            proc = rl("push", image, remote)
            assert proc.returncode == 0, proc.stderr
            assert rl("rmi", image).returncode == 0
            proc = rl("pull", remote)
            assert proc.returncode == 0, proc.stderr
            out = rl("run", "--rm", remote, "sh", "-c", "cat /usr/only; test -e /bin/ls || echo no-ls")
            assert out.stdout == "only\nno-ls\n", out.stderr
            rl("rmi", remote)
    finally:
        rl("rm", name)
        rl("rmi", image)


def test_builder_api_layer_of_and_new_image(rl):
    """What the builder calls for a RUN step: layer_of (consuming the container's files), then
    new_image; a copy of the same changes gives the same layer."""
    from rootless.container.commit import layer_of
    from rootless.image.importer import new_image
    from rootless.image.store import Store
    from rootless.sandbox import idmap
    script = "mkdir /built && echo built > /built/f && ln /built/f /built/g && rm /bin/ls"
    kept, consumed = _made(rl, "auto", script), _made(rl, "auto", script)
    store, maps = Store(str(rl.root)), idmap.detect()
    image = f"built/{consumed}:1"
    try:
        copied, _ = layer_of(store, maps, kept, source_date_epoch=1)
        taken, warnings = layer_of(store, maps, consumed, source_date_epoch=1, consume=True)
        assert not taken.empty and taken.diff_id == copied.diff_id and warnings == []
        assert rl("rm", consumed).returncode == 0      # the layer's files outlive the container's
        with store.lock():
            img = new_image(store, store.resolve("busybox"), [taken.diff_id], {"Cmd": ["cat", "/built/g"]},
                            [{"created_by": "RUN " + script}], [image])
        assert img.diff_ids[-1] == taken.diff_id
        out = rl("run", "--rm", image)
        assert out.returncode == 0 and out.stdout == "built\n", out.stderr
        history = rl("history", "--no-trunc", image)
        assert "RUN " + script in history.stdout
        nothing = _made(rl, "auto", "true")
        empty, _ = layer_of(store, maps, nothing, consume=True)
        assert empty.empty
        rl("rm", nothing)
    finally:
        rl("rm", kept)
        rl("rm", consumed)
        rl("rmi", image)


@pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry is not installed")
def test_commit_of_a_pulled_image_with_compressed_layers_pushes(rl, busybox_tar):
    """The new manifest names the pulled image's gzip layers and the new uncompressed one."""
    from .test_images import push_image
    with running_registry() as reg:
        push_image(reg, "gz/base:1", [busybox_tar.read_bytes()])
        base = f"{reg.host}/gz/base:1"
        assert rl("pull", "-q", base).returncode == 0
        name = _name("gz")
        assert rl("run", "--name", name, base, "sh", "-c", "echo on-gzip > /added").returncode == 0
        target = f"{reg.host}/gz/committed:1"
        try:
            proc = rl("commit", name, target)
            assert proc.returncode == 0, proc.stderr
            types = [d["mediaType"] for d in _manifest(rl, target)["layers"]]
            # (the store had busybox's layer: the pull kept no gzip blob, so the plain one is named)
            assert types[-1] == "application/vnd.oci.image.layer.v1.tar" and len(types) == 2
            proc = rl("push", target)
            assert proc.returncode == 0, proc.stderr
            assert rl("rmi", target).returncode == 0
            assert rl("pull", "-q", target).returncode == 0
            out = rl("run", "--rm", target, "cat", "/added")
            assert out.stdout == "on-gzip\n", out.stderr
        finally:
            rl("rm", name)
            rl("rmi", target)
            rl("rmi", base)


def test_mount_points_of_volumes_are_not_changes(rl, tmp_path):
    name = _name("mp")
    (tmp_path / "in").mkdir()
    proc = rl("run", "--name", name, "--network", "none", "-v", f"{tmp_path / 'in'}:/debs/deep:ro",
              "--tmpfs", "/scratch", "busybox", "sh", "-c", "echo x > /made")
    assert proc.returncode == 0, proc.stderr
    try:
        assert _diff(rl, name) == {("A", "/made")}
    finally:
        rl("rm", name)
