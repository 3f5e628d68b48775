"""``rootless cp``: files between a container and the host, as tar streams.

The stream faces (the API's ``/containers/{id}/archive``; the CLI's ``cp`` uses them too):
``stat_path`` (Docker's stat of a path in the container), ``archive_out`` (a tar of a path
written to a file object), ``archive_in`` (a tar read from a file object, extracted into a
directory of the container).

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

import datetime
import io
import json
import os
import shutil
import stat as stat_mod
import sys
import tarfile
import tempfile
from typing import Any, BinaryIO, NoReturn

from .records import Containers, Record, running
from ..errors import NotFound, RootlessError, UsageError
from ..sandbox import idmap, libc, overlay
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
        overlay.mount(root, list(reversed(lowers)), upper, work)
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


# --- the streams ------------------------------------------------------------------------

# Go's os.FileMode bits (Docker's stat JSON carries them, not st_mode's)
_GO_TYPES = ((stat_mod.S_ISDIR, 1 << 31), (stat_mod.S_ISLNK, 1 << 27), (stat_mod.S_ISBLK, 1 << 26),
             (stat_mod.S_ISCHR, (1 << 26) | (1 << 21)), (stat_mod.S_ISFIFO, 1 << 25), (stat_mod.S_ISSOCK, 1 << 24))


def go_file_mode(mode: int) -> int:
    out = mode & 0o777
    for test, bit in _GO_TYPES:
        if test(mode):
            out |= bit
            break
    for flag, bit in ((stat_mod.S_ISUID, 1 << 23), (stat_mod.S_ISGID, 1 << 22), (stat_mod.S_ISVTX, 1 << 20)):
        if mode & flag:
            out |= bit
    return out


def _stat_here(path: str) -> dict[str, Any]:
    """Docker's stat of ``path`` (in the container's view): name, size, mode, mtime, linkTarget."""
    st = os.lstat(path)
    when = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
    link = os.readlink(path) if stat_mod.S_ISLNK(st.st_mode) else ""
    if link and not link.startswith("/"):
        link = os.path.normpath(os.path.join(os.path.dirname(path.rstrip("/")) or "/", link))
    return {"name": os.path.basename(path.rstrip("/")) or "/", "size": st.st_size,
            "mode": go_file_mode(st.st_mode), "mtime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "linkTarget": link}


def _absolute(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _ask(store: Store, rec: Record, question) -> dict[str, Any]:
    """``question()`` answered in the container's view (a JSON-able dict, or {"error": ...})."""
    r, w = os.pipe()

    def job(fd: int) -> None:
        try:
            answer = question()
        except FileNotFoundError:
            answer = {"missing": True}
        except OSError as e:
            answer = {"error": e.strerror or str(e)}
        with os.fdopen(fd, "wb") as out:
            out.write(json.dumps(answer).encode())
    pid = _run_inside(store, rec, job, w)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    code = wait(pid)
    if code != 0 or not data:
        raise RootlessError(f"cannot look into container {rec.name} (see the service's or command's messages)")
    return json.loads(data)


def stat_path(store: Store, name: str, path: str) -> dict[str, Any]:
    """Docker's stat of ``path`` in container ``name`` (``X-Docker-Container-Path-Stat``);
    ``NotFound`` if there is nothing there."""
    rec = Containers(store).find(name)
    path = _absolute(path)
    answer = _ask(store, rec, lambda: _stat_here(path))
    if answer.get("missing"):
        raise NotFound(f"Could not find the file {path} in container {rec.name}: check the path "
                       "('rootless exec NAME ls DIR' shows what is there)")
    if "error" in answer:
        raise RootlessError(f"cannot read {path} in container {rec.name}: {answer['error']}")
    return answer


