"""Inode numbers and the table of nodes the kernel knows about.

A :class:`Node` is one overlay object the kernel holds a reference to.  Its
FUSE node id is also the ``st_ino`` processes see (pyfuse3 uses one value for
both), so node ids must be unique within the mount and stable across lookups
and remounts.  The scheme (documented in docs/fuse-overlay.md):

* an object found in layer L reports ``encode(dev(L), st_ino)`` where
  ``encode`` is the identity when all layers share one filesystem, and
  otherwise puts a small per-filesystem index in the top 8 bits;
* a lower non-directory with more than one hard link reports a hash of
  (layer, path) with the top bit set, because copy-up breaks lower hard
  links (as the kernel without ``index=on`` does) and each path must then be
  able to become its own object;
* a copied-up object keeps the number it had before copy-up: it is stored in
  the ``user.fuse_overlay.ino`` xattr of the upper file.

Lookup counts: every entry handed to the kernel adds one (``ref``), ``forget``
subtracts; a node with no references left is dropped from the table.
"""
from __future__ import annotations

import stat as stat_mod
from typing import Iterator

ROOT_INODE = 1
_HASH_BIT = 1 << 63
_FS_SHIFT = 56


_NO_FDS: frozenset[int] = frozenset()


class Node:
    """One overlay object.

    ``links`` maps (parent node id, name) to the parent :class:`Node` for
    every name the kernel looked this object up under; the first one is the
    path used for backing-file operations.  ``layer`` is the topmost layer
    holding the object (0 = upper, 1.. = lowerdirs); ``dirlayers`` lists, for
    a directory, every layer contributing entries, top first.
    """

    __slots__ = ("ino", "generation", "links", "layer", "is_dir", "dirlayers",
                 "lookups", "dead", "fds", "copy_lock", "mode")

    def __init__(self, ino: int, layer: int, mode: int) -> None:
        self.ino = ino
        self.generation = 0
        self.links: dict[tuple[int, bytes], "Node"] = {}
        self.layer = layer
        self.mode = mode
        self.is_dir = stat_mod.S_ISDIR(mode)
        self.dirlayers: tuple[int, ...] = ()
        self.lookups = 0
        self.dead = False
        self.fds: set[int] | frozenset[int] = _NO_FDS   # open backing fds, used once no path is left
        self.copy_lock = None        # loop.Lock(), created on first copy-up

    def add_fd(self, fd: int) -> None:
        if not self.fds:
            self.fds = set()     # most nodes are never opened: no set for them
        self.fds.add(fd)  # type: ignore[union-attr]

    def drop_fd(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.discard(fd)  # type: ignore[union-attr]

    @property
    def merged(self) -> bool:
        """True for a directory the kernel would call merged (nlink is 1)."""
        return self.is_dir and len(self.dirlayers) > 1

    def path(self) -> bytes:
        """Overlay-relative path (``b''`` for the root, else ``b'/a/b'``).

        Raises KeyError when the object has no name left (unlinked)."""
        parts: list[bytes] = []
        node = self
        while node.ino != ROOT_INODE:
            for (_pino, name), parent in node.links.items():
                parts.append(name)
                node = parent
                break
            else:
                raise KeyError(self.ino)
        if not parts:
            return b""
        parts.append(b"")
        parts.reverse()
        return b"/".join(parts)

    def first_link(self) -> tuple["Node", bytes]:
        for (_pino, name), parent in self.links.items():
            return parent, name
        raise KeyError(self.ino)


class InodeMap:
    """Turns (layer, backing st_dev, st_ino) into node ids as described above."""

    def __init__(self, layer_devs: list[int]) -> None:
        self._fs_index: dict[int, int] = {}
        for dev in layer_devs:
            self._fs_index.setdefault(dev, len(self._fs_index))
        self.single_fs = len(self._fs_index) <= 1

    def encode(self, dev: int, ino: int) -> int:
        if self.single_fs:
            return ino
        idx = self._fs_index.get(dev)
        if idx is None:
            idx = self._fs_index.setdefault(dev, len(self._fs_index))
        if ino < (1 << _FS_SHIFT) and idx < 128:
            return (idx << _FS_SHIFT) | ino
        return self.hashed(b"%d:%d" % (dev, ino))

    @staticmethod
    def hashed(key: bytes) -> int:
        import hashlib      # rarely needed: not at start-up
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        return _HASH_BIT | (h & (_HASH_BIT - 1)) | 2

    def for_path(self, layer: int, path: bytes) -> int:
        return self.hashed(b"%d\0" % layer + path)


class NodeTable:
    """Node id -> Node, plus the (parent id, name) -> Node dentry index."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.dentries: dict[tuple[int, bytes], Node] = {}

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def add_link(self, node: Node, parent: Node, name: bytes) -> None:
        key = (parent.ino, name)
        old = self.dentries.get(key)
        if old is not None and old is not node:
            old.links.pop(key, None)
        self.dentries[key] = node
        node.links[key] = parent

    def remove_link(self, parent: Node, name: bytes) -> Node | None:
        node = self.dentries.pop((parent.ino, name), None)
        if node is not None:
            node.links.pop((parent.ino, name), None)
        return node

    def install(self, node: Node) -> None:
        self.nodes[node.ino] = node

    def forget(self, ino: int, n: int) -> None:
        """Subtract ``n`` references; drop the node at zero.  Never raises."""
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= n
        if node.lookups <= 0:
            self.drop(node)

    def drop(self, node: Node) -> None:
        if node.lookups > 0 or node.ino == ROOT_INODE:
            return
        if self.nodes.get(node.ino) is node:
            del self.nodes[node.ino]
        for key in list(node.links):
            if self.dentries.get(key) is node:
                del self.dentries[key]
        node.links.clear()

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes.values()))
