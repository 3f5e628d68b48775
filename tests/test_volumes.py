"""Volumes, bind mounts and tmpfs (``run -v/--mount/--tmpfs``) and ``rootless volume`` (both id-map modes)."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import RANGE_MODE, needs_range

pytestmark = pytest.mark.both_modes


def run_ok(rl, *args: str) -> str:
    proc = rl("run", "--rm", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def volume_names(rl) -> list[str]:
    return rl("volume", "ls", "-q", check=True).stdout.split()


def container_count(rl) -> int:
    return len(list((rl.root / "containers").iterdir()))


def test_named_volume_persists_across_containers(rl):
    run_ok(rl, "-v", "persist:/data", "busybox", "sh", "-c", "echo kept > /data/f; mkdir /data/sub")
    assert "persist" in volume_names(rl)
    assert run_ok(rl, "-v", "persist:/other", "busybox", "cat", "/other/f") == "kept\n"
    data = rl.root / "volumes" / "persist" / "_data"
    assert (data / "f").read_text() == "kept\n"
    assert os.stat(data / "f").st_uid == os.getuid()   # container root is the caller


def test_volume_is_populated_from_the_image(rl):
    out = run_ok(rl, "-v", "etcvol:/etc", "busybox", "sh", "-c", "grep ^root: /etc/passwd; echo added > /etc/new")
    assert out.startswith("root:")
    data = rl.root / "volumes" / "etcvol" / "_data"
    assert (data / "passwd").read_text().startswith("root:")
    st, img = os.stat(data / "passwd"), os.stat(data)
    assert st.st_uid == os.getuid() and img.st_mode & 0o777 == 0o755
    # Not empty any more: no second copy (a file removed stays removed, the added one stays).
    run_ok(rl, "-v", "etcvol:/etc", "busybox", "rm", "/etc/group")
    assert run_ok(rl, "-v", "etcvol:/etc", "busybox", "sh", "-c", "ls /etc/group 2>&1; cat /etc/new").endswith("added\n")
    assert not (data / "group").exists()
    # nocopy: an empty volume stays empty.
    assert run_ok(rl, "-v", "nocopyvol:/etc:nocopy", "--entrypoint", "/bin/ls", "busybox", "-A", "/etc") == ""


def test_volume_population_keeps_owners(rl, busybox_tar, tmp_path):
    import io
    import shutil
    import tarfile
    tar = tmp_path / "owned.tar"
    shutil.copy(busybox_tar, tar)
    with tarfile.open(tar, "a") as t:
        for name, kind, mode in (("srv", tarfile.DIRTYPE, 0o750), ("srv/f", tarfile.REGTYPE, 0o640)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = kind, mode, 1000, 1000
            data = b"owned\n" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    rl("import", "-c", 'CMD ["/bin/sh"]', str(tar), "owned", check=True)
    show = ["sh", "-c", "cat /srv/f; stat -c '%u %g %a' /srv /srv/f"]
    try:
        image_view = run_ok(rl, "owned", *show)
        volume_view = run_ok(rl, "-v", "ownvol:/srv", "owned", *show)
    finally:
        rl("rmi", "owned")
    assert volume_view == image_view           # content, owners and modes as in the image
    data = rl.root / "volumes" / "ownvol" / "_data"
    if RANGE_MODE:   # the owner inside is uid 1000: sub-id start + 999 on the host
        assert volume_view == "owned\n1000 1000 750\n1000 1000 640\n"
        from .conftest import subid_range
        st = os.stat(data)
        assert (st.st_uid, st.st_mode & 0o777) == (subid_range("uid")[0] + 999, 0o750)
    else:            # only uid 0 exists: the caller owns everything
        assert volume_view.startswith("owned\n0 0 ") and (data / "f").read_text() == "owned\n"
    # A volume with sub-id owned files is removed all the same.
    rl("volume", "rm", "ownvol", check=True)
    assert not (rl.root / "volumes" / "ownvol").exists()


def test_bind_mount_rw_and_ownership_on_host(rl, tmp_path):
    host = tmp_path / "share"
    host.mkdir()
    (host / "in").write_text("from host\n")
    out = run_ok(rl, "-v", f"{host}:/mnt:rw,z", "busybox", "sh", "-c", "cat /mnt/in; echo out > /mnt/out; id -u")
    assert out == "from host\n0\n"
    st = os.stat(host / "out")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert (host / "out").read_text() == "out\n"


def test_bind_mount_read_only(rl, tmp_path):
    host = tmp_path / "ro"
    host.mkdir()
    (host / "in").write_text("x\n")
    proc = rl("run", "--rm", "-v", f"{host}:/mnt:ro", "busybox", "sh", "-c", "cat /mnt/in; touch /mnt/new")
    assert proc.returncode != 0
    assert "Read-only file system" in proc.stderr
    assert proc.stdout == "x\n" and not (host / "new").exists()
    # A single file, read-only, through --mount.
    proc = rl("run", "--rm", "--mount", f"type=bind,source={host}/in,target=/etc/in,readonly",
              "busybox", "sh", "-c", "cat /etc/in; echo y > /etc/in")
    assert proc.stdout == "x\n" and "Read-only file system" in proc.stderr
    assert (host / "in").read_text() == "x\n"


def test_tmpfs(rl):
    out = run_ok(rl, "--tmpfs", "/scratch:size=1m,mode=1770", "--mount", "type=tmpfs,target=/t2,tmpfs-size=2m",
                 "busybox", "sh", "-c", "grep -E ' /(scratch|t2) ' /proc/mounts; stat -c %a /scratch; "
                 "echo x > /scratch/f && cat /scratch/f")
    lines = out.splitlines()
    scratch = next(ln for ln in lines if " /scratch " in ln)
    t2 = next(ln for ln in lines if " /t2 " in ln)
    assert scratch.startswith("tmpfs ") and "size=1024k" in scratch and "mode=1770" in scratch
    assert t2.startswith("tmpfs ") and "size=2048k" in t2
    assert lines[-2:] == ["1770", "x"]


def test_mount_volume_forms_and_anonymous_volume(rl):
    from rootless.container.records import Containers
    from rootless.sandbox import idmap
    from rootless.image.store import Store
    from rootless.volumes import remove_container_volumes
    before = set(volume_names(rl))
    proc = rl("run", "--name", "anon-user", "-v", "/anon1", "--mount", "type=volume,target=/anon2",
              "--mount", "type=volume,source=mvol,target=/named,volume-label=k=v", "busybox",
              "sh", "-c", "echo a > /anon1/f; echo n > /named/f; ls /anon2 >/dev/null")
    assert proc.returncode == 0, proc.stderr
    new = set(volume_names(rl)) - before
    anon = sorted(n for n in new if n != "mvol")
    assert "mvol" in new and len(anon) == 2 and all(len(n) == 64 for n in anon)
    info = json.loads(rl("volume", "inspect", *anon, "mvol", check=True).stdout)
    assert all("com.docker.volume.anonymous" in v["Labels"] for v in info[:2])
    assert info[2]["Labels"] == {"k": "v"}
    rec = Containers(Store(str(rl.root))).find("anon-user")
    assert sorted(rec.config["anonymous_volumes"]) == anon
    assert sorted(rec.config["volumes"]) == sorted(anon + ["mvol"])
    # What 'rm -v' does: the anonymous volumes go, the named one stays.
    removed = remove_container_volumes(Store(str(rl.root)), rec, idmap.detect())
    assert sorted(removed) == anon
    assert rl("rm", "anon-user").returncode == 0
    left = set(volume_names(rl))
    assert "mvol" in left and not left & set(anon)
    assert run_ok(rl, "--mount", "src=mvol,dst=/m", "busybox", "cat", "/m/f") == "n\n"


@pytest.mark.parametrize("args, message", [
    (["-v", "data:relative"], "must be absolute"),
    (["-v", "sub/dir:/x"], "must be absolute or start with './'"),
    (["-v", "./not-here:/x"], "bind source path does not exist: /"),
    (["-v", "/does/not/exist:/x"], "bind source path does not exist: /does/not/exist"),
    (["-v", "/tmp:/x:rx"], "invalid mode"),
    (["-v", "/tmp:/x:ro:z"], "invalid volume specification"),
    (["-v", "a:/x"], "invalid volume name 'a'"),
    (["-v", "/tmp:/"], "cannot be '/'"),
    (["-v", "/tmp:/x", "--tmpfs", "/x/"], "duplicate mount point: /x"),
    (["--mount", "type=bind,target=/x"], "source is required"),
    (["--mount", "type=bind,source=/tmp,target=/x,colour=red"], "unexpected key 'colour'"),
    (["--mount", "type=nfs,target=/x"], "mount type 'nfs' is not supported"),
    (["--mount", "type=tmpfs,source=/tmp,target=/x"], "takes no source"),
    (["--mount", "type=volume,target=/x,tmpfs-size=1m"], "tmpfs-* options do not apply"),
    (["--mount", "type=tmpfs,target=/x,tmpfs-size=lots"], "invalid size 'lots'"),
    (["--mount", "type=volume,source=v1"], "target is required"),
    (["--tmpfs", "/x:noexec"], "not supported yet"),
    (["--tmpfs", "/x:mode=999"], "invalid mode '999'"),
    (["--tmpfs", "/x:colour=red"], "invalid tmpfs option"),
])
def test_mount_errors(rl, args, message):
    count = container_count(rl)
    proc = rl("run", "--rm", *args, "busybox", "true")
    assert proc.returncode == 125
    assert message in proc.stderr and proc.stderr.startswith("rootless: ")
    assert "Traceback" not in proc.stderr
    assert container_count(rl) == count   # refused before any container record exists


def test_volume_commands(rl):
    assert rl("volume", "create", "--label", "team=a", "cmdvol", check=True).stdout == "cmdvol\n"
    assert rl("volume", "create", "cmdvol", check=True).stdout == "cmdvol\n"   # exists: kept
    generated = rl("volume", "create", check=True).stdout.strip()
    assert len(generated) == 64
    table = rl("volume", "ls", check=True).stdout.splitlines()
    assert table[0].split() == ["DRIVER", "VOLUME", "NAME"] and "local     cmdvol" in table
    rows = json.loads(rl("volume", "ls", "--format", "json", check=True).stdout)
    assert {"cmdvol", generated} <= {r["Name"] for r in rows}
    assert rl("volume", "ls", "-q", "-f", "label=team=a", check=True).stdout == "cmdvol\n"
    (info,) = json.loads(rl("volume", "inspect", "cmdvol", check=True).stdout)
    assert info["Name"] == "cmdvol" and info["Driver"] == "local" and info["Scope"] == "local"
    assert info["Labels"] == {"team": "a"} and info["CreatedAt"][:2] == "20"
    assert info["Mountpoint"] == str(rl.root / "volumes" / "cmdvol" / "_data")
    proc = rl("volume", "inspect", "cmdvol", "nosuchvol")
    assert proc.returncode == 1 and "no such volume: nosuchvol" in proc.stderr
    assert len(json.loads(proc.stdout)) == 1
    proc = rl("volume", "create", "-")
    assert proc.returncode == 125 and "invalid volume name" in proc.stderr
    assert rl("volume", "rm", generated, check=True).stdout == generated + "\n"
    proc = rl("volume", "rm", generated)
    assert proc.returncode == 1 and "no such volume" in proc.stderr
    assert rl("volume", "rm", "-f", generated).returncode == 0


def test_volume_rm_refuses_a_volume_in_use(rl):
    rl("run", "--name", "vol-user", "-v", "usedvol:/d", "busybox", "true", check=True)
    proc = rl("volume", "rm", "usedvol")
    assert proc.returncode == 1 and "in use by container vol-user" in proc.stderr
    assert "usedvol" in volume_names(rl)
    assert "usedvol" not in rl("volume", "ls", "-q", "-f", "dangling=true", check=True).stdout.split()
    proc = rl("volume", "prune", "-f", "-a")
    assert proc.returncode == 0 and "usedvol" in volume_names(rl)
    rl("rm", "vol-user", check=True)
    assert "usedvol" in volume_names(rl)                    # volumes survive their containers
    assert rl("volume", "rm", "usedvol", check=True).stdout == "usedvol\n"
    # -f removes one in use.
    rl("run", "--name", "vol-user2", "-v", "usedvol2:/d", "busybox", "true", check=True)
    assert rl("volume", "rm", "-f", "usedvol2").returncode == 0
    rl("rm", "vol-user2", check=True)


def test_volume_prune(rl):
    rl("volume", "create", "keepme", check=True)
    assert rl("run", "--name", "anonholder", "-v", "/anon", "busybox", "true").returncode == 0
    assert rl("rm", "anonholder").returncode == 0       # without -v: the anonymous volume stays
    anon = [n for n in volume_names(rl) if len(n) == 64
            and "com.docker.volume.anonymous" in json.loads(rl("volume", "inspect", n).stdout)[0]["Labels"]]
    assert anon
    proc = rl("volume", "prune")                       # no confirmation on stdin: nothing removed
    assert set(anon) <= set(volume_names(rl))
    proc = rl("volume", "prune", "-f")
    assert proc.returncode == 0 and "Deleted Volumes:" in proc.stdout and "Total reclaimed space" in proc.stdout
    left = volume_names(rl)
    assert "keepme" in left and not set(anon) & set(left)
    proc = rl("volume", "prune", "-f", "--all")
    assert "keepme" in proc.stdout and "keepme" not in volume_names(rl)


def test_a_restarted_container_keeps_its_anonymous_volume(rl):
    from rootless.container.records import Containers
    from rootless.sandbox import idmap
    from rootless.image.store import Store
    from rootless.volumes import plan
    store = Store(str(rl.root))
    records = Containers(store)
    with store.lock():
        rec = records.create("busybox", "sha256:" + "0" * 64, ["true"], "restarted")
    try:
        maps = idmap.detect()
        first = plan(store, ["/anon", "keepvol:/named"], [], ["/t"]).create(rec, maps)
        again = plan(store, ["/anon", "keepvol:/named"], [], ["/t"]).create(records.find("restarted"), maps)
        assert first == again and len(first) == 3 and first[2].kind == "tmpfs"
        saved = records.find("restarted").config
        assert saved["volumes"][1] == "keepvol" and saved["anonymous_volumes"] == saved["volumes"][:1]
        assert [m["Destination"] for m in saved["mounts"]] == ["/anon", "/named", "/t"]
    finally:
        records.remove(records.find("restarted"), idmap.detect())


def test_rm_v_and_run_rm_remove_anonymous_volumes(rl):
    before = set(volume_names(rl))
    assert rl("run", "--rm", "-v", "/scratch", "-v", "named-kept:/keep", "busybox", "true").returncode == 0
    after = set(volume_names(rl))
    assert after - before <= {"named-kept"}             # --rm took the anonymous one, kept the named
    assert rl("run", "--name", "withanon", "-v", "/scratch2", "busybox", "true").returncode == 0
    anon = set(volume_names(rl)) - after
    assert len(anon) == 1
    assert rl("rm", "-v", "withanon").returncode == 0
    assert not anon & set(volume_names(rl))
    rl("volume", "rm", "named-kept")


def test_userns_keep_id(rl, tmp_path):
    from .conftest import RANGE_MODE
    work = tmp_path / "work"
    work.mkdir()
    proc = rl("run", "--rm", "--userns", "keep-id", "-v", f"{work}:/work", "busybox", "sh", "-c",
              "id -u; id -g; touch /work/made-inside; grep \":$(id -u):\" /etc/passwd | cut -d: -f1")
    if not RANGE_MODE:
        assert proc.returncode == 125 and "keep-id needs a subordinate id range" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    uid, gid, name = proc.stdout.split()
    assert (int(uid), int(gid)) == (os.getuid(), os.getgid())
    assert name == __import__("pwd").getpwuid(os.getuid()).pw_name
    st = (work / "made-inside").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())   # yours on the host, no sub-id
    assert rl("run", "--rm", "--userns", "bogus", "busybox", "true").returncode == 125


@needs_range   # --userns keep-id needs a subordinate id range
def test_keep_id_shows_the_images_owners_and_stores_new_files_as_the_image_would(rl):
    """With fuse-overlay, the root filesystem is shown with the image's owners (root's files as
    root's, not as yours), and what the container writes there is stored as an image with the
    same owners would be: `commit`/`cp` see the container's ids, not shifted ones."""
    proc = rl("run", "--name", "keepid-owners", "--storage-driver", "fuse-overlay", "--userns", "keep-id",
              "busybox", "sh", "-c",
              "stat -c '%u:%g' /bin /etc/passwd; touch /tmp/mine; stat -c '%u:%g' /tmp/mine; "
              "touch /bin/x 2>/dev/null && echo wrote || echo refused")
    try:
        assert proc.returncode == 0, proc.stderr
        me = f"{os.getuid()}:{os.getgid()}"
        assert proc.stdout.split() == ["0:0", "0:0", me, "refused"]
        # the file the container's user made is stored as image uid/gid = that user's ids: seen
        # from the storage's own namespace (`rootless unshare`), it belongs to the same ids
        upper = rl.container_dir("keepid-owners") / "upper" / "tmp" / "mine"
        seen = rl("unshare", "stat", "-c", "%u:%g", str(upper))
        assert seen.stdout.strip() == me, seen.stderr
    finally:
        rl("rm", "-f", "keepid-owners")


