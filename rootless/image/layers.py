"""Unpacking a layer tarball into the store, safely, through the user namespace.

The extraction runs as root of a user namespace with the caller's id maps, so that
files get the owners the archive says (container uid 1000 becomes a sub-uid on the
host), and *chrooted into the new layer directory*: every path the archive names —
``../..``, absolute paths, symlinked parents, hard-link targets — is resolved by the
kernel inside the layer, so nothing can land outside it (the class of bug behind
CVE-2018-15664 and CVE-2019-14271).  The layer is built in a temporary directory and
renamed into place, so a failed unpack leaves nothing behind.

The tar reaches the unpacking child through a pipe (``StreamUnpack``): the caller writes the
plain tar as it gets it — a download being decompressed, a file — and the child unpacks each
entry as it arrives, recording the layer's tar-split (``tarsplit.py``) on the way, so that
the store can do without the tar itself: ``layer_tar`` makes it again, byte for byte, when
``push`` or ``save`` needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import signal
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, NoReturn

from .. import atomic
from ..errors import StoreError
from ..sandbox.remove import remove_tree
from ..sandbox import channel, idmap, libc
from ..sandbox.userns import fork_into_userns, kill as kill_child, wait as wait_child
from . import compression, tarsplit, whiteouts
from .store import Store


class LayerEntryError(Exception):
    """An entry of the archive that cannot be unpacked, explained (raised in the unpacking child)."""


def _explain(m: tarfile.TarInfo, e: BaseException) -> str:
    """Why entry ``m`` could not be unpacked, in the archive's terms (we are chrooted in the layer)."""
    import errno
    import stat
    if isinstance(e, KeyError):
        return (f"entry '{m.name}' is a hard link to '{m.linkname}', which is not in the layer before it "
                "(an archive that tries to reach outside itself, or a broken one)")
    parts = [p for p in posixpath.normpath("/" + m.name).split("/") if p]
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if os.path.isdir("/" + prefix):
            continue
        try:
            st = os.lstat("/" + prefix)
        except OSError:
            break
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink("/" + prefix)
            try:
                os.stat("/" + prefix)
                tail = "which is not a directory"
            except OSError as e2:
                tail = ("which is part of a symbolic link loop" if e2.errno == errno.ELOOP
                        else "which leads nowhere in this layer")
            kind = f"a symbolic link to '{target}', {tail}"
        elif stat.S_ISREG(st.st_mode):
            kind = "a file"
        else:
            kind = "something other than a directory"
        return f"entry '{m.name}' needs '{prefix}' to be a directory, but the layer has it as {kind}"
    why = os.strerror(e.errno).lower() if isinstance(e, OSError) and e.errno else str(e)
    return f"entry '{m.name}' cannot be created ({why})"


def unpacked_size(tar_path: str) -> int:
    """The layer's size once unpacked, as Docker counts it: the sum of its regular files."""
    with tarfile.open(tar_path) as tar:
        return sum(m.size for m in tar if m.isreg())


class _Owners(Exception):
    """An owner that does not fit in the id maps (raised in the unpacking child)."""


def _owner_error(m: tarfile.TarInfo, maps: idmap.IdMaps) -> str | None:
    limit_u, limit_g = maps.size("uid"), maps.size("gid")
    if maps.single or (m.uid < limit_u and m.gid < limit_g):
        return None      # single-uid mode: owners other than 0 cannot be kept, files become root's
    kind, value = ("uid", m.uid) if m.uid >= limit_u else ("gid", m.gid)
    return (f"'{m.name}' in the image is owned by {kind} {value}, which does not fit in your "
            f"subordinate {kind} range (container {kind}s 0-{(limit_u if kind == 'uid' else limit_g) - 1}). "
            f"Ask an administrator for a range of at least {value + 1} ids in /etc/sub{kind}")


def _close_others(keep: set[int]) -> None:
    """Close every descriptor but ``keep`` (a child forked while other unpacks run must not
    hold their pipes open: they would never see their end)."""
    libc.close_fds_except(keep)


