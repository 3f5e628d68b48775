"""In-process checks of the Operations without mounting: lookup counts and
node bookkeeping, command line parsing, the ownership xattr format."""
from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest

from fuse_overlay import cli, ownership
from fuse_overlay.fs import Config, OverlayFS

CTX = SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=0, umask=0o022)


@pytest.fixture
def ops(tmp_path):
    low, up, work = tmp_path / "l", tmp_path / "u", tmp_path / "w"
    for d in (low / "d", up, work):
        d.mkdir(parents=True)
    (low / "d" / "f").write_text("lower\n")
    (low / "g").write_text("g\n")
    return OverlayFS(Config(upper=os.fsencode(up), lowers=[os.fsencode(low)], work=os.fsencode(work)))


async def test_lookup_counts_and_forget(ops):
    d = await ops.lookup(pyfuse3.ROOT_INODE, b"d", CTX)
    f1 = await ops.lookup(d.st_ino, b"f", CTX)
    f2 = await ops.lookup(d.st_ino, b"f", CTX)
    assert f1.st_ino == f2.st_ino
    assert ops.table.get(f1.st_ino).lookups == 2
    ops.forget([(f1.st_ino, 1)])
    assert ops.table.get(f1.st_ino).lookups == 1
    ops.forget([(f1.st_ino, 1), (d.st_ino, 1)])
    assert set(ops.table.nodes) == {pyfuse3.ROOT_INODE}
    assert not ops.table.dentries
    ops.forget([(12345, 1)])          # unknown: ignored, never raises


async def test_errors_are_fuse_errors(ops):
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(999999, CTX)
    assert e.value.errno == errno.ENOENT
    neg = await ops.lookup(pyfuse3.ROOT_INODE, b"nope", CTX)
    assert neg.st_ino == 0              # negative entry, no reference
    assert set(ops.table.nodes) == {pyfuse3.ROOT_INODE}
    assert (await ops.lookup(pyfuse3.ROOT_INODE, b".wh.g", CTX)).st_ino == 0
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.rmdir(pyfuse3.ROOT_INODE, b"g", CTX)
    assert e.value.errno == errno.ENOTDIR


async def test_create_unlink_copy_up_bookkeeping(ops, tmp_path):
    fi, attr = await ops.create(pyfuse3.ROOT_INODE, b"new", stat.S_IFREG | 0o600,
                                os.O_WRONLY | os.O_CREAT, CTX)
    assert ops.table.get(attr.st_ino).lookups == 1
    await ops.write(fi.fh, 0, b"abc")
    await ops.release(fi.fh)
    assert (tmp_path / "u" / "new").read_bytes() == b"abc"
    d = await ops.lookup(pyfuse3.ROOT_INODE, b"d", CTX)
    f = await ops.lookup(d.st_ino, b"f", CTX)
    fi = await ops.open(f.st_ino, os.O_RDWR, CTX)            # copy-up
    assert (tmp_path / "u" / "d" / "f").read_text() == "lower\n"
    assert (await ops.getattr(f.st_ino, CTX)).st_ino == f.st_ino   # number kept
    await ops.release(fi.fh)
    await ops.unlink(d.st_ino, b"f", CTX)
    st = os.lstat(tmp_path / "u" / "d" / "f")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 or (tmp_path / "u" / "d" / ".wh.f").exists()
    assert ops.table.get(f.st_ino).dead
    assert not os.listdir(tmp_path / "w")


def test_cli_parsing():
    o = cli.parse_args(["-f", "-o", r"lowerdir=/a\:b:/c,upperdir=/u", "-oworkdir=/w,notify_fd=0", "/m"])
    assert o.lowers == ["/a:b", "/c"] and o.upper == "/u" and o.work == "/w"
    assert o.foreground and o.notify_fd == 0 and o.mountpoint == "/m"
    with pytest.raises(cli.UsageError):
        cli.parse_args(["-o", "lowerdir=/a,writeback=maybe", "/m"])


def test_ownership_format_round_trip():
    for mode, rdev in [(stat.S_IFREG | 0o4755, 0), (stat.S_IFDIR | 0o1777, 0),
                       (stat.S_IFCHR | 0o620, os.makedev(5, 1)), (stat.S_IFBLK | 0o660, os.makedev(8, 3))]:
        v = ownership.format_value(33, 44, mode, rdev)
        assert ownership.parse(v, stat.S_IFREG | 0o600, 0) == ownership.Override(33, 44, mode, rdev)
    assert ownership.parse(b"0:0:0755", stat.S_IFDIR | 0o700, 0).mode == stat.S_IFDIR | 0o755
    assert ownership.parse(b"garbage", stat.S_IFREG, 0) is None


