"""The pyfuse3 Operations of the overlay.

Error handling: every handler is wrapped by :func:`_handler`, so only
``pyfuse3.FUSEError`` leaves it (OSError becomes its errno, anything else is
logged and becomes EIO); ``forget`` and ``init`` never raise.

Lookup counts: each EntryAttributes handed to the kernel (lookup, create,
mkdir, mknod, symlink, link, readdir entries accepted by readdir_reply)
adds one reference to the node; ``forget`` subtracts.

State and awaits: the only awaits are copy-up of big files (in a worker
thread, under the node's copy lock) and the locks themselves.  Node state is
changed only after the backing operation succeeded, with no await between the
backing change and the bookkeeping, so every await sees a consistent table.
"""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import mmap
import os
import time
import stat as stat_mod
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3

from . import copyup, loop, ownership
from .idmapping import IdMapping
from .inodes import ROOT_INODE, InodeMap, Node, NodeTable
from .layers import WH_PREFIX, Found, Layers, hidden_xattr, wh_file_name

log = logging.getLogger("fuse_overlay")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_THREAD_COPY_MIN = 1 << 20   # copy-ups at least this big run in a worker thread
_STRIP_OPEN = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | getattr(os, "O_DIRECT", 0)


# Handlers that change nothing a directory listing shows (see ``OverlayFS.generation``).
_READ_ONLY = frozenset({"lookup", "getattr", "readlink", "open", "read", "release", "fsync", "opendir",
                        "readdir", "releasedir", "fsyncdir", "statfs", "getxattr", "listxattr"})