def _extract(rec: tarsplit.Recorder, maps: idmap.IdMaps | None, single: bool) -> tuple[int, list[str]]:
    """Unpack the tar ``rec`` reads into ``/`` (we are chrooted in the new layer), member by
    member as they come; (the unpacked size, the device nodes skipped).  ``maps``: the owners
    must fit in them (None: not checked).  In single-uid mode only uid 0 exists: every entry is
    unpacked as root's (tarfile skips an entry's chmod and utime when its chown fails, which
    would lose setgid bits, x bits and times)."""
    devices: list[str] = []
    size = 0
    current: list[tarfile.TarInfo] = []
    with tarfile.open(fileobj=rec, mode="r:", copybufsize=1 << 20) as tar:
        def members():   # extractall takes members one at a time: the failing one is current
            nonlocal size
            for m in tar:
                current[:] = [m]
                why = _owner_error(m, maps) if maps is not None else None
                if why:
                    raise _Owners(why)
                rec.member(m)
                if (m.ischr() or m.isblk()) and (m.devmajor, m.devminor) != (0, 0):
                    devices.append(m.name)
                    continue
                if single:
                    m.uid = m.gid = 0
                if m.isreg():
                    size += m.size
                yield m
            current.clear()
        # Safe by the chroot; Python 3.14's default 'data' filter would refuse absolute symlinks.
        extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        try:
            tar.extractall("/", members=members(), numeric_owner=True, **extra)
        except (OSError, KeyError) as e:
            if not current:
                raise
            raise LayerEntryError(_explain(current[0], e)) from None
    return size, devices


def _extract_chrooted(tar_path: str, layer: str, single: bool) -> None:
    """Unpack the file ``tar_path`` into ``layer``, chrooted there (as root of a user namespace
    already), whiteouts made as the overlays read them: what a layer's unpacking does, for a
    caller that is in the user namespace itself."""
    with open(tar_path, "rb") as f:
        os.chroot(layer)
        os.chdir("/")
        _extract(tarsplit.Recorder(f, lambda seg: None), None, single)
    whiteouts.to_overlay("/")


def _unpack_child(sock: socket.socket, r: int, layer: str, split_w: int, maps: idmap.IdMaps) -> NoReturn:
    """In the user namespace, as its root: unpack the tar read from ``r`` chrooted in ``layer``
    (``_extract``), record its tar-split to ``split_w`` (-1: none) and check it
    (``Recorder.usable``).  Sends ``done`` with the unpacked size, the device nodes skipped, the
    stream's sha256 and whether the tar-split can be used."""
    _close_others({sock.fileno(), r, split_w})
    raw = os.fdopen(r, "rb", buffering=1 << 20)
    split = tarsplit.Writer(os.fdopen(split_w, "wb")) if split_w >= 0 else None
    rec = tarsplit.Recorder(raw, split.write if split else (lambda seg: None))
    os.chroot(layer)
    os.chdir("/")
    try:
        size, devices = _extract(rec, maps, maps.single)
        digest = rec.finish()
    except _Owners as e:
        channel.send_error(sock, str(e), kind="owners")
        os._exit(125)
    except (tarfile.TarError, EOFError):
        channel.send_error(sock, "it is empty" if rec.pos == 0 else "it is truncated or not a tar file",
                           kind="notar")
        os._exit(125)
    whiteouts.to_overlay("/")
    usable = False
    if split is not None:
        split.close(rec.pos, digest)
        usable = rec.usable("/")
    channel.send(sock, "done", size=size, devices=devices, digest=digest, tarsplit=usable)
    os._exit(0)


@dataclass
class Unpacked:
    """A layer unpacked into a temporary directory of the store (not visible yet)."""
    dir: str
    size: int                       # of its regular files
    digest: str                     # the sha256 of the tar it came from
    devices: list[str] = field(default_factory=list)
    tarsplit: str | None = None     # its tar-split record (a temporary file), when it is usable


