"""Single-file images: ``save --format squashfs`` and ``run FILE.sqfs`` (image/squashfs.py,
container/squashmount.py).  The file carries the merged root filesystem (whiteouts applied)
and the image's config; containers of one file share one squashfuse mount, which ends with
the last of them."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from .conftest import RANGE_MODE

pytestmark = pytest.mark.both_modes


def _squashfuse_pids(path: Path) -> list[int]:
    """Live squashfuse processes serving ``path`` (zombies have no command line)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"squashfuse") and os.fsencode(str(path)) in argv:
            found.append(int(d.name))
    return found


def _wait_gone(path: Path, seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (pids := _squashfuse_pids(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@pytest.fixture(scope="module")
def two_layers(rl_session, tmp_path_factory):
    """An image of two layers (the second deletes /bin/cat and adds /data/f) with a config of
    its own, saved as a squashfs file."""
    rl = rl_session
    name = f"sq-{uuid.uuid4().hex[:8]}"
    image = f"sqimg-{uuid.uuid4().hex[:8]}"
    chown = "chown 1000:1000 /data/f && " if RANGE_MODE else ""
    rl("run", "--name", name, "busybox", "sh", "-c",
       f"rm /bin/cat && mkdir /data && echo hello > /data/f && {chown}true", check=True)
    rl("commit", "-c", "ENV FOO=bar", "-c", "WORKDIR /data", "-c", 'CMD ["sh", "-c", "echo from-cmd $FOO; pwd"]',
       name, image, check=True)
    rl("rm", name, check=True)
    out = tmp_path_factory.mktemp("sqfs") / "img.sqfs"
    proc = rl("save", "--format", "squashfs", image, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    yield out
    rl("rmi", image)


def test_run_a_squashfs_file_as_the_image(rl, two_layers):
    proc = rl("run", "--rm", str(two_layers))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["from-cmd bar", "/data"]
    proc = rl("run", "--rm", str(two_layers), "sh", "-c",
              "test ! -e /bin/cat && echo nocat; read x < /data/f; echo $x; ls -n /data/f; "
              "echo w > /new && read y < /new && echo $y")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "nocat"                      # the upper layer's deletion applied
    assert lines[1] == "hello"
    owner = lines[2].split()[2:4]
    assert owner == (["1000", "1000"] if RANGE_MODE else ["0", "0"])
    assert lines[3] == "w"                          # the container writes above the file


def test_the_file_is_never_changed_and_a_relative_path_works(rl, two_layers):
    before = hashlib.sha256(two_layers.read_bytes()).hexdigest()
    proc = rl("run", "--rm", "-w", "/", str(two_layers), "sh", "-c", "rm -rf /data /bin && echo gone")
    assert proc.returncode == 0 and proc.stdout == "gone\n", proc.stderr
    assert hashlib.sha256(two_layers.read_bytes()).hexdigest() == before
    cwd = os.getcwd()
    os.chdir(two_layers.parent)
    try:
        proc = rl("run", "--rm", "img.sqfs", "sh", "-c", "read x < /data/f; echo $x")
    finally:
        os.chdir(cwd)
    assert proc.returncode == 0 and proc.stdout == "hello\n", proc.stderr


def test_containers_of_one_file_share_one_mount_that_ends_with_the_last(rl, two_layers):
    names = [f"sqd-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        for name in names:
            proc = rl("run", "-d", "--name", name, str(two_layers), "sleep", "60")
            assert proc.returncode == 0, proc.stderr
        pids = _squashfuse_pids(two_layers)
        assert len(pids) == 1, pids
        proc = rl("exec", names[0], "sh", "-c", "read x < /data/f; echo $x")
        assert proc.stdout == "hello\n", proc.stderr
        rl("rm", "-f", names[0], names[1], check=True)
        assert _squashfuse_pids(two_layers) == pids       # one container still uses it
        rl("rm", "-f", names[2], check=True)
        names = []
        assert _wait_gone(two_layers) == []
        run = Path(rl.env["XDG_RUNTIME_DIR"]) / "rootless" / "sqfs"
        assert not list(run.glob("*/state"))               # the mount's state went with it
    finally:
        if names:
            rl("rm", "-f", *names)


def test_a_mount_ended_is_made_again(rl, two_layers):
    for _ in range(2):
        proc = rl("run", "--rm", str(two_layers), "sh", "-c", "read x < /data/f; echo $x")
        assert proc.returncode == 0 and proc.stdout == "hello\n", proc.stderr
        assert _wait_gone(two_layers) == []


def test_create_then_start_finds_the_file(rl, two_layers):
    name = f"sqc-{uuid.uuid4().hex[:8]}"
    try:
        rl("create", "--name", name, str(two_layers), "sh", "-c", "echo started $FOO", check=True)
        proc = rl("start", "-a", name)
        assert proc.returncode == 0 and proc.stdout == "started bar\n", proc.stderr
        info = json.loads(rl("inspect", name, check=True).stdout)[0]
        assert info["Config"]["Image"] == str(two_layers)
        assert info["Driver"] == "fuse-overlay"      # auto: the kernel's overlay takes no FUSE lower layer
        assert any(w in info["GraphDriver"]["Data"]["Why"] for w in ("squashfs", "single-uid"))
    finally:
        rl("rm", "-f", name)
    assert _wait_gone(two_layers) == []


def test_files_that_are_not_squashfs_images(rl, tmp_path):
    fake = tmp_path / "fake.sqfs"
    fake.write_bytes(b"not a squashfs")
    proc = rl("run", "--rm", str(fake), "true")
    assert proc.returncode == 125
    assert "is not a squashfs file" in proc.stderr and "save --format squashfs" in proc.stderr
    bare = tmp_path / "bare.sqfs"
    import subprocess
    (tmp_path / "tree").mkdir()
    subprocess.run(["mksquashfs", str(tmp_path / "tree"), str(bare), "-quiet", "-no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    proc = rl("run", "--rm", str(bare), "true")
    assert proc.returncode == 125 and "without an image config" in proc.stderr
    proc = rl("run", "--rm", str(tmp_path / "missing.sqfs"), "true")
    assert proc.returncode == 125 and "not in the local store" in proc.stderr


def test_save_squashfs_usage(rl, tmp_path):
    proc = rl("save", "--format", "squashfs", "busybox")
    assert proc.returncode != 0 and "-o FILE.sqfs" in proc.stderr
    proc = rl("save", "--format", "squashfs", "busybox", "busybox", "-o", str(tmp_path / "x.sqfs"))
    assert proc.returncode != 0 and "one image" in proc.stderr
    proc = rl("save", "--format", "squashfs", "busybox", "-o", str(tmp_path / "nodir" / "x.sqfs"))
    assert proc.returncode != 0 and "cannot write" in proc.stderr
    assert not (tmp_path / "nodir").exists()
    assert os.listdir(tmp_path) == []


def test_commit_and_export_say_why_not(rl, two_layers):
    name = f"sqx-{uuid.uuid4().hex[:8]}"
    try:
        rl("run", "--name", name, str(two_layers), "true", check=True)
        for args in (("commit", name, "sq-committed"), ("export", "-o", "/dev/null", name), ("diff", name)):
            proc = rl(*args)
            assert proc.returncode == 125, (args, proc.stdout, proc.stderr)
            assert f"runs the squashfs image {two_layers}" in proc.stderr, (args, proc.stderr)
    finally:
        rl("rm", "-f", name)


def test_storage_drivers(rl, two_layers):
    proc = rl("run", "--rm", "--storage-driver", "vfs", str(two_layers), "sh", "-c", "read x < /data/f; echo $x")
    assert proc.returncode == 0 and proc.stdout == "hello\n", proc.stderr
    proc = rl("run", "--rm", "--storage-driver", "overlay", str(two_layers), "true")
    assert proc.returncode == 125 and "--storage-driver overlay cannot run a squashfs image" in proc.stderr
    assert _wait_gone(two_layers) == []


@pytest.mark.skipif(not RANGE_MODE, reason="keep-id is refused only with a subordinate id range")
def test_keep_id_is_refused_with_the_reason(rl, two_layers):
    proc = rl("run", "--rm", "--userns", "keep-id", str(two_layers), "true")
    assert proc.returncode == 125 and "cannot run a squashfs image yet" in proc.stderr
