"""Read-only views of a tree that COPY reads from or writes over.

Paths are "/"-separated and relative to the view's root ("" or "/" is the root).

    DirView     a directory: the build context (with its .dockerignore), or any tree
    LayersView  unpacked layers merged as overlayfs would (bottom first): a whiteout (a
                character device 0/0, or ``.wh.NAME``) hides NAME below it; an opaque
                directory (xattr ``user.overlay.opaque`` or ``trusted.overlay.opaque`` = ``y``,
                or a ``.wh..wh..opq`` entry) hides what is below it.  The same rules as
                container/export.py's ``merged()``, which walks a whole tree; COPY looks paths
                up one at a time, so the view resolves each path on its own.

``resolve`` follows symlinks inside the view (an absolute target is taken from the view's
root, ``..`` never leaves it), as Docker resolves COPY sources and destinations.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from typing import BinaryIO

from .dockerignore import DockerIgnore
from ..image.whiteouts import OPAQUE_MARKER, WH_PREFIX as WH, is_device_whiteout as _is_whiteout, is_opaque as _opaque


def _norm(path: str) -> str:
    p = posixpath.normpath("/" + path).lstrip("/")
    return "" if p == "." else p


class FsView:
    """What COPY needs of a tree; subclasses give lstat, listdir and host_path."""

    def lstat(self, path: str) -> os.stat_result | None:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def host_path(self, path: str) -> str:
        """Where the entry lies on the host (after lstat said it exists)."""
        raise NotImplementedError

    def open(self, path: str) -> BinaryIO:
        return open(self.host_path(path), "rb")

    def readlink(self, path: str) -> str:
        return os.readlink(self.host_path(path))

    def read_text(self, path: str) -> str | None:
        try:
            p = self.resolve(path)
            st = self.lstat(p)
            if st is None or not stat.S_ISREG(st.st_mode):
                return None
            with self.open(p) as f:
                return f.read().decode(errors="replace")
        except OSError:
            return None

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """``path`` with every symlink in it followed inside the view (40 links at most)."""
        parts = _norm(path).split("/") if _norm(path) else []
        done: list[str] = []
        links = 0
        while parts:
            name = parts.pop(0)
            cur = "/".join(done + [name])
            st = self.lstat(cur)
            if st is not None and stat.S_ISLNK(st.st_mode) and (parts or follow_last):
                links += 1
                if links > 40:
                    raise OSError(f"too many levels of symbolic links at /{cur}")
                target = self.readlink(cur)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            if name == "..":
                if done:
                    done.pop()
            elif name not in ("", "."):
                done.append(name)
        return "/".join(done)

    def walk(self, path: str) -> Iterator[tuple[str, os.stat_result]]:
        """(path, lstat) of everything below ``path``, parents first, names sorted."""
        for name in self.listdir(path):
            child = f"{path}/{name}" if path else name
            st = self.lstat(child)
            if st is None:
                continue
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                yield from self.walk(child)


class DirView(FsView):
    def __init__(self, root: str, ignore: DockerIgnore | None = None):
        self.root = os.path.abspath(root)
        self.ignore = ignore if ignore and ignore.patterns else None
        self._visible: dict[str, bool] = {}

    def host_path(self, path: str) -> str:
        p = _norm(path)
        return os.path.join(self.root, p) if p else self.root

    def _shown(self, p: str, st: os.stat_result) -> bool:
        if self.ignore is None or not p:
            return True
        if p in self._visible:
            return self._visible[p]
        shown = not self.ignore.ignored(p)
        if not shown and stat.S_ISDIR(st.st_mode) and self.ignore.may_include_below(p):
            shown = bool(self.listdir(p))
        self._visible[p] = shown
        return shown

    def lstat(self, path: str) -> os.stat_result | None:
        p = _norm(path)
        try:
            st = os.lstat(self.host_path(p))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if self._shown(p, st) else None

    def listdir(self, path: str) -> list[str]:
        p = _norm(path)
        try:
            names = sorted(os.listdir(self.host_path(p)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        if self.ignore is None:
            return names
        return [n for n in names if self.lstat(f"{p}/{n}" if p else n) is not None]


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class LayersView(FsView):
    """Unpacked layer directories, bottom first (the last one wins)."""

    def __init__(self, layer_dirs: list[str]):
        self.dirs = [os.path.abspath(d) for d in layer_dirs]
        self._found: dict[str, tuple[str, int, os.stat_result, int] | None] = {}

    def _find(self, path: str) -> tuple[str, int, os.stat_result, int] | None:
        """(host path, its layer, lstat, the lowest layer its children may come from).

        Remembered: the layers do not change while a build reads them."""
        key = _norm(path)
        if key not in self._found:
            self._found[key] = self._lookup(key)
        return self._found[key]

    def _lookup(self, path: str) -> tuple[str, int, os.stat_result, int] | None:
        parts = _norm(path).split("/") if _norm(path) else []
        top = len(self.dirs) - 1
        if top < 0:
            return None
        floor = 0
        found: tuple[str, int, os.stat_result] | None = (self.dirs[top], top, os.lstat(self.dirs[top]))
        for k, name in enumerate(parts):
            parent = "/".join(parts[:k])
            found, stop = None, floor
            for i in range(top, floor - 1, -1):
                base = os.path.join(self.dirs[i], parent) if parent else self.dirs[i]
                pst = _lstat(base)
                if pst is None:
                    continue
                if not stat.S_ISDIR(pst.st_mode):
                    stop = max(stop, i + 1)
                    break
                host = os.path.join(base, name)
                st = _lstat(host)
                gone = (st is not None and _is_whiteout(st)) or os.path.lexists(os.path.join(base, WH + name))
                if found is None:
                    if st is not None and not _is_whiteout(st) and not name.startswith(WH):
                        found = (host, i, st)
                        if not stat.S_ISDIR(st.st_mode):
                            break
                    elif gone:
                        return None
                elif gone or (st is not None and not stat.S_ISDIR(st.st_mode)):
                    stop = max(stop, i + 1)
                    break
                if parent and _opaque(base):
                    stop = max(stop, i)
                    break
            if found is None:
                return None
            floor = stop
        assert found is not None
        return found[0], found[1], found[2], floor

    def lstat(self, path: str) -> os.stat_result | None:
        f = self._find(path)
        return f[2] if f else None

    def host_path(self, path: str) -> str:
        f = self._find(path)
        if f is None:
            raise FileNotFoundError(path)
        return f[0]

    def listdir(self, path: str) -> list[str]:
        f = self._find(path)
        if f is None or not stat.S_ISDIR(f[2].st_mode):
            return []
        p = _norm(path)
        names: set[str] = set()
        hidden: set[str] = set()
        for i in range(f[1], f[3] - 1, -1):
            base = os.path.join(self.dirs[i], p) if p else self.dirs[i]
            st = _lstat(base)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break
            for name in os.listdir(base):
                if name == OPAQUE_MARKER:
                    continue
                if name.startswith(WH):
                    if name[len(WH):] not in names:
                        hidden.add(name[len(WH):])
                    continue
                if name in hidden or name in names:
                    continue
                if _is_whiteout(os.lstat(os.path.join(base, name))):
                    hidden.add(name)
                    continue
                names.add(name)
            if p and _opaque(base):
                break
        return sorted(names)


__all__ = ["DirView", "FsView", "LayersView"]