class StreamUnpack:
    """Unpack a plain tar, given in pieces with ``write``, into a new temporary layer directory
    (no lock needed: nothing sees it), in a child chrooted there as root of the user namespace
    (``_unpack_child``).  ``finish()`` waits for the child and returns the ``Unpacked`` layer
    (``store.publish_layer`` makes it visible); ``abort()`` (or any failure) removes everything
    made.  With ``record``, the tar-split is recorded too.  A killed unpack leaves a directory
    and a file whose names say their writer is gone: the next command taking the lock removes
    them."""

    def __init__(self, store: Store, maps: idmap.IdMaps, what: str, record: bool = True):
        self.maps, self.what = maps, what
        self.dir = store.layer_temp_dir()
        self.split = os.path.join(store.tmp_dir(), atomic.temp_name("tarsplit")) if record else None
        self.written = 0
        self._broken = False
        self._w = -1
        self.pid = 0
        self._reaping = threading.Lock()     # no kill() of a pid already reaped (it may be reused)
        fds: list[int] = []
        try:
            r, self._w = os.pipe2(os.O_CLOEXEC)
            fds.append(r)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._w, fcntl.F_SETPIPE_SZ, 1 << 20)
            split_w = -1
            if self.split:
                split_w = os.open(self.split, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                fds.append(split_w)
            self.pid, self.sock = fork_into_userns(
                maps, lambda sock: _unpack_child(sock, r, self.dir, split_w, maps), "rootless-unpack")
        except BaseException:
            for fd in fds:
                os.close(fd)
            self._cleanup()
            raise
        for fd in fds:
            os.close(fd)

    @property
    def broken(self) -> bool:
        """Whether the child stopped reading (it ended: ``finish`` says why)."""
        return self._broken

    def write(self, data: bytes) -> None:
        if self._broken or not data:
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._w, view)
                view = view[n:]
                self.written += n
        except BrokenPipeError:
            self._broken = True     # the child has ended: finish() says why

    def finish(self) -> Unpacked:
        """Wait for the child; the layer unpacked.  Raises ``StoreError`` (in the archive's terms)
        when it cannot be unpacked; everything made is removed then."""
        self._close_w()
        try:
            try:
                msg, _fds = channel.expect(self.sock, "done")
            except channel.ChildError as e:
                raise StoreError(self._why(e)) from None
            except channel.ProtocolError:
                raise StoreError(f"cannot unpack {self.what}: the unpacking process ended without a word") from None
            finally:
                self.sock.close()
                with self._reaping:
                    wait_child(self.pid)
                    self.pid = 0
        except BaseException:
            self._cleanup()
            raise
        split = self.split if msg.get("tarsplit") else None
        if self.split and not split:
            with contextlib.suppress(OSError):
                os.unlink(self.split)
        return Unpacked(self.dir, int(msg["size"]), msg["digest"], list(msg.get("devices") or []), split)

    def _why(self, e: channel.ChildError) -> str:
        text = str(e)
        if e.kind == "owners":
            return text
        if e.kind == "notar":
            return (f"{self.what} is not a valid tar archive ({text}): the image is corrupt; "
                    "get or make it again")
        if text.startswith("entry '"):
            text += "; the archive is broken, or made to write where it should not: refused"
        return f"cannot unpack {self.what}: {text}"

    def _close_w(self) -> None:
        if self._w >= 0:
            os.close(self._w)
            self._w = -1

    def _cleanup(self) -> None:
        remove_tree(self.maps, self.dir)
        if self.split:
            with contextlib.suppress(OSError):
                os.unlink(self.split)

    def kill(self) -> None:
        """SIGKILL the child, from any thread (a ``write`` blocked on it returns); the thread
        that runs the unpack then calls ``abort``."""
        with self._reaping:
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)

    def abort(self) -> None:
        """Stop the child and remove what it made."""
        self._close_w()
        with self._reaping:
            if self.pid:
                kill_child(self.pid)
                self.pid = 0
                self.sock.close()
        self._cleanup()


def unpack_file(store: Store, maps: idmap.IdMaps, tar_path: str, what: str, record: bool = False) -> Unpacked:
    """Unpack ``tar_path`` (uncompressed) into a new temporary directory of the store (no lock
    needed: nothing sees it), with its tar-split record if ``record``.  ``store.publish_layer``
    makes it a layer; a killed unpack leaves a directory that the next command taking the store
    lock removes."""
    job = StreamUnpack(store, maps, what, record=record)
    try:
        with open(tar_path, "rb") as f:
            while chunk := f.read(1 << 20):
                job.write(chunk)
    except BaseException:
        job.abort()
        raise
    return job.finish()


def unpack_temp(store: Store, maps: idmap.IdMaps, tar_path: str, what: str) -> tuple[str, int, list[str]]:
    """``unpack_file`` without a record: (the directory, the unpacked size, the device nodes skipped)."""
    got = unpack_file(store, maps, tar_path, what)
    return got.dir, got.size, got.devices


def unpack(store: Store, maps: idmap.IdMaps, tar_path: str, diff_id: str, what: str = "") -> list[str]:
    """Unpack ``tar_path`` (uncompressed) as layer ``diff_id``; returns the device nodes skipped.
    Call with the store locked.

    ``what`` names the layer in errors, as the user knows it (e.g. "the layer of FILE").
    """
    tmp, size, devices = unpack_temp(store, maps, tar_path, what or f"layer {diff_id}")
    try:
        if not store.publish_layer(tmp, diff_id, size):
            remove_tree(maps, tmp)  # another command unpacked the same layer meanwhile
    except BaseException:
        remove_tree(maps, tmp)
        raise
    return devices


