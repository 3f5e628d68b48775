"""A container's changes: as an image layer (``commit``, the builder's RUN) and as A/C/D lines (``diff``).

Where the changes are:

* an overlay's upper directory (``overlay``, ``fuse-overlay``): every entry in it is new or
  changed; whiteouts and opaque directories (``whiteouts.py``) say what was deleted or replaced;
* a full copy (``vfs``): compared with the image's layers it was copied from (``base_layers``):
  an entry whose type, mode, owner, size, mtime, device or link target differ is changed, one
  the image has and the copy has not is deleted.  Directories are listed when something in
  them changed.

Both give the same stream of ``Change``s, in the layer's order (parents first, names sorted).
Empty files and directories where the engine makes mount points (``ignore``) are left out.

The layer is an uncompressed OCI tar, as ``import`` stores them (the blob's digest is its diff id):
``.wh.NAME`` for a deleted entry, ``DIR/.wh..wh..opq`` right after an opaque directory, owners and
modes as the container saw them (in single-uid mode, fuse-overlay keeps owners other than root
in the ``user.fuseoverlayfs.override_stat`` xattr: those are read), xattrs but the overlays'
own, hard links as tar hard links, no user or group names, PAX headers.  Deterministic: the same
changes give the same bytes (sorted entries, sorted xattrs, integer mtimes, clamped to
``SOURCE_DATE_EPOCH`` when given).

Files in the change set may be owned by sub-ids and unreadable to the caller: the walk runs as
root of a user namespace with the caller's maps (``userns.fork_into_userns``), as ``export`` does;
there ``lstat`` shows the owners the container saw.  The child writes the tar straight into a
temporary file of the store, hashing as it goes, and builds the layer directory at the same time
(``LayerWriter``: file data copied in the kernel, from the tar); it reports the digest, and both
are moved into place under the store's lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import tarfile
from dataclasses import dataclass
from typing import Iterator, NoReturn

from .store import Store
from .whiteouts import OPAQUE_MARKER, WH_PREFIX, is_device_whiteout, is_opaque, merged, private_xattr, read_dir
from ..errors import StoreError
from ..sandbox import channel, idmap
from ..sandbox.userns import fork_into_userns, wait

_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Change:
    """One entry of a change set.  ``kind``: ``entry`` (``path``: the object, new or changed),
    ``whiteout`` (``rel`` was deleted) or ``opaque`` (the directory ``rel``, listed just before,
    replaces the image's: nothing of the image below it shows)."""
    rel: str
    kind: str
    path: str = ""


@dataclass(frozen=True)
class NewLayer:
    """A layer made from a change set.  ``empty``: there were no changes; nothing was stored
    (Docker adds no layer then and marks the history entry ``empty_layer``)."""
    diff_id: str
    size: int
    empty: bool


# ----------------------------------------------------------------------------- change sets

def _placeholder(st: os.stat_result, path: str) -> bool:
    """An empty file or directory: what the engine makes to mount something on."""
    if stat.S_ISREG(st.st_mode):
        return st.st_size == 0
    return stat.S_ISDIR(st.st_mode) and not os.listdir(path)


def _lower(base_layers: list[str], rel: str) -> str | None:
    """The host path of ``rel`` in the merged tree of ``base_layers`` (bottom first), or None."""
    parent, _, name = rel.rpartition("/")
    for layer in reversed(base_layers):
        d = os.path.join(layer, parent) if parent else layer
        path = os.path.join(d, name)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None:
            return None if is_device_whiteout(st) else path
        if os.path.lexists(os.path.join(d, WH_PREFIX + name)) or (parent and os.path.isdir(d) and is_opaque(d)):
            return None
    return None


def _same_dir(st: os.stat_result, lower: str | None) -> bool:
    """Whether directory ``st`` has the image's mode and owner (or the image has none there)."""
    if lower is None:
        return True
    try:
        bst = os.lstat(lower)
    except OSError:
        return True
    return (bst.st_mode, bst.st_uid, bst.st_gid) == (st.st_mode, st.st_uid, st.st_gid)


def walk_upper(upper: str, ignore: frozenset[str] = frozenset(),
               base_layers: list[str] | None = None) -> Iterator[Change]:
    """The changes an overlay's upper directory holds.

    ``ignore``: paths where the engine makes mount points (``etc/hosts``): an empty file or
    directory there is not a change, nor is a directory that holds nothing else and has the
    mode and owner it has in the image (``base_layers``, bottom first), as in Docker, whose
    mount points are in a layer of their own.
    """
    def walk(rel: str, directory: str) -> tuple[list[Change], bool]:
        out: list[Change] = []
        dropped = False
        listing = read_dir(directory)
        if rel and listing.opaque:
            out.append(Change(rel, "opaque"))
        items = [(WH_PREFIX + name, name, None) for name in listing.whiteouts]
        items += [(name, name, st) for name, st in listing.entries]
        for _key, name, st in sorted(items, key=lambda i: i[0]):
            child = f"{rel}/{name}" if rel else name
            path = os.path.join(directory, name)
            if st is None:
                out.append(Change(child, "whiteout"))
                continue
            if child in ignore and _placeholder(st, path):
                dropped = True
                continue
            if stat.S_ISDIR(st.st_mode):
                inner, inner_dropped = walk(child, path)
                if not inner and inner_dropped and not is_opaque(path) and (
                        _same_dir(st, _lower(base_layers, child) if base_layers else None)):
                    dropped = True
                    continue
                out.append(Change(child, "entry", path))
                out += inner
            else:
                out.append(Change(child, "entry", path))
        return out, dropped

    yield from walk("", upper)[0]


def _same(a: os.stat_result, b: os.stat_result, pa: str, pb: str) -> bool:
    if (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) != (b.st_mode, b.st_uid, b.st_gid, b.st_mtime_ns):
        return False
    if stat.S_ISDIR(a.st_mode):
        return True
    if (a.st_size, a.st_rdev) != (b.st_size, b.st_rdev):
        return False
    return not stat.S_ISLNK(a.st_mode) or os.readlink(pa) == os.readlink(pb)


def walk_copy(copy: str, base_layers: list[str], ignore: frozenset[str] = frozenset()) -> Iterator[Change]:
    """The changes of a full copy (vfs) against the image layers it was made from (``ignore``:
    as for ``walk_upper``)."""
    base: dict[str, dict[str, str]] = {"": {}}      # directory -> {name: host path}
    for rel, path in merged(base_layers):
        parent, _, name = rel.rpartition("/")
        base.setdefault(parent, {})[name] = path

    def whole(rel: str, path: str, st: os.stat_result) -> Iterator[Change]:
        yield Change(rel, "entry", path)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                child = os.path.join(path, name)
                yield from whole(f"{rel}/{name}", child, os.lstat(child))

    def walk(rel: str, directory: str) -> tuple[list[Change], bool]:
        out: list[Change] = []
        dropped = False
        below = base.get(rel, {})
        for name in sorted(set(os.listdir(directory)) | set(below)):
            child = f"{rel}/{name}" if rel else name
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if name in below:
                    out.append(Change(child, "whiteout"))
                continue
            if name not in below:
                if child in ignore and _placeholder(st, path):
                    dropped = True
                else:
                    out += whole(child, path, st)
                continue
            bpath = below[name]
            bst = os.lstat(bpath)
            if stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(bst.st_mode):
                inner, inner_dropped = walk(child, path)
                if inner or not (_same(st, bst, path, bpath) or (inner_dropped and _same_dir(st, bpath))):
                    out.append(Change(child, "entry", path))
                    out += inner
                dropped = dropped or inner_dropped
            elif stat.S_IFMT(st.st_mode) != stat.S_IFMT(bst.st_mode) or not _same(st, bst, path, bpath):
                out += whole(child, path, st)
        return _tar_order(out, rel), dropped

    yield from walk("", copy)[0]


def _tar_order(changes: list[Change], rel: str) -> list[Change]:
    """Siblings ordered by their name in the tar (a whiteout's is ``.wh.NAME``), each followed
    by what is below it (already in order)."""
    groups: list[tuple[str, list[Change]]] = []
    depth = rel.count("/") + 1 if rel else 0
    for c in changes:
        if c.rel.count("/") == depth:
            name = c.rel.rpartition("/")[2]
            groups.append((WH_PREFIX + name if c.kind == "whiteout" else name, [c]))
        else:
            groups[-1][1].append(c)
    return [c for _key, group in sorted(groups, key=lambda g: g[0]) for c in group]


# ----------------------------------------------------------------------------- the tar

def _seen_as(path: str, st: os.stat_result, single_uid: bool) -> tuple[int, int, int, int]:
    """(mode, uid, gid, rdev) as the container saw the object."""
    if single_uid and not stat.S_ISLNK(st.st_mode):
        from fuse_overlay import ownership
        ov = ownership.read(os.fsencode(path), st)
        if ov is not None:
            return ov.mode, ov.uid, ov.gid, ov.rdev
    return st.st_mode, st.st_uid, st.st_gid, st.st_rdev


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        if private_xattr(name):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _clamp(mtime: float, epoch: int | None) -> int:
    t = int(mtime)
    return min(t, epoch) if epoch is not None else t


def _copy_range(src: int, dst: int, size: int, src_off: int, dst_off: int) -> int:
    """Copy up to ``size`` bytes in the kernel (copy_file_range), read/write where it cannot;
    the bytes copied (fewer at the source's end)."""
    done = 0
    while done < size:
        n = 0
        try:
            n = os.copy_file_range(src, dst, size - done, src_off + done, dst_off + done)
        except OSError as e:
            import errno
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            data = os.pread(src, min(_COPY_CHUNK, size - done), src_off + done)
            n = os.pwrite(dst, data, dst_off + done) if data else 0
        if n <= 0:
            break
        done += n
    return done


class _Hasher:
    """sha256 of the tar, in order, in a thread of its own (hashlib and pread release the GIL):
    the hashing of one file's data overlaps the copy of the next."""

    def __init__(self, fd: int):
        import queue
        import threading
        self.fd = fd
        self.sha = hashlib.sha256()
        self.todo: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            if self.error is not None:
                continue
            try:
                if isinstance(item, bytes):
                    self.sha.update(item)
                    continue
                off, end = item
                while off < end:
                    chunk = os.pread(self.fd, min(4 * _COPY_CHUNK, end - off), off)
                    if not chunk:
                        raise OSError("the layer tar is shorter than what was written to it")
                    self.sha.update(chunk)
                    off += len(chunk)
            except BaseException as e:  # noqa: BLE001 - raised by digest(), in the writer's thread
                self.error = e

    def bytes(self, data: bytes) -> None:
        self.todo.put(bytes(data))

    def range(self, offset: int, size: int) -> None:
        if size:
            self.todo.put((offset, offset + size))

    def digest(self) -> str:
        self.todo.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return "sha256:" + self.sha.hexdigest()


class LayerWriter:
    """Writes a change set as a layer tar (to ``tar_fd``, hashing it) and, when ``layer_dir`` is
    given, as the layer's directory in the store's form at the same time, each file's data copied
    in the kernel from the tar just written (so both hold the same bytes, even of a file that a
    running container changes meanwhile).  Runs as root of the user namespace.

    The layer directory is made here rather than unpacked from the tar: the paths come from a
    walk of our own trees, parents first, and every object is created without following a
    symbolic link (the parent of each is a directory this writer made), so nothing can land
    outside it; and a copy in the kernel is several times faster than tarfile's extraction.
    """

    def __init__(self, tar_fd: int, layer_dir: str | None, single_uid: bool, epoch: int | None,
                 consume: bool = False):
        self.fd, self.dir, self.single, self.epoch = tar_fd, layer_dir, single_uid, epoch
        self.consume = consume
        self.hasher = _Hasher(tar_fd)
        self.pos = 0
        self.count = 0
        self.links: dict[tuple[int, int], str] = {}
        self.dirs: list[tuple[str, tarfile.TarInfo]] = []      # times and modes set at the end
        self.last_dir: dict[str, os.stat_result] = {}
        self.skipped_devices: list[str] = []

    # --- the tar
    def _write(self, data: bytes) -> None:
        self.hasher.bytes(data)
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.pos)
            self.pos += n
            view = view[n:]

    def _header(self, info: tarfile.TarInfo) -> None:
        self._write(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))

    def _data(self, path: str, size: int) -> int:
        """Append ``size`` bytes of file ``path`` (zeros past its end, if it shrank); their offset."""
        start = self.pos
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            got = _copy_range(fd, self.fd, size, 0, start)
        finally:
            os.close(fd)
        if got < size:
            os.pwrite(self.fd, bytes(size - got), start + got)
        self.hasher.range(start, size)   # what the tar holds, hashed while the next file is copied
        self.pos = start + size
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            self._write(bytes(pad))
        return start

    # --- the layer directory
    def _at(self, rel: str) -> str:
        assert self.dir is not None
        return os.path.join(self.dir, rel)

    def _own(self, path: str, info: tarfile.TarInfo, xattrs: dict[str, bytes], chmod: bool = True) -> None:
        try:
            os.lchown(path, info.uid, info.gid)
        except OSError:
            pass             # an id the namespace does not map (single-uid mode): root's, as unpack does
        if chmod:
            os.chmod(path, info.mode, follow_symlinks=False)
        for name, value in xattrs.items():
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError:
                pass         # trusted.*, or a filesystem without xattrs: as unpack, which keeps none
        if info.type != tarfile.DIRTYPE:
            os.utime(path, ns=(info.mtime * 10**9,) * 2, follow_symlinks=False)

    def _whiteout(self, rel: str) -> None:
        path = self._at(rel)
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        except PermissionError:
            parent, _, name = rel.rpartition("/")
            os.close(os.open(self._at(os.path.join(parent, WH_PREFIX + name)),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))

    def _opaque(self, rel: str) -> None:
        path = self._at(rel)
        try:
            os.setxattr(path, "user.overlay.opaque", b"y", follow_symlinks=False)
        except OSError:
            os.close(os.open(os.path.join(path, OPAQUE_MARKER),
                             os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))

    # --- entries
    def add(self, c: Change) -> None:
        if c.kind in ("whiteout", "opaque"):
            parent, _, name = c.rel.rpartition("/")
            info = tarfile.TarInfo(f"{c.rel}/{OPAQUE_MARKER}" if c.kind == "opaque"
                                   else (f"{parent}/" if parent else "") + WH_PREFIX + name)
            info.mode = 0o600
            ref = self.last_dir.get(c.rel) if c.kind == "opaque" else None
            info.mtime = _clamp(ref.st_mtime, self.epoch) if ref is not None else 0
            self._header(info)
            self.count += 1
            if self.dir is not None:
                self._opaque(c.rel) if c.kind == "opaque" else self._whiteout(c.rel)
            return
        try:
            st = os.lstat(c.path)
        except FileNotFoundError:
            return                             # removed meanwhile (a running container)
        mode, uid, gid, rdev = _seen_as(c.path, st, self.single)
        info = tarfile.TarInfo(c.rel)
        info.mode, info.uid, info.gid = stat.S_IMODE(mode), uid, gid
        info.uname = info.gname = ""
        info.mtime = _clamp(st.st_mtime, self.epoch)
        xattrs = _xattrs(c.path)
        info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
        data = False
        if stat.S_ISREG(mode) and stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                info.type, info.linkname = tarfile.LNKTYPE, self.links[key]
            else:
                if st.st_nlink > 1:
                    self.links[key] = c.rel
                info.size = st.st_size
                data = True
        elif stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
            self.last_dir[c.rel] = st
        elif stat.S_ISLNK(mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(c.path)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(rdev), os.minor(rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            return                             # a socket (a tar cannot hold one; Docker skips them too),
                                               # or an empty file standing for a device
        self._header(info)
        offset = self._data(c.path, info.size) if data else 0
        self.count += 1
        if self.dir is not None:
            self._create(info, offset, xattrs, c.path)

    def _create(self, info: tarfile.TarInfo, offset: int, xattrs: dict[str, bytes], source: str) -> None:
        path = self._at(info.name)
        if info.type == tarfile.LNKTYPE:
            os.link(self._at(info.linkname), path, follow_symlinks=False)
            return
        if info.type == tarfile.REGTYPE and self.consume:
            # The change set is thrown away after this: its file becomes the layer's (no copy),
            # with the tar's times and without the overlay's xattrs.
            os.link(source, path, follow_symlinks=False)
            for name in os.listxattr(path, follow_symlinks=False):
                if private_xattr(name):
                    try:
                        os.removexattr(path, name, follow_symlinks=False)
                    except OSError:
                        pass
        elif info.type == tarfile.REGTYPE:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if info.size:
                    _copy_range(self.fd, fd, info.size, offset, 0)
            finally:
                os.close(fd)
        elif info.type == tarfile.DIRTYPE:
            os.mkdir(path, 0o700)
            self.dirs.append((path, info))
        elif info.type == tarfile.SYMTYPE:
            os.symlink(info.linkname, path)
            self._own(path, info, xattrs, chmod=False)
            return
        elif info.type == tarfile.FIFOTYPE:
            os.mkfifo(path, 0o600)
        else:
            try:
                os.mknod(path, (stat.S_IFCHR if info.type == tarfile.CHRTYPE else stat.S_IFBLK) | 0o600,
                         os.makedev(info.devmajor, info.devminor))
            except PermissionError:
                self.skipped_devices.append(info.name)      # as unpack: not in a user namespace
                return
        self._own(path, info, xattrs)

    def finish(self) -> None:
        self._write(bytes(2 * tarfile.BLOCKSIZE))
        for path, info in reversed(self.dirs):   # children first: their creation changed the times
            os.utime(path, ns=(info.mtime * 10**9,) * 2, follow_symlinks=False)

    @property
    def digest(self) -> str:
        return self.hasher.digest()


# ----------------------------------------------------------------------------- in the user namespace

def _changes(changes_dir: str, image_layers: list[str], full_copy: bool, ignore: frozenset[str]) -> Iterator[Change]:
    if full_copy:
        return walk_copy(changes_dir, image_layers, ignore)
    return walk_upper(changes_dir, ignore, image_layers)


def _in_userns(maps: idmap.IdMaps, work, what: str) -> dict:
    """Run ``work()`` (returning a dict that fits one message) as root of a user namespace."""
    def child(sock: socket.socket) -> NoReturn:
        channel.send(sock, "done", **work())
        os._exit(0)

    pid, sock = fork_into_userns(maps, child, name="rootless-changes")
    try:
        with sock:
            try:
                msg, _fds = channel.expect(sock, "done")
            except channel.ChildError as e:
                raise StoreError(f"cannot read {what}: {e}") from None
    finally:
        wait(pid)
    return msg


def layer_from_changes(store: Store, maps: idmap.IdMaps, changes_dir: str, *, single_uid: bool,
                       image_layers: list[str] | None = None, full_copy: bool = False,
                       ignore: frozenset[str] = frozenset(),
                       source_date_epoch: int | None = None, consume: bool = False) -> NewLayer:
    """Store the changes in ``changes_dir`` as a layer (blob and layer directory).

    ``changes_dir``: an overlay's upper directory, or with ``full_copy`` a copy (vfs) of
    ``image_layers`` (the image's layer directories, bottom first) to compare with them.
    ``single_uid``: the container ran without a subuid range (owners from fuse-overlay's
    xattr).  ``ignore``: the engine's mount points (``walk_upper``).  ``source_date_epoch``:
    no time in the layer is later.  ``consume``: ``changes_dir`` is removed after this and never
    used again (the builder's RUN containers): its files become the layer directory's (hard
    links, their times set to the tar's) instead of being copied — about twice as fast.  Takes
    the store lock itself: call it without.
    """
    from .. import atomic
    from ..sandbox.remove import remove_tree
    layers_below = list(image_layers or [])
    # temporary names that carry their writer: a command cleaning the store leaves them alone
    tmp = os.path.join(store.tmp_dir(), atomic.temp_name("changes") + ".tar")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)   # read back: see LayerWriter
    # the layer is kept unpacked with its tar-split record, as a pulled one (no blob)
    split = os.path.join(store.tmp_dir(), atomic.temp_name("tarsplit"))
    split_fd = os.open(split, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    layer_tmp = store.layer_temp_dir()
    try:
        def work() -> dict:
            writer = LayerWriter(fd, layer_tmp, single_uid, source_date_epoch, consume)
            for change in _changes(changes_dir, layers_below, full_copy, ignore):
                writer.add(change)
            writer.finish()
            usable = False
            if writer.count:
                from . import tarsplit
                # chrooted in the new layer (this child ends here): names resolve as in an unpack
                os.chroot(layer_tmp)
                os.chdir("/")
                with os.fdopen(os.dup(fd), "rb") as tar, os.fdopen(os.dup(split_fd), "wb") as out:
                    tar.seek(0)
                    digest, usable = tarsplit.record_file(tar, out, "/")
                usable = usable and digest == writer.digest
            return {"digest": writer.digest, "size": writer.pos, "count": writer.count, "tarsplit": usable}

        try:
            result = _in_userns(maps, work, "the container's changes")
        finally:
            os.close(fd)
            os.close(split_fd)
        diff_id, size = result["digest"], result["size"]
        if result["count"] == 0:
            return NewLayer(diff_id, size, True)
        from .layers import unpacked_size
        files_size = unpacked_size(tmp)
        with store.lock():
            if store.has_layer(diff_id):          # made already: its tar must be kept somehow
                if not store.can_make_tar(diff_id):
                    store.adopt_blob(tmp, diff_id)
            else:
                if not result["tarsplit"] and not store.has_blob(diff_id):
                    store.adopt_blob(tmp, diff_id)
                store.publish_layer(layer_tmp, diff_id, files_size, split if result["tarsplit"] else None)
                split = "" if result["tarsplit"] else split
        return NewLayer(diff_id, size, False)
    finally:
        for path in (tmp, split):
            if path and os.path.exists(path):
                os.unlink(path)
        if os.path.lexists(layer_tmp):
            remove_tree(maps, layer_tmp)


def diff(maps: idmap.IdMaps, changes_dir: str, image_layers: list[str], *, full_copy: bool = False,
         ignore: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Docker's ``diff``: (kind, path) with kind ``A`` added, ``C`` changed, ``D`` deleted, sorted by
    path (``/etc/passwd``).  Arguments as for ``layer_from_changes``."""
    def work() -> dict:
        base: set[str] = set()
        children: dict[str, list[str]] = {}
        for rel, _path in merged(image_layers):
            base.add(rel)
            children.setdefault(rel.rpartition("/")[0], []).append(rel)
        out: dict[str, str] = {}
        opaque = []
        for c in _changes(changes_dir, image_layers, full_copy, ignore):
            if c.kind == "whiteout":
                if c.rel in base:
                    out[c.rel] = "D"
            elif c.kind == "opaque":
                opaque.append(c.rel)
            else:
                out[c.rel] = "C" if c.rel in base else "A"
        for rel in opaque:      # what the image had in a directory that was replaced, and is gone
            for child in children.get(rel, []):
                out.setdefault(child, "D")
        return {"changes": sorted(("/" + rel, kind) for rel, kind in out.items())}

    # The list may outgrow one message: the child writes it to a file of ours.
    import tempfile
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()

        def to_file() -> dict:
            with os.fdopen(os.dup(fd), "wb") as w:
                w.write(json.dumps(work()["changes"]).encode())
            return {}

        _in_userns(maps, to_file, "the container's changes")
        f.seek(0)
        return [(kind, path) for path, kind in json.loads(f.read())]


__all__ = ["Change", "NewLayer", "LayerWriter", "walk_upper", "walk_copy", "layer_from_changes", "diff"]