@needs_range   # --userns keep-id needs a subordinate id range
def test_keep_id_with_other_users(rl):
    """The dev-container workflow: run as yourself with keep-id, then as root (or any other
    uid) to install packages; fuse-overlay used to let only your own uid in (EACCES)."""
    for user in ("root", "1", "nobody"):
        proc = rl("run", "--rm", "--userns", "keep-id", "--storage-driver", "fuse-overlay", "-u", user,
                  "busybox", "sh", "-c", "id -u; ls / >/dev/null && touch /tmp/x && echo ok")
        assert proc.returncode == 0 and proc.stdout.split()[-1] == "ok", (user, proc.stderr)
    rl("run", "-d", "--name", "keepid-exec", "--userns", "keep-id", "--storage-driver", "fuse-overlay",
       "busybox", "sleep", "30", check=True)
    try:
        for user in ("root", "1", "nobody"):
            ex = rl("exec", "-u", user, "keepid-exec", "sh", "-c", "cat /etc/passwd >/dev/null && echo ok")
            assert ex.returncode == 0 and ex.stdout.strip() == "ok", (user, ex.stderr)
    finally:
        rl("rm", "-f", "keepid-exec")


def test_relative_bind_sources(rl, tmp_path):
    """-v ./data:/d and --mount source=./data (Docker 23+, Podman): relative to the current
    directory, kept absolute in the record so that a later start from elsewhere means the same."""
    import subprocess
    from .conftest import ROOTLESS
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("from-here\n")
    def run(*args, cwd):
        return subprocess.run([*ROOTLESS, *args], cwd=cwd, env=rl.env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    proc = run("run", "--rm", "-v", "./data:/d", "--mount", "type=bind,source=./data,target=/m,readonly",
               "busybox", "cat", "/d/f", "/m/f", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "from-here\nfrom-here\n", proc.stderr
    proc = run("run", "--name", "relative-src", "-v", "./data:/d", "busybox", "cat", "/d/f", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    try:
        again = run("start", "relative-src", cwd="/")
        assert again.returncode == 0, again.stderr
        assert rl("wait", "relative-src", check=True).stdout.strip() == "0"
        assert rl("logs", "relative-src").stdout == "from-here\n" * 2   # both runs: every container is logged
    finally:
        rl("rm", "-f", "relative-src")