class LayerTampered(StoreError):
    """A layer's directory no longer gives back the tar it was unpacked from."""


def _regenerate_child(sock: socket.socket, w: int, record: int, layer: str) -> NoReturn:
    _close_others({sock.fileno(), w, record})
    os.chroot(layer)
    os.chdir("/")
    out = os.fdopen(w, "wb", buffering=1 << 20)
    try:
        with os.fdopen(record, "rb") as f:
            digest = tarsplit.regenerate(f, out.write)
        out.flush()
    except tarsplit.LayerChanged as e:
        channel.send_error(sock, str(e), kind="changed")
        os._exit(125)
    except BrokenPipeError:
        os._exit(0)                  # the reader stopped early: nobody waits for the rest
    except compression.ERRORS as e:     # (after OSError's subclass BrokenPipeError above)
        channel.send_error(sock, f"its tar-split record is damaged: {e}", kind="changed")
        os._exit(125)
    channel.send(sock, "done", digest=digest)
    os._exit(0)


class _Checked:
    """A reader of a layer's tar that checks, at its end, that it was the diff id."""

    def __init__(self, f: BinaryIO, diff_id: str, fail: Callable[[str], None]):
        self.f, self.diff_id, self.fail = f, diff_id, fail
        self.hash = hashlib.sha256()
        self.done = False

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.hash.update(data)
        elif not self.done and n != 0:
            self.done = True
            got = "sha256:" + self.hash.hexdigest()
            if got != self.diff_id:
                self.fail(f"it gives {got}")
        return data


def tampered(diff_id: str, why: str) -> LayerTampered:
    return LayerTampered(f"layer {diff_id} in the store was changed since it was unpacked ({why}), so its "
                         "tar cannot be made again: remove the images that use it ('rootless rmi') and "
                         "pull or import them again")


@contextlib.contextmanager
def layer_tar(store: Store, maps: idmap.IdMaps | None, diff_id: str,
              blob_digest: str | None = None) -> Iterator[BinaryIO]:
    """The plain tar of layer ``diff_id`` as a reader: its uncompressed blob when the store keeps
    one (a load, a commit, a build step, an older import), else the blob ``blob_digest`` decompressed (a store of an
    older rootless kept pulled layers so), else made again from the layer directory and its
    tar-split record (in a child chrooted there, as root of the user namespace).  Reading it to
    its end checks it against ``diff_id``: ``LayerTampered`` (a ``StoreError`` naming the fix)
    when the layer was changed behind our back; ``StoreError`` when nothing of it is left."""
    if store.has_blob(diff_id):
        with open(store.blob_path(diff_id), "rb") as f:
            yield f
        return
    if blob_digest and store.has_blob(blob_digest):
        with open(store.blob_path(blob_digest), "rb") as raw, compression.open_decompressed(raw) as f:
            yield f
        return
    record = store.tarsplit_path(diff_id)
    if not (store.has_layer(diff_id) and os.path.exists(record)):
        raise StoreError(f"layer {diff_id} is missing from the store (neither its blob nor its unpacked "
                         "form is there): pull or import the image again")
    if maps is None:
        maps = idmap.detect()
    layer = store.layer_dir(diff_id)
    fds: list[int] = []
    r, w = os.pipe2(os.O_CLOEXEC)
    fds += [r, w]
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        rec = os.open(record, os.O_RDONLY | os.O_CLOEXEC)
        fds.append(rec)
        pid, sock = fork_into_userns(maps, lambda s: _regenerate_child(s, w, rec, layer), "rootless-tar")
    finally:
        for fd in fds[1:]:
            os.close(fd)
    reader = os.fdopen(r, "rb", buffering=1 << 20)

    def fail(why: str) -> None:
        try:
            channel.expect(sock, "done")
        except channel.ChildError as e:
            raise tampered(diff_id, str(e)) from None
        except channel.ProtocolError:
            pass
        raise tampered(diff_id, why)

    checked = _Checked(reader, diff_id, fail)
    try:
        yield checked  # type: ignore[misc]
        if checked.done:
            try:
                channel.expect(sock, "done")
            except channel.ChildError as e:
                raise tampered(diff_id, str(e)) from None
            except channel.ProtocolError:
                raise StoreError(f"cannot make the tar of layer {diff_id}: its process ended without a word") from None
    finally:
        reader.close()
        sock.close()
        if checked.done:
            wait_child(pid)
        else:                        # the reader stopped early: the child need not go on
            kill_child(pid)