async def test_internal_errors_are_counted_and_recorded(tmp_path):
    """A handler failing with a Python exception answers EIO, and says so where the owner of
    the mount looks (WORKDIR/fuse-overlay.errors), not only in a log nobody reads."""
    low, up, work = tmp_path / "l", tmp_path / "u", tmp_path / "w"
    for d in (low, up, work):
        d.mkdir()
    errors = tmp_path / "fuse-overlay.errors"
    ops = OverlayFS(Config(upper=os.fsencode(up), lowers=[os.fsencode(low)], work=os.fsencode(work),
                           errors_path=os.fsencode(errors)))

    def broken(*_args):
        raise KeyError("a bug")
    ops.layers.probe = broken
    for _ in range(2):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(pyfuse3.ROOT_INODE, b"x", CTX)
        assert e.value.errno == errno.EIO
    assert ops.internal_errors == 2
    lines = errors.read_text().splitlines()
    assert len(lines) == 2 and "lookup: KeyError" in lines[0]


def test_long_backing_paths_go_through_directory_fds(tmp_path):
    """A backing path too long for one system call is reached through an O_PATH fd of a
    directory on the way (``/proc/self/fd/N/rest``); short ones stay plain paths; the fds
    are closed once no request runs."""
    from fuse_overlay.layers import PATH_ROOM, Layers
    root = os.fsencode(tmp_path)
    names = [b"%02d" % i + b"x" * 248 for i in range(20)]
    fd = os.open(root, os.O_PATH)
    try:
        for n in names:
            os.mkdir(n, dir_fd=fd)
            new = os.open(n, os.O_PATH, dir_fd=fd)
            os.close(fd)
            fd = new
        os.close(os.open(b"f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    layers = Layers(None, [root])
    assert layers.real(1, b"/a") == root + b"/a" and not layers.held
    rel = b"/" + b"/".join(names) + b"/f"
    real = layers.real(1, rel)
    assert real.startswith(b"/proc/self/fd/") and len(real) < PATH_ROOM and real.endswith(b"/f")
    assert stat.S_ISREG(os.lstat(real).st_mode)
    assert len(layers.held) == 1        # ~5000 bytes: one directory fd, then the rest
    assert layers.real(1, rel[:-1] + b"g") == real[:-1] + b"g"    # same directory: fd reused
    assert len(layers.held) == 1
    layers.forget_dirfds()              # a request that may move directories began or ended
    assert layers.real(1, rel) != real and len(layers.held) == 2
    held = list(layers.held)
    layers.release()
    assert not layers.held
    for fd in held:
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(FileNotFoundError):
        layers.real(1, b"/missing" + rel)


async def test_handlers_close_long_path_fds(ops):
    ops.layers.held.append(os.open("/", os.O_PATH))     # as if a handler reached a long path
    await ops.getattr(pyfuse3.ROOT_INODE, CTX)
    assert not ops.layers.held


def test_loop_scheduler_runs_tasks_locks_and_threads():
    """loop.run (the daemon's scheduler, in place of trio): nursery tasks, a lock handed to
    its waiters in order, a function in a worker thread while other tasks go on, and an
    error of a task raised out of run()."""
    import threading
    import time as _time

    from fuse_overlay import loop

    seen: list[str] = []

    async def locked(lock, name: str) -> None:
        async with lock:
            seen.append(f"{name}+")
            await loop.run_sync_in_thread(_time.sleep, 0.01)
            seen.append(f"{name}-")

    async def threaded() -> None:
        seen.append(f"thread={await loop.run_sync_in_thread(lambda: threading.current_thread().name)}")

    async def main() -> None:
        lock = loop.Lock()
        assert isinstance(lock, loop._MiniLock)
        async with loop._OpenNursery() as n:
            for name in ("a", "b", "c"):
                n.start_soon(locked, lock, name)
            n.start_soon(threaded)
        assert not lock.locked()

    loop.run(main)
    assert [s for s in seen if not s.startswith("thread")] == ["a+", "a-", "b+", "b-", "c+", "c-"]
    assert "thread=fuse-overlay-copy" in seen

    async def failing() -> None:
        raise ValueError("boom")

    async def main2() -> None:
        async with loop._OpenNursery() as n:
            n.start_soon(failing)

    with pytest.raises(ValueError, match="boom"):
        loop.run(main2)
    assert not loop._state.running


def test_options_podman_and_buildah_pass():
    """containers/storage's mount_program options: an empty item, volatile, and with SELinux a
    quoted context whose value holds a comma; fuse-overlayfs's fsync and static_nlink."""
    o = cli.parse_args(["-o", 'lowerdir=/l1:/l2,upperdir=/u,workdir=/w,,volatile,'
                        'context="system_u:object_r:container_file_t:s0:c1,c2",fsync=0,static_nlink', "/m"])
    assert (o.lowers, o.upper, o.work, o.mountpoint) == (["/l1", "/l2"], "/u", "/w", "/m")
    with pytest.raises(cli.UsageError, match="squash_to_root"):
        cli.parse_args(["-o", "lowerdir=/l,squash_to_root", "/m"])