def archive_out(store: Store, name: str, path: str, out: BinaryIO) -> None:
    """A tar of ``path`` in container ``name`` (its top entry named after the path's last
    component, ``.`` for ``DIR/.``: the directory's contents) written to ``out``."""
    rec = Containers(store).find(name)
    path = _absolute(path)
    r, w = os.pipe()

    def produce(fd: int) -> None:
        with os.fdopen(fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            if not os.path.lexists(path):
                raise FileNotFoundError(f"{path} does not exist in container {rec.name}")
            top = "." if path.endswith("/.") else os.path.basename(path.rstrip("/")) or "."
            tar.add(path, arcname=top)
    pid = _run_inside(store, rec, produce, w)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as stream:
            shutil.copyfileobj(stream, out, 1 << 16)
    finally:
        if wait(pid) != 0:
            raise RootlessError(f"copying {path} out of container {rec.name} failed (see the message above)")


def _extract_here(fd: int, target_dir: str, rename: str | None, single: bool, owner_root: bool,
                  no_replace_kind: bool) -> None:
    """Extract the tar on ``fd`` into ``target_dir`` (in the container's view)."""
    with os.fdopen(fd, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        if not os.path.isdir(target_dir):
            raise FileNotFoundError(f"{target_dir} is not a directory in the container")
        for m in tar:
            if rename:
                _head, _, rest = m.name.partition("/")
                m.name = rename + ("/" + rest if rest else "")
            if single or owner_root:
                m.uid = m.gid = 0
            if no_replace_kind:
                there = os.path.join(target_dir, m.name)
                if os.path.lexists(there) and os.path.normpath(m.name) != "." \
                        and os.path.isdir(there) != m.isdir() and not os.path.islink(there):
                    what = "a directory" if m.isdir() else "a file"
                    raise IsADirectoryError(f"cannot overwrite {'non-' if m.isdir() else ''}directory "
                                            f"{os.path.join(target_dir, m.name)} with {what}")
            tar.extract(m, target_dir, numeric_owner=True)


def archive_in(store: Store, name: str, path: str, data: BinaryIO, *, no_overwrite_dir_non_dir: bool = False,
               keep_owner: bool = False) -> None:
    """Extract the tar read from ``data`` into directory ``path`` of container ``name``
    (``NotFound`` if it does not exist, ``UsageError`` if it is not a directory).  Entries
    become root's in the container unless ``keep_owner`` (as ``docker cp -a``; without a
    sub-id range only root exists inside, so they become root's anyway)."""
    rec = Containers(store).find(name)
    path = _absolute(path)
    found = stat_path(store, name, path)
    if not found["mode"] & (1 << 31):
        raise UsageError(f"{path} in container {rec.name} is not a directory: extract the archive into a directory")
    _feed_inside(store, rec, data, path, None, keep_owner=keep_owner, no_replace_kind=no_overwrite_dir_non_dir)


def _feed_inside(store: Store, rec: Record, data: BinaryIO, target_dir: str | None, rename: str | None, *,
                 keep_owner: bool, no_replace_kind: bool = False, dest: str = "") -> None:
    """Send the tar read from ``data`` to a child that extracts it in the container's view;
    the child's failure comes back over a pipe of its own as this function's error."""
    single = idmap.detect().single
    r, w = os.pipe()
    er, ew = os.pipe()

    def consume(fd: int) -> None:
        os.close(w)        # our copy of the writing end: the tar may end without padding (Go's)
        os.close(er)
        where = target_dir
        try:
            if where is None:          # the CLI's DEST: a directory, or a new name in one
                where = dest if os.path.isdir(dest) else os.path.dirname(dest.rstrip("/")) or "/"
            _extract_here(fd, where, None if target_dir is not None or os.path.isdir(dest) else rename,
                          single, not keep_owner, no_replace_kind)
        except BaseException as e:  # noqa: BLE001 - told to the parent, which raises it
            usage = isinstance(e, (IsADirectoryError, NotADirectoryError, FileNotFoundError, tarfile.TarError))
            if isinstance(e, OSError) and e.strerror and e.filename:
                reason = f"{e.strerror}: {e.filename}"
            else:
                reason = str(e) or type(e).__name__
            os.write(ew, json.dumps({"usage": usage, "reason": reason}).encode()[:8000])
            os._exit(1)
    pid = _run_inside(store, rec, consume, r)
    os.close(r)
    os.close(ew)
    try:
        with os.fdopen(w, "wb") as out:
            shutil.copyfileobj(data, out, 1 << 16)
    except BrokenPipeError:
        pass
    finally:
        with os.fdopen(er, "rb") as f:
            told = f.read()
        code = wait(pid)
    if code != 0:
        what = f"copying into {rec.name}:{target_dir or dest} failed"
        try:
            failure = json.loads(told)
        except ValueError:
            raise RootlessError(f"{what} (see the message above)") from None
        raise (UsageError if failure.get("usage") else RootlessError)(f"{what}: {failure['reason']}")


# --- the command line's cp ------------------------------------------------------------------

def copy_out(store: Store, name: str, src: str, dest: str) -> None:
    if dest == "-":
        archive_out(store, name, src, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    buf = io.BytesIO()
    archive_out(store, name, src, buf)
    buf.seek(0)
    _extract_on_host(buf, dest)


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
    buf.seek(0)
    # a tar on stdin keeps its owners (as root's when only uid 0 exists inside); files of the
    # host become root's; DEST that is not a directory renames the copy
    _feed_inside(store, rec, buf, None, None if src == "-" else os.path.basename(dest.rstrip("/")),
                 keep_owner=True, dest=_absolute(dest))
