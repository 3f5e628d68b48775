"""``rootless cp``: files between a container and the host, as tar streams.

A child process works inside the container's view of its files: for a running container it
joins the container's user and mount namespaces (its root is the container's root, so no
path can lead out of it); for a stopped one it enters a user namespace with the caller's
maps, mounts the container's overlay (or uses its copy) privately and chroots into it.
It writes or reads a tar on a pipe; this process does the host side as the caller.

Copying out, the tar comes from the container, which is not trusted: it is extracted on the
host only after every member passed ``_check`` (no absolute paths, no ``..``, nothing through
a symlink the archive itself made, hard links only to earlier members).  Copying in, files
become root's in the container (as ``docker cp`` without ``-a``).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
from typing import NoReturn

from .records import Containers, Record, running
from ..errors import RootlessError, UsageError
from ..sandbox import idmap, libc
from ..sandbox.userns import fork_into_userns, wait
from ..image.store import Store


def split(arg: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` -> (container, path); a host path -> (None, path)."""
    if arg == "-" or arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    name, _, path = arg.partition(":")
    return name, path


def _enter(store: Store, rec: Record) -> None:
    """Stopped container: in a child that is root of a user namespace, mount its files and chroot."""
    directory = store.container_dir(rec.id)
    root = os.path.join(directory, "rootfs")
    upper = os.path.join(directory, "upper")
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    if os.path.isdir(upper):
        from .export import layer_dirs_of
        lowers = layer_dirs_of(store, rec.id, rec.image_id, rec.image)[:-1]  # without the upper
        work = os.path.join(directory, "work")
        os.makedirs(work, exist_ok=True)
        os.makedirs(root, exist_ok=True)
        libc.mount("overlay", root, "overlay", 0,
                   f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work},userxattr")
    os.chroot(root)
    os.chdir("/")


def _child(store: Store, rec: Record, is_running: bool, job, fd: int) -> NoReturn:
    code = 1
    try:
        if not is_running:   # (decided outside: in here /proc is the container's)
            _enter(store, rec)
        job(fd)
        code = 0
    except BaseException as e:  # noqa: BLE001 - one sentence to the caller
        os.write(2, f"rootless: cp: {e}\n".encode())
    finally:
        os._exit(code)


def _run_inside(store: Store, rec: Record, job, fd: int) -> int:
    """Run ``job(fd)`` in the container's view; returns the child's pid."""
    maps = idmap.detect()
    if running(rec) and rec.init_pid:
        fds = [os.open(f"/proc/{rec.init_pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in ("user", "mnt")]
        pid = os.fork()
        if pid == 0:
            try:
                libc.setns(fds[0], libc.CLONE_NEWUSER)
                libc.setns(fds[1], libc.CLONE_NEWNS)
                os.chdir("/")
            except BaseException as e:  # noqa: BLE001
                os.write(2, f"rootless: cp: cannot enter the container: {e}\n".encode())
                os._exit(1)
            _child(store, rec, True, job, fd)
        for f in fds:
            os.close(f)
        return pid
    pid, sock = fork_into_userns(maps, lambda s: (s.close(), _child(store, rec, False, job, fd))[1],
                                 name="rootless-cp")
    sock.close()
    return pid


def copy_out(store: Store, name: str, src: str, dest: str) -> None:
    rec = Containers(store).find(name)
    r, w = os.pipe()

    def produce(fd: int) -> None:
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            if not os.path.lexists(src):
                raise FileNotFoundError(f"{src} does not exist in container {rec.name}")
            tar.add(src, arcname=os.path.basename(src.rstrip("/")) or ".")
    pid = _run_inside(store, rec, produce, w)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as stream:
            if dest == "-":
                shutil.copyfileobj(stream, sys.stdout.buffer)
            else:
                _extract_on_host(stream, dest)
    finally:
        if wait(pid) != 0:
            raise RootlessError(f"cp from {rec.name}:{src} failed (see the message above)")


def _check(members: list[tarfile.TarInfo]) -> None:
    links: set[str] = set()
    names: set[str] = set()
    for m in members:
        path = os.path.normpath(m.name)
        parts = path.split("/")
        if m.name.startswith("/") or ".." in parts:
            raise RootlessError(f"refused: the container's archive names '{m.name}', outside the destination")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise RootlessError(f"refused: '{m.name}' in the container's archive goes through a symlink")
        if m.islnk():
            target = os.path.normpath(m.linkname)
            if target not in names:
                raise RootlessError(f"refused: hard link '{m.name}' points outside the archive")
        if m.issym():
            links.add(path)
        if m.ischr() or m.isblk():
            raise RootlessError(f"refused: device node '{m.name}' cannot be copied to the host")
        names.add(path)


def _extract_on_host(stream, dest: str) -> None:
    data = io.BytesIO(stream.read())  # checked as a whole before anything is written
    with tarfile.open(fileobj=data, mode="r:") as tar:
        members = tar.getmembers()
        _check(members)
        top = members[0].name.split("/")[0] if members else ""
        parent = dest if os.path.isdir(dest) else os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise UsageError(f"cannot copy to {dest}: {parent} is not a directory")
        tmp = tempfile.mkdtemp(dir=parent, prefix=".rootless-cp-")
        try:
            for m in members:
                m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
                m.mode &= 0o7777 & ~0o6000   # no set-id bits on the host
            tar.extractall(tmp, members=members)
            target = os.path.join(dest, top) if os.path.isdir(dest) else dest
            if os.path.isdir(target) and os.path.isdir(os.path.join(tmp, top)):
                for entry in os.listdir(os.path.join(tmp, top)):
                    os.replace(os.path.join(tmp, top, entry), os.path.join(target, entry))
            else:
                os.replace(os.path.join(tmp, top), target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def copy_in(store: Store, src: str, name: str, dest: str) -> None:
    rec = Containers(store).find(name)
    buf = io.BytesIO()
    if src == "-":
        buf.write(sys.stdin.buffer.read())
    else:
        if not os.path.lexists(src):
            raise UsageError(f"cannot copy {src}: no such file or directory")
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                return info
            tar.add(src, arcname=os.path.basename(src.rstrip("/")), filter=as_root)
    payload = buf.getvalue()
    # Without a sub-id range only uid 0 exists inside: entries owned by others become root's
    # (tarfile skips an entry's chmod and utime when its chown fails).
    single = idmap.detect().single
    r, w = os.pipe()

    def consume(fd: int) -> None:
        with os.fdopen(fd, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            target_dir = dest if os.path.isdir(dest) else os.path.dirname(dest.rstrip("/")) or "/"
            if not os.path.isdir(target_dir):
                raise FileNotFoundError(f"{target_dir} is not a directory in container {rec.name}")
            rename = None if os.path.isdir(dest) or src == "-" else os.path.basename(dest.rstrip("/"))
            for m in tar:
                if rename:
                    head, _, rest = m.name.partition("/")
                    m.name = rename + ("/" + rest if rest else "")
                if single:
                    m.uid = m.gid = 0
                tar.extract(m, target_dir, numeric_owner=True)
    pid = _run_inside(store, rec, consume, r)
    os.close(r)
    try:
        with os.fdopen(w, "wb") as out:
            out.write(payload)
    except BrokenPipeError:
        pass
    if wait(pid) != 0:
        raise RootlessError(f"cp to {rec.name}:{dest} failed (see the message above)")