def _handler(fn: F) -> F:
    changes = fn.__name__ not in _READ_ONLY

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        loop.handler_started()
        fs = args[0]
        fs.active += 1
        if changes:
            fs.generation += 1
            if fs.layers.dirfds:
                fs.layers.forget_dirfds()
        try:
            return await fn(*args)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception as e:
            log.exception("internal error in %s", fn.__name__)
            args[0].internal_error(fn.__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            loop.handler_done()
            if changes:
                fs.generation += 1     # also after: a listing read meanwhile is stale
                if fs.layers.dirfds:
                    fs.layers.forget_dirfds()
            fs.active -= 1
            if fs.layers.held and not fs.active:
                fs.layers.release()     # fds behind long backing paths: no request uses them now
    return wrapper  # type: ignore[return-value]


def _dir_entry(ino: int) -> pyfuse3.EntryAttributes:
    """What a listing needs of "." and "..": inode number and type."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.st_mode = stat_mod.S_IFDIR
    return e


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class FileHandle:
    """An open file: the backing fd (owned: closed on release), its node and
    the layer the fd points into (reopened if the node is copied up)."""

    __slots__ = ("fd", "node", "layer", "flags")

    def __init__(self, fd: int, node: Node, layer: int, flags: int) -> None:
        self.fd, self.node, self.layer, self.flags = fd, node, layer, flags


class DirHandle:
    """An open directory and its listing snapshot (taken at offset 0), and the
    rows for the listing cache as a first pass goes through them."""

    __slots__ = ("node", "entries", "rows", "generation")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.entries: list[tuple[bytes, int]] | None = None
        self.rows: list[tuple[bytes, int, int, pyfuse3.EntryAttributes]] | None = None
        self.generation = -1


_LISTING_ROWS = 32768        # entries kept in the listing cache, all directories together (~10 MB)
_LISTING_MAX = 4096           # entries of the largest directory cached


class Config:
    """What to overlay.  ``work`` is the private work directory (already
    emptied by the mount code), None for a read-only mount."""

    def __init__(self, upper: bytes | None, lowers: list[bytes], work: bytes | None,
                 timeout: float = 86400.0, xattr_permissions: bool = False,
                 writeback: bool = False, uidmap: IdMapping | None = None,
                 gidmap: IdMapping | None = None, errors_path: bytes | None = None) -> None:
        self.upper, self.lowers, self.work = upper, lowers, work
        # Where each internal error (a handler failing with a Python exception: a bug) is
        # recorded, one line each, for whoever runs the mount to notice (``internal_error``).
        self.errors_path = errors_path
        self.timeout = timeout
        self.xattr_permissions = xattr_permissions
        self.writeback = writeback
        self.uidmap, self.gidmap = uidmap, gidmap    # None: owners shown as stored


class OverlayFS(pyfuse3.Operations):
    """Overlay of ``Config.lowers`` under ``Config.upper``."""

    supports_dot_lookup = False

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.enable_writeback_cache = cfg.writeback
        self.layers = Layers(cfg.upper, cfg.lowers)
        devs = [os.stat(r).st_dev for r in self.layers.roots if r is not None]
        self.inomap = InodeMap(devs)
        self.table = NodeTable()
        top = 0 if cfg.upper is not None else 1
        root_st = os.lstat(self.layers.real(top, b""))
        root = Node(ROOT_INODE, top, root_st.st_mode)
        root.dirlayers = self.layers.root_layers()
        root.lookups = 1
        self.table.install(root)
        self.files: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._fh = itertools.count(1)
        self._tmp = itertools.count(1)
        self._rbuf = mmap.mmap(-1, 1 << 20)   # pages are touched only as big reads need them
        # The listing cache: pyfuse3 cannot ask the kernel to cache directory listings
        # (FOPEN_CACHE_DIR), so a directory listed again while nothing changed anywhere in
        # the mount is answered from here (not with -o timeout=0, for layers changed
        # behind the mount's back): dir ino -> (generation, rows of name, layer, ino,
        # attributes).  ``generation`` counts every handler that may change something.
        self.generation = 0
        self.listings: dict[int, tuple[int, list[tuple[bytes, int, int, pyfuse3.EntryAttributes]]]] = {}
        self.listing_rows = 0
        self.kernel_notify = False
        self.internal_errors = 0
        self.active = 0          # handlers running (suspended ones included)

    # ------------------------------------------------------------ helpers

    def internal_error(self, handler: str, error: BaseException) -> None:
        """Count an internal error and append it to ``Config.errors_path`` (when set): the
        process answered EIO, which it should never have had to."""
        self.internal_errors += 1
        if self.cfg.errors_path is None:
            return
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {handler}: {type(error).__name__}: {error}\n"
        try:
            fd = os.open(self.cfg.errors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode(errors="replace")[:4096])
            finally:
                os.close(fd)
        except OSError:
            pass

    def _node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def _target(self, node: Node) -> bytes | int:
        """Where the node's backing object is reached: its path, or — once it has no name
        left (unlinked while open) — one of its open backing fds."""
        try:
            return self.layers.real(node.layer, node.path())
        except KeyError:
            for fd in node.fds:
                return fd
            raise _err(errno.ENOENT) from None

    def _stat(self, node: Node) -> tuple[os.stat_result, bytes | int]:
        """lstat of the node's backing object, and where it is (``_target``)."""
        target = self._target(node)
        return (os.fstat(target) if isinstance(target, int) else os.lstat(target)), target

    def _attr(self, node: Node, st: os.stat_result, real: bytes | int | None) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = node.generation
        mode, uid, gid, rdev = st.st_mode, st.st_uid, st.st_gid, st.st_rdev
        if self.cfg.uidmap is not None:
            uid = self.cfg.uidmap.shown(uid)
        if self.cfg.gidmap is not None:
            gid = self.cfg.gidmap.shown(gid)
        if self.cfg.xattr_permissions and real is not None:
            ov = ownership.read(real, st)
            if ov is not None:
                mode, uid, gid, rdev = ov.mode, ov.uid, ov.gid, ov.rdev
        e.st_mode = mode
        e.st_nlink = 1 if node.is_dir and len(node.dirlayers) > 1 else st.st_nlink   # node.merged, inlined
        e.st_uid = uid
        e.st_gid = gid
        e.st_rdev = rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        e.entry_timeout = self.cfg.timeout
        e.attr_timeout = self.cfg.timeout
        return e

    def _node_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        st, real = self._stat(node)
        return self._attr(node, st, real)

    def _ino_for(self, found: Found, path: bytes, fresh: bool = False) -> int:
        st = found.st
        if found.layer == 0:
            if not fresh:
                try:
                    return int(os.getxattr(self.layers.real(0, path), copyup.INO_XATTR,
                                           follow_symlinks=False))
                except (OSError, ValueError):
                    pass
        elif st.st_nlink > 1 and not stat_mod.S_ISDIR(st.st_mode):
            return self.inomap.for_path(found.layer, path)
        ino = self.inomap.encode(st.st_dev, st.st_ino)
        if ino == ROOT_INODE:
            ino = self.inomap.for_path(found.layer, path)
        return ino

    def _register(self, parent: Node, name: bytes, found: Found, fresh: bool = False,
                  ppath: bytes | None = None) -> Node:
        """The node for ``found`` at ``parent/name``, created or refreshed.
        Its lookup count is not changed.  ``ppath``: the parent's path, if
        the caller has it already."""
        path = (parent.path() if ppath is None else ppath) + b"/" + name
        ino = self._ino_for(found, path, fresh)
        node = self.table.get(ino)
        mode = found.st.st_mode
        if node is None:
            node = Node(ino, found.layer, mode)
            self.table.install(node)
        elif node.dead or stat_mod.S_IFMT(node.mode) != stat_mod.S_IFMT(mode):
            # The backing inode number was reused: a new object.
            for key in list(node.links):
                if self.table.dentries.get(key) is node:
                    del self.table.dentries[key]
            node.links.clear()
            node.generation += 1
            node.dead = False
            node.layer = found.layer
            node.mode = mode
            node.is_dir = stat_mod.S_ISDIR(mode)
        else:
            node.layer = found.layer
        node.dirlayers = found.dirlayers
        if node.is_dir:
            for key in list(node.links):
                if key != (parent.ino, name):
                    self.table.remove_link(node.links[key], key[1])
        self.table.add_link(node, parent, name)
        return node

    def _probe(self, parent: Node, name: bytes, from_layer: int | None = None,
               ppath: bytes | None = None) -> Found | None:
        if not parent.is_dir:
            raise _err(errno.ENOTDIR)
        if name.startswith(WH_PREFIX):
            return None
        layers = parent.dirlayers
        if from_layer is not None and from_layer in layers:
            layers = layers[layers.index(from_layer):]
        return self.layers.probe(layers, parent.path() if ppath is None else ppath, name)

    def _lookup(self, parent: Node, name: bytes, from_layer: int | None = None,
                ppath: bytes | None = None) -> tuple[Node, pyfuse3.EntryAttributes]:
        if ppath is None:
            ppath = parent.path()
        found = self._probe(parent, name, from_layer, ppath)
        if found is None:
            raise _err(errno.ENOENT)
        node = self._register(parent, name, found, ppath=ppath)
        real = self.layers.real(found.layer, ppath + b"/" + name)
        return node, self._attr(node, found.st, real)

    def _lower_has(self, parent: Node, name: bytes) -> bool:
        lowers = tuple(layer for layer in parent.dirlayers if layer > 0)
        return bool(lowers) and self.layers.probe(lowers, parent.path(), name) is not None

    def _tmpname(self) -> bytes:
        if self.cfg.work is None:
            raise _err(errno.EROFS)
        return self.cfg.work + b"/#%d" % next(self._tmp)

    def _visible_stat(self, node: Node) -> tuple[int, int, int]:
        """(mode, uid, gid) as processes see them."""
        st, real = self._stat(node)
        if self.cfg.xattr_permissions and real is not None:
            ov = ownership.read(real, st)
            if ov is not None:
                return ov.mode, ov.uid, ov.gid
        return st.st_mode, self._shown_uid(st.st_uid), self._shown_gid(st.st_gid)

    def _shown_uid(self, uid: int) -> int:
        return uid if self.cfg.uidmap is None else self.cfg.uidmap.shown(uid)

    def _shown_gid(self, gid: int) -> int:
        return gid if self.cfg.gidmap is None else self.cfg.gidmap.shown(gid)

    def _disk_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """Shown ids (-1: unchanged) as stored on disk (raises EINVAL for an unmapped one)."""
        return (uid if self.cfg.uidmap is None else self.cfg.uidmap.disk(uid),
                gid if self.cfg.gidmap is None else self.cfg.gidmap.disk(gid))

    def _new_owner(self, parent: Node, ctx: pyfuse3.RequestContext) -> tuple[int, int, bool]:
        """(uid, gid, parent is setgid) for an object created by ``ctx``."""
        pmode, _puid, pgid = self._visible_stat(parent)
        if pmode & stat_mod.S_ISGID:
            return ctx.uid, pgid, True
        return ctx.uid, ctx.gid, False

    def _own_new(self, real: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
                 fd: int | None = None) -> None:
        """Give a just-created upper object its owner (and keep set-id bits)."""
        if self.cfg.xattr_permissions:
            st = os.fstat(fd) if fd is not None else os.lstat(real)
            if (uid, gid) != (st.st_uid, st.st_gid) or stat_mod.S_IFMT(mode) != stat_mod.S_IFMT(st.st_mode):
                if not stat_mod.S_ISLNK(st.st_mode):
                    ownership.write(real, ownership.Override(uid, gid, mode, rdev))
            return
        uid, gid = self._disk_ids(uid, gid)
        if fd is not None:
            os.fchown(fd, uid, gid)
            if mode & (stat_mod.S_ISUID | stat_mod.S_ISGID):
                os.fchmod(fd, stat_mod.S_IMODE(mode))
        else:
            os.lchown(real, uid, gid)
            if mode & (stat_mod.S_ISUID | stat_mod.S_ISGID) and not stat_mod.S_ISLNK(mode):
                os.chmod(real, stat_mod.S_IMODE(mode))

    # ----------------------------------------------------------- copy-up

    async def _ensure_upper_dir(self, node: Node) -> None:
        """Make sure directory ``node`` exists in the upper layer."""
        if 0 in node.dirlayers:
            return
        if self.cfg.upper is None:
            raise _err(errno.EROFS)
        await self._copy_up(node)

    async def _copy_up(self, node: Node, data: bool = True) -> None:
        """Copy ``node`` to the upper layer (parents first) unless it is there.

        Runs under the node's copy lock; big files are copied in a worker
        thread into the work directory, then renamed into place here."""
        if node.layer == 0 and (not node.is_dir or 0 in node.dirlayers):
            return
        if self.cfg.upper is None:
            raise _err(errno.EROFS)
        if node.copy_lock is None:
            node.copy_lock = loop.Lock()
        elif node.copy_lock.locked():
            loop.about_to_block()
        async with node.copy_lock:
            if node.layer == 0 and (not node.is_dir or 0 in node.dirlayers):
                return
            parent, _name = node.first_link()
            await self._ensure_upper_dir(parent)
            path = node.path()
            src = self.layers.real(node.layer, path)
            st = os.lstat(src)
            keep_ino = node.ino if not stat_mod.S_ISLNK(st.st_mode) else None
            tmp = self._tmpname()
            if data and stat_mod.S_ISREG(st.st_mode) and st.st_size >= _THREAD_COPY_MIN:
                loop.about_to_block()
                await loop.run_sync_in_thread(copyup.copy_up, src, tmp, st, keep_ino)
                try:
                    path = node.path()      # may have moved while copying
                except KeyError:
                    copyup.remove_tree(tmp)
                    raise _err(errno.ENOENT) from None
            else:
                copyup.copy_up(src, tmp, st, keep_ino, data)
            pst = os.lstat(self.layers.real(0, parent.path()))
            try:
                os.rename(tmp, self.layers.real(0, path))
            except OSError:
                copyup.remove_tree(tmp)
                raise
            node.layer = 0
            # Like the kernel, copy-up leaves the parent's times unchanged;
            # its ctime did change, so drop the kernel's cached attributes.
            os.utime(self.layers.real(0, parent.path()), ns=(pst.st_atime_ns, pst.st_mtime_ns))
            self._invalidate(parent.ino)
            self._invalidate(node.ino)
            if node.is_dir:
                node.dirlayers = (0,) + tuple(layer for layer in node.dirlayers if layer != 0)

    def _invalidate(self, ino: int) -> None:
        """Drop the kernel's cached attributes of ``ino`` (only once mounted:
        ``kernel_notify`` is set by the mount code).  Never raises."""
        if not self.kernel_notify:
            return
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except Exception:   # not known to the kernel, or not mounted (unit use)
            pass

    # -------------------------------------------------------- operations

    def init(self) -> None:
        pass

    @_handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        try:
            node, attr = self._lookup(parent, name)
        except pyfuse3.FUSEError as e:
            if e.errno != errno.ENOENT:
                raise
            # Negative entry: the kernel caches "no such name" (node id 0, no
            # reference taken).  Safe because every change goes through us.
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = self.cfg.timeout
            return neg
        node.lookups += 1
        return attr

    def forget(self, inode_list: list[tuple[int, int]]) -> None:  # type: ignore[override]
        for ino, n in inode_list:
            try:
                self.table.forget(ino, n)
            except Exception:       # forget must never raise
                log.exception("forget(%d)", ino)

    @_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return self._node_attr(self._node(inode))

    @_handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        handle = self.files.get(fh) if fh is not None else None
        if not node.links:
            # No name left (unlinked while open; e.g. write-back of times
            # after an unlink): change what an open upper fd can reach.
            fd = handle.fd if handle is not None else next(iter(node.fds), None)
            if node.layer == 0 and fd is not None:
                self._setattr_fd(fd, attr, fields)
            return self._node_attr(node)
        await self._copy_up(node, data=not (fields.update_size and attr.st_size == 0))
        real: bytes | None = self.layers.real(0, node.path())
        if fields.update_size:
            if handle is not None and handle.layer == 0:
                os.ftruncate(handle.fd, attr.st_size)
            elif real is not None:
                os.truncate(real, attr.st_size)
        if real is None:
            return self._node_attr(node)
        st = os.lstat(real)
        if fields.update_uid or fields.update_gid or fields.update_mode:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            if self.cfg.xattr_permissions and not stat_mod.S_ISLNK(st.st_mode):
                ov = ownership.read(real, st) or ownership.Override(
                    st.st_uid, st.st_gid, st.st_mode, st.st_rdev)
                mode = ov.mode
                if fields.update_mode:
                    mode = stat_mod.S_IFMT(ov.mode) | stat_mod.S_IMODE(attr.st_mode)
                elif (uid != -1 or gid != -1) and not stat_mod.S_ISDIR(ov.mode):
                    mode &= ~(stat_mod.S_ISUID | stat_mod.S_ISGID)   # as chown(2) does
                ov = ownership.Override(ov.uid if uid == -1 else uid, ov.gid if gid == -1 else gid,
                                        mode, ov.rdev)
                ownership.write(real, ov)
                if fields.update_mode:
                    os.chmod(real, stat_mod.S_IMODE(attr.st_mode))
            else:
                if uid != -1 or gid != -1:
                    os.lchown(real, *self._disk_ids(uid, gid))
                if fields.update_mode and not stat_mod.S_ISLNK(st.st_mode):
                    os.chmod(real, stat_mod.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(real)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(real, ns=(atime, mtime), follow_symlinks=False)
        return self._node_attr(node)

    def _setattr_fd(self, fd: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> None:
        """setattr of an upper object that has no name left, through an open fd."""
        if fields.update_size:
            os.ftruncate(fd, attr.st_size)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            if self.cfg.xattr_permissions:
                st = os.fstat(fd)
                ov = ownership.read(fd, st) or ownership.Override(st.st_uid, st.st_gid, st.st_mode, st.st_rdev)
                ownership.write(fd, ownership.Override(ov.uid if uid == -1 else uid, ov.gid if gid == -1 else gid,
                                                       ov.mode & ~(stat_mod.S_ISUID | stat_mod.S_ISGID), ov.rdev))
            else:
                os.fchown(fd, *self._disk_ids(uid, gid))
        if fields.update_mode:
            os.fchmod(fd, stat_mod.S_IMODE(attr.st_mode))
            if self.cfg.xattr_permissions:
                st = os.fstat(fd)
                ov = ownership.read(fd, st)
                if ov is not None:
                    ownership.write(fd, ownership.Override(ov.uid, ov.gid, stat_mod.S_IFMT(ov.mode)
                                                           | stat_mod.S_IMODE(attr.st_mode), ov.rdev))
        if fields.update_atime or fields.update_mtime:
            st = os.fstat(fd)
            os.utime(fd, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                             attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))

    @_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        return os.readlink(self.layers.real(node.layer, node.path()))

    async def _prepare_create(self, parent_inode: int, name: bytes) -> tuple[Node, bytes, bool]:
        """Parent node, upper path for ``name`` and whether a whiteout was
        replaced, for an object about to be created."""
        parent = self._node(parent_inode)
        if name.startswith(WH_PREFIX):
            raise _err(errno.EPERM)
        await self._ensure_upper_dir(parent)
        ppath = parent.path()
        replaced = self.layers.clear_whiteout(ppath, name)
        return parent, self.layers.real(0, ppath + b"/" + name), replaced

    def _finish_create(self, parent: Node, name: bytes, real: bytes,
                       dirlayers: tuple[int, ...] = ()) -> tuple[Node, pyfuse3.EntryAttributes]:
        st = os.lstat(real)
        node = self._register(parent, name, Found(0, st, dirlayers), fresh=True)
        node.lookups += 1
        return node, self._attr(node, st, real)

    @_handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if stat_mod.S_ISCHR(mode) and rdev == 0:
            raise _err(errno.EPERM)     # would read back as a whiteout
        parent, real, _ = await self._prepare_create(parent_inode, name)
        uid, gid, _sg = self._new_owner(parent, ctx)
        try:
            os.mknod(real, mode, rdev)
        except PermissionError:
            if not (self.cfg.xattr_permissions and (stat_mod.S_ISCHR(mode) or stat_mod.S_ISBLK(mode))):
                raise
            # Device node stored as an empty file described by the override xattr.
            os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            ownership.write(real, ownership.Override(uid, gid, mode, rdev))
        else:
            self._own_new(real, mode, uid, gid, rdev)
        return self._finish_create(parent, name, real)[1]

    @_handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
                    ) -> pyfuse3.EntryAttributes:
        parent, real, replaced = await self._prepare_create(parent_inode, name)
        uid, gid, setgid = self._new_owner(parent, ctx)
        mode = stat_mod.S_IMODE(mode) | (stat_mod.S_ISGID if setgid else 0)
        os.mkdir(real, mode)
        try:
            if setgid:
                os.chmod(real, mode)
            self._own_new(real, stat_mod.S_IFDIR | mode, uid, gid)
            if replaced or self._lower_has(parent, name):
                self.layers.set_opaque(parent.path() + b"/" + name)
        except OSError:
            copyup.remove_tree(real)
            raise
        return self._finish_create(parent, name, real, (0,))[1]

    @_handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent, real, _ = await self._prepare_create(parent_inode, name)
        uid, gid, _sg = self._new_owner(parent, ctx)
        os.symlink(target, real)
        self._own_new(real, stat_mod.S_IFLNK | 0o777, uid, gid)
        return self._finish_create(parent, name, real)[1]

    @_handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent, real, _ = await self._prepare_create(parent_inode, name)
        uid, gid, _sg = self._new_owner(parent, ctx)
        oflags = self._open_flags(flags) | os.O_CREAT | os.O_EXCL
        fd = os.open(real, oflags, stat_mod.S_IMODE(mode))
        try:
            self._own_new(real, stat_mod.S_IFREG | stat_mod.S_IMODE(mode), uid, gid, fd=fd)
            node, attr = self._finish_create(parent, name, real)
        except BaseException:
            os.close(fd)
            raise
        return self._new_handle(fd, node, flags, keep_cache=True), attr

    @_handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.is_dir:
            raise _err(errno.EPERM)
        await self._copy_up(node)
        src = self.layers.real(0, node.path())
        parent, real, _ = await self._prepare_create(new_parent_inode, new_name)
        os.link(src, real)
        st = os.lstat(real)
        self.table.add_link(node, parent, new_name)
        node.lookups += 1
        return self._attr(node, st, real)

    def _unlinked(self, parent: Node, name: bytes, nlink_left: int) -> None:
        node = self.table.remove_link(parent, name)
        if node is not None and not node.links and nlink_left <= 0:
            node.dead = True

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._node(parent_inode)
        found = self._probe(parent, name)
        if found is None:
            raise _err(errno.ENOENT)
        if stat_mod.S_ISDIR(found.st.st_mode):
            raise _err(errno.EISDIR)
        await self._ensure_upper_dir(parent)
        ppath = parent.path()
        if found.layer == 0:
            os.unlink(self.layers.real(0, ppath + b"/" + name))
            if self._lower_has(parent, name):
                self.layers.make_whiteout(ppath, name)
            left = found.st.st_nlink - 1
        else:
            self.layers.make_whiteout(ppath, name)
            left = 0
        self._unlinked(parent, name, left)

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._node(parent_inode)
        found = self._probe(parent, name)
        if found is None:
            raise _err(errno.ENOENT)
        if not stat_mod.S_ISDIR(found.st.st_mode):
            raise _err(errno.ENOTDIR)
        ppath = parent.path()
        cpath = ppath + b"/" + name
        if self.layers.list_merged(found.dirlayers, cpath):
            raise _err(errno.ENOTEMPTY)
        await self._ensure_upper_dir(parent)
        if found.layer == 0:
            self.layers.clear_dir_for_removal(cpath)
            os.rmdir(self.layers.real(0, cpath))
            if self._lower_has(parent, name):
                self.layers.make_whiteout(ppath, name)
        else:
            self.layers.make_whiteout(ppath, name)
        self._unlinked(parent, name, 0)

    @_handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _err(errno.EINVAL)
        pold = self._node(parent_inode_old)
        pnew = self._node(parent_inode_new)
        src = self._probe(pold, name_old)
        if src is None:
            raise _err(errno.ENOENT)
        if name_new.startswith(WH_PREFIX):
            raise _err(errno.EPERM)
        dst = self._probe(pnew, name_new)
        if dst is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise _err(errno.EEXIST)
        src_is_dir = stat_mod.S_ISDIR(src.st.st_mode)
        if src_is_dir and src.dirlayers != (0,):
            raise _err(errno.EXDEV)     # merged or lower directory, as the kernel without redirect_dir
        if dst is not None and stat_mod.S_ISDIR(dst.st.st_mode):
            if not src_is_dir:
                raise _err(errno.EISDIR)
            dpath = pnew.path() + b"/" + name_new
            if self.layers.list_merged(dst.dirlayers, dpath):
                raise _err(errno.ENOTEMPTY)
        elif dst is not None and src_is_dir:
            raise _err(errno.ENOTDIR)
        node = self.table.dentries.get((pold.ino, name_old))
        if node is None:
            node = self._register(pold, name_old, src)
        try:
            await self._rename_backing(pold, name_old, pnew, name_new, node, src, dst)
        finally:
            if node.lookups <= 0:
                self.table.drop(node)

    async def _rename_backing(self, pold: Node, name_old: bytes, pnew: Node, name_new: bytes,
                              node: Node, src: Found, dst: Found | None) -> None:
        src_is_dir = stat_mod.S_ISDIR(src.st.st_mode)
        if not src_is_dir:
            await self._copy_up(node)
        await self._ensure_upper_dir(pnew)
        await self._ensure_upper_dir(pold)
        opath, npath = pold.path(), pnew.path()
        if dst is not None and dst.layer == 0 and stat_mod.S_ISDIR(dst.st.st_mode):
            self.layers.clear_dir_for_removal(npath + b"/" + name_new)
        if src_is_dir:
            self.layers.clear_whiteout(npath, name_new)
        else:
            wh = wh_file_name(name_new)
            if wh is not None:
                try:
                    os.unlink(self.layers.real(0, npath + b"/" + wh))
                except FileNotFoundError:
                    pass
        dst_lower = self._lower_has(pnew, name_new)
        src_lower = self._lower_has(pold, name_old)
        os.rename(self.layers.real(0, opath + b"/" + name_old),
                  self.layers.real(0, npath + b"/" + name_new))
        if src_is_dir and dst_lower:
            self.layers.set_opaque(npath + b"/" + name_new)
        if src_lower:
            self.layers.make_whiteout(opath, name_old)
        # bookkeeping (no awaits from here on)
        if dst is not None:
            left = dst.st.st_nlink - 1 if dst.layer == 0 and not stat_mod.S_ISDIR(dst.st.st_mode) else 0
            self._unlinked(pnew, name_new, left)
        self.table.remove_link(pold, name_old)
        self.table.add_link(node, pnew, name_new)

    # -------------------------------------------------------------- files

    def _open_flags(self, flags: int) -> int:
        oflags = (flags & ~_STRIP_OPEN) | os.O_CLOEXEC | os.O_NOFOLLOW
        if self.cfg.writeback and flags & os.O_ACCMODE == os.O_WRONLY:
            oflags = (oflags & ~os.O_ACCMODE) | os.O_RDWR
        return oflags

    def _new_handle(self, fd: int, node: Node, flags: int, keep_cache: bool) -> pyfuse3.FileInfo:
        fh = next(self._fh)
        self.files[fh] = FileHandle(fd, node, node.layer, flags)
        node.add_fd(fd)
        fi = pyfuse3.FileInfo(fh=fh)
        fi.keep_cache = keep_cache
        return fi

    @_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if not node.links and not node.is_dir:
            # Unlinked while open, opened again (/proc/PID/fd/N): reopen what an open fd reaches.
            target = self._target(node)
            if writing and node.layer != 0:
                raise _err(errno.ENOENT)     # a lower file with no name left cannot be copied up
            fd = os.open(f"/proc/self/fd/{target}", self._open_flags(flags) & ~os.O_NOFOLLOW)
            return self._new_handle(fd, node, flags, keep_cache=False)
        if not writing:
            fd = os.open(self.layers.real(node.layer, node.path()), self._open_flags(flags))
            return self._new_handle(fd, node, flags, keep_cache=True)
        self.generation += 1            # a copy-up, a truncation: listings change
        try:
            await self._copy_up(node, data=not flags & os.O_TRUNC)
            fd = os.open(self.layers.real(node.layer, node.path()), self._open_flags(flags))
            return self._new_handle(fd, node, flags, keep_cache=not flags & os.O_TRUNC)
        finally:
            self.generation += 1

    def _handle(self, fh: int) -> FileHandle:
        h = self.files.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        return h

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.layer != h.node.layer and h.node.links:
            # Copied up since it was opened: read the upper copy from now on.
            fd = os.open(self.layers.real(h.node.layer, h.node.path()),
                         os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            h.node.drop_fd(h.fd)
            os.close(h.fd)
            h.fd, h.layer = fd, h.node.layer
            h.node.add_fd(fd)
        # One buffer serves every read: pyfuse3 copies it into the reply
        # before any other handler can run (no await after this point).
        if size > len(self._rbuf):
            self._rbuf = mmap.mmap(-1, size)
        view = memoryview(self._rbuf)
        n = os.preadv(h.fd, [view[:size]], off)
        return view[:n]

    @_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(self._handle(fh).fd, buf, off)

    # flush is not implemented: pyfuse3 answers ENOSYS and the kernel then
    # stops sending FLUSH on every close (nothing needs doing there).

    @_handler
    async def release(self, fh: int) -> None:
        h = self.files.pop(fh, None)
        if h is not None:
            h.node.drop_fd(h.fd)
            os.close(h.fd)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        fd = self._handle(fh).fd
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    # -------------------------------------------------------- directories

    @_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        fh = next(self._fh)
        self.dirs[fh] = DirHandle(node)
        return fh

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self.dirs.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        d = h.node
        cached = self.listings.get(d.ino)
        if cached is not None and cached[0] != self.generation:
            del self.listings[d.ino]
            self.listing_rows -= len(cached[1])
            cached = None
        if h.entries is None or start_id == 0:
            if cached is not None:
                h.entries, h.rows = [(row[0], row[1]) for row in cached[1]], None
            else:
                h.entries = self.layers.list_merged(d.dirlayers, d.path())
                h.rows, h.generation = [], self.generation
        entries = h.entries
        # Offsets: 1 = ".", 2 = "..", 3 + i = entries[i].  The kernel takes no reference
        # for "." and "..", and ignores their attributes (fuse_direntplus_link): they get
        # only the inode number and type the listing shows, no lstat.
        if start_id < 1:
            if not pyfuse3.readdir_reply(token, b".", _dir_entry(d.ino), 1):
                return
        if start_id < 2:
            parent = d if d.ino == ROOT_INODE or not d.links else d.first_link()[0]
            if not pyfuse3.readdir_reply(token, b"..", _dir_entry(parent.ino), 2):
                return
        if cached is not None and len(cached[1]) == len(entries):
            self._replay(d, cached[1], start_id, token)
            return
        dpath = d.path()
        rows = h.rows
        dirfds: dict[int, int] = {}     # layer -> the directory there: lstat one component, not a path
        try:
            for i in range(max(start_id - 2, 0), len(entries)):
                name, layer = entries[i]
                try:
                    fd = dirfds.get(layer)
                    if fd is None:
                        fd = dirfds[layer] = os.open(self.layers.real(layer, dpath),
                                                     os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    node, attr = self._readdir_entry(d, dpath, name, layer, fd)
                except (pyfuse3.FUSEError, FileNotFoundError, NotADirectoryError):
                    rows = h.rows = None    # vanished since the listing was taken: cache nothing
                    continue
                if not pyfuse3.readdir_reply(token, name, attr, i + 3):
                    if node.lookups <= 0:
                        self.table.drop(node)
                    break
                node.lookups += 1
                if rows is not None and len(rows) == i:
                    rows.append((name, layer, node.ino, attr))
            else:
                if (rows is not None and len(rows) == len(entries) <= _LISTING_MAX
                        and h.generation == self.generation and self.cfg.timeout > 0):
                    self._keep_listing(d.ino, rows)
                    h.rows = None
        finally:
            for fd in dirfds.values():
                os.close(fd)

    def _keep_listing(self, ino: int, rows: list) -> None:
        """Cache ``rows``, dropping the oldest listings beyond ``_LISTING_ROWS`` entries."""
        stale = [k for k, (gen, _rows) in self.listings.items() if gen != self.generation or k == ino]
        for k in stale:
            self.listing_rows -= len(self.listings.pop(k)[1])
        while self.listings and self.listing_rows + len(rows) > _LISTING_ROWS:
            _gen, dropped = self.listings.pop(next(iter(self.listings)))
            self.listing_rows -= len(dropped)
        self.listings[ino] = (self.generation, rows)
        self.listing_rows += len(rows)

    def _replay(self, d: Node, rows: list, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Answer from the listing cache; an entry whose node the kernel has forgotten since
        is looked up again."""
        for i in range(max(start_id - 2, 0), len(rows)):
            name, layer, ino, attr = rows[i]
            node = self.table.nodes.get(ino)
            if node is None or node.dead or (d.ino, name) not in node.links:
                try:
                    node, attr = self._lookup(d, name, layer)
                except (pyfuse3.FUSEError, FileNotFoundError, NotADirectoryError):
                    continue
                rows[i] = (name, layer, node.ino, attr)
            if not pyfuse3.readdir_reply(token, name, attr, i + 3):
                if node.lookups <= 0:
                    self.table.drop(node)
                break
            node.lookups += 1

    def _readdir_entry(self, d: Node, dpath: bytes, name: bytes, layer: int, dirfd: int
                       ) -> tuple[Node, pyfuse3.EntryAttributes]:
        """Like :meth:`_lookup` for a name the listing found first in
        ``layer`` (directory open at ``dirfd``); a fast path for the common
        case of a plain lower file the kernel already knows under this name."""
        st = os.lstat(name, dir_fd=dirfd)
        mode = st.st_mode
        if layer == 0 or stat_mod.S_ISDIR(mode) or st.st_nlink > 1 or stat_mod.S_ISCHR(mode):
            return self._lookup(d, name, layer, dpath)
        # the backing path, needed for ownership xattrs only
        real = self.layers.real(layer, dpath + b"/" + name) if self.cfg.xattr_permissions else None
        ino = self.inomap.encode(st.st_dev, st.st_ino)
        node = self.table.nodes.get(ino)
        if node is None and ino != ROOT_INODE:          # the common case: new to us
            node = self.table.nodes[ino] = Node(ino, layer, mode)
            self.table.add_link(node, d, name)
            return node, self._attr(node, st, real)
        if (node is None or node.dead or node.layer != layer or ino == ROOT_INODE
                or stat_mod.S_IFMT(node.mode) != stat_mod.S_IFMT(mode)
                or (d.ino, name) not in node.links):
            node = self._register(d, name, Found(layer, st, ()), ppath=dpath)
        return node, self._attr(node, st, real)

    @_handler
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        root = self.layers.roots[0] if self.layers.roots[0] is not None else self.layers.roots[1]
        s = os.statvfs(root)  # type: ignore[arg-type]
        out = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, attr, getattr(s, attr))
        return out

    # ------------------------------------------------------------- xattrs

    # A path is used without following symlinks; an fd (an object unlinked while open) as is.

    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if hidden_xattr(name):
            raise _err(pyfuse3.ENOATTR)
        target = self._target(self._node(inode))
        return os.getxattr(target, name, follow_symlinks=isinstance(target, int))

    @_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        target = self._target(self._node(inode))
        names = os.listxattr(target, follow_symlinks=isinstance(target, int))
        return [n for n in map(os.fsencode, names) if not hidden_xattr(n)]

    async def _writable_target(self, node: Node) -> bytes | int:
        if node.links:
            await self._copy_up(node)
        elif node.layer != 0:
            raise _err(errno.ENOENT)         # a lower object with no name left: nothing to change
        return self._target(node)

    @_handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if hidden_xattr(name):
            raise _err(errno.EPERM)
        target = await self._writable_target(self._node(inode))
        os.setxattr(target, name, value, follow_symlinks=isinstance(target, int))

    @_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if hidden_xattr(name):
            raise _err(pyfuse3.ENOATTR)
        target = await self._writable_target(self._node(inode))
        os.removexattr(target, name, follow_symlinks=isinstance(target, int))
