"""The build context: where it comes from, COPY sources matched in it, and their digests.

``load_context`` reads a context directory, or a tar on stdin (``-``, unpacked into a
directory the caller gives), or a lone Dockerfile on stdin (no context), and the Dockerfile
(``-f PATH``, which may lie outside the context, or ``-f -``).  The ignore file is
``<Dockerfile>.dockerignore`` when it exists (as BuildKit), else ``.dockerignore`` at the
context's root; ignored files are simply not in the context's view.

``match_sources`` expands a COPY source as Go's filepath.Match does, one path component at
a time (``*`` and ``?`` never match ``/``); a source that matches nothing is an error
naming it (and saying when .dockerignore excludes it).  ``digest_sources`` is a sha256
over what COPY would read — relative paths, file types, permission bits, link targets and
contents, never times or owners — so an unchanged rebuild hits the cache and a changed
byte misses it.  Contents are hashed once per build (``HashCache``, keyed by device,
inode, size and mtime).
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import stat
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import BuildError, UsageError
from .dockerignore import DockerIgnore
from .fsview import DirView, FsView
from .globs import bracket

GLOB = re.compile(r"[*?\[]")


@dataclass
class BuildContext:
    root: str                      # the context's directory (empty when there is none)
    dockerfile: str                # the Dockerfile's text
    dockerfile_name: str           # as messages name it
    ignore: DockerIgnore
    has_context: bool = True

    @property
    def view(self) -> DirView:
        return DirView(self.root, self.ignore)


def _is_tar(head: bytes) -> bool:
    return (head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"
            or head[:4] == b"\x28\xb5\x2f\xfd" or head[257:262] == b"ustar")


def _inside(root: str, rel: str) -> bool:
    """Whether ``root/rel``, its links resolved as they are on disk now, stays in ``root``."""
    real = os.path.realpath(os.path.join(root, rel))
    return real == root or real.startswith(root + os.sep)


def _unpack(data: BinaryIO, dest: str) -> None:
    """Extract a context tar into ``dest`` as docker build takes one: symbolic links are kept
    as they are, wherever they point (COPY copies a link, never what it points at), but no
    entry may be written outside ``dest`` — not by its name (absolute, ``..``), not through a
    link an earlier entry made, not as a hard link to a file outside.  Device nodes are left
    out and set-id bits dropped."""
    root = os.path.realpath(dest)
    try:
        with tarfile.open(fileobj=data, mode="r:*") as tar:
            for m in tar:
                name = posixpath.normpath(m.name)
                if m.name.startswith("/") or name == ".." or name.startswith("../"):
                    raise tarfile.TarError(f"{m.name} would land outside the context")
                if name == "." or m.isdev():
                    continue
                # its directory, through whatever links are there now, must be ours
                if not _inside(root, posixpath.dirname(name) or "."):
                    raise tarfile.TarError(f"{m.name} would land outside the context (through a link)")
                if m.islnk():
                    target = posixpath.normpath(m.linkname)
                    if m.linkname.startswith("/") or target == ".." or target.startswith("../") \
                            or not _inside(root, target):
                        raise tarfile.TarError(f"hard link {m.name} points outside the context")
                there = os.path.join(root, name)
                if os.path.islink(there) and not m.issym():
                    os.unlink(there)      # replaced, not written through (tarfile would follow it)
                m.mode &= 0o777
                tar.extract(m, root, set_attrs=not m.issym())
    except (tarfile.TarError, OSError) as e:
        raise UsageError(f"cannot read the build context from stdin: {e}") from None


def load_context(context: str, dockerfile: str | None = None, *, stdin: BinaryIO | None = None,
                 scratch_dir: str | None = None) -> BuildContext:
    """The context named on the command line; ``scratch_dir`` (empty, the caller's) receives a
    context given as a tar on stdin."""
    if context == "-" and dockerfile == "-":
        raise UsageError("the context and the Dockerfile cannot both come from stdin: "
                         "give the context as a directory")
    if context == "-":
        if stdin is None or scratch_dir is None:
            raise UsageError("reading the context from stdin needs stdin and a scratch directory")
        data = stdin.read()
        if _is_tar(data[:512]):
            _unpack(io.BytesIO(data), scratch_dir)
            root, has = scratch_dir, True
        else:
            name = "Dockerfile"
            text = data.decode(errors="replace")
            return BuildContext(scratch_dir, text, name, DockerIgnore([]), has_context=False)
    else:
        root, has = os.path.abspath(context), True
        if not os.path.isdir(root):
            raise UsageError(f"the build context {context} is not a directory"
                             + (" (give a directory, or - for a tar on stdin)" if os.path.exists(root) else ""))
    if dockerfile == "-":
        if stdin is None:
            raise UsageError("-f - needs the Dockerfile on stdin")
        text = stdin.read().decode(errors="replace")
        name = "Dockerfile"
        ignore_file = None
    else:
        given = dockerfile or "Dockerfile"
        candidates = [given] if os.path.isabs(given) else (
            [os.path.join(root, given)] if context == "-" or not dockerfile else [given, os.path.join(root, given)])
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise UsageError(f"there is no Dockerfile at {candidates[-1]}"
                             + ("" if dockerfile else ": write one, or name it with -f"))
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read the Dockerfile {path}: {e.strerror}") from None
        name = given if dockerfile else "Dockerfile"
        ignore_file = path + ".dockerignore"
        if not os.path.isfile(ignore_file):
            ignore_file = None
    ignore_file = ignore_file or os.path.join(root, ".dockerignore")
    patterns = DockerIgnore([])
    if os.path.isfile(ignore_file):
        try:
            with open(ignore_file, encoding="utf-8", errors="replace") as f:
                patterns = DockerIgnore.from_text(f.read())
        except ValueError as e:
            raise UsageError(str(e)) from None
    return BuildContext(root, text, name, patterns, has)


# ---------------------------------------------------------------- sources

def _component_match(pattern: str, name: str) -> bool:
    """Go's filepath.Match for one component."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 1
        elif c == "[":
            found = bracket(pattern, i)
            if found is None:
                raise ValueError(f"bad pattern {pattern!r}: unterminated [")
            regex, i = found
            out.append(regex)
        else:
            out.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(out), name, re.S) is not None


def clean_source(src: str) -> str:
    """A COPY source as a path relative to the view's root ("" is the root)."""
    p = posixpath.normpath("/" + src)
    return p.lstrip("/")


def match_sources(view: FsView, pattern: str, *, what: str = "the build context",
                  ignore: DockerIgnore | None = None) -> list[str]:
    """The paths of ``view`` that ``pattern`` names (sorted); an error when there is none."""
    if posixpath.normpath(pattern).startswith("../") or posixpath.normpath(pattern) == "..":
        raise BuildError(f"COPY {pattern}: the source is outside {what}; a build reads only its context")
    rel = clean_source(pattern)
    if not GLOB.search(rel):
        found = [rel] if _exists(view, rel) else []
    else:
        found = [""]
        for comp in rel.split("/"):
            nxt = []
            for base in found:
                if not GLOB.search(comp):
                    cand = f"{base}/{comp}" if base else comp
                    if _exists(view, cand):
                        nxt.append(cand)
                    continue
                d = _resolve(view, base) if base else ""
                st = view.lstat(d)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    continue
                try:
                    nxt += [f"{base}/{name}" if base else name for name in view.listdir(d)
                            if _component_match(comp, name)]
                except ValueError as e:
                    raise BuildError(f"COPY {pattern}: {e}") from None
            found = nxt
        found.sort()
    if not found:
        hint = ""
        if ignore is not None and ignore.ignored(rel):
            hint = "; .dockerignore excludes it"
        raise BuildError(f"COPY {pattern}: no such file or directory in {what}{hint}")
    return found


def _resolve(view: FsView, path: str) -> str:
    try:
        return view.resolve(path)
    except OSError as e:
        raise BuildError(f"COPY {path}: {e}") from None


def _exists(view: FsView, rel: str) -> bool:
    if not rel:
        return True
    parent, _, name = rel.rpartition("/")
    p = _resolve(view, parent) if parent else ""
    return view.lstat(f"{p}/{name}" if p else name) is not None


# ---------------------------------------------------------------- digests

class HashCache:
    """sha256 of file contents, computed once per build per (device, inode, size, mtime)."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int, int], str] = {}

    def file(self, view: FsView, path: str, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._known:
            h = hashlib.sha256()
            with view.open(path) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            self._known[key] = h.hexdigest()
        return self._known[key]


@dataclass
class SourceDigest:
    kind: str                   # "file", "dir" or "multi"
    hex: str
    files: int = 0
    paths: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """As Docker writes it in the history: ``COPY file:HEX in /dest``."""
        return f"{self.kind}:{self.hex}"


def _type(st: os.stat_result) -> str:
    m = st.st_mode
    return ("d" if stat.S_ISDIR(m) else "f" if stat.S_ISREG(m) else "l" if stat.S_ISLNK(m)
            else "p" if stat.S_ISFIFO(m) else "c" if stat.S_ISCHR(m) else "b" if stat.S_ISBLK(m) else "s")


def digest_sources(view: FsView, sources: list[str], *, cache: HashCache | None = None,
                   what: str = "the build context", ignore: DockerIgnore | None = None) -> SourceDigest:
    """One digest over every file the COPY ``sources`` (patterns) name in ``view``."""
    cache = cache or HashCache()
    h = hashlib.sha256()
    kinds = []
    count = 0
    matched: list[str] = []
    for pattern in sources:
        for rel in match_sources(view, pattern, what=what, ignore=ignore):
            matched.append(rel)
            real = _resolve(view, rel)            # a source that is a symlink is followed
            st = view.lstat(real)
            if st is None:
                raise BuildError(f"COPY {pattern}: {rel} is a symbolic link to nothing in {what}")
            h.update(f"source\0{rel}\0".encode())
            kinds.append(_type(st))
            entries = [("", st)] + ([(p[len(real):].lstrip("/"), s) for p, s in view.walk(real)]
                                     if stat.S_ISDIR(st.st_mode) else [])
            for sub, est in entries:
                t = _type(est)
                h.update(f"{sub}\0{t}\0{stat.S_IMODE(est.st_mode):o}\0".encode())
                full = f"{real}/{sub}".strip("/") if sub else real
                if t == "f":
                    h.update(cache.file(view, full, est).encode())
                    count += 1
                elif t == "l":
                    h.update(view.readlink(full).encode())
                elif t in "cb":
                    h.update(f"{os.major(est.st_rdev)},{os.minor(est.st_rdev)}".encode())
                h.update(b"\n")
    kind = "multi" if len(kinds) != 1 else ("dir" if kinds[0] == "d" else "file")
    return SourceDigest(kind, h.hexdigest(), count, matched)


__all__ = ["BuildContext", "HashCache", "SourceDigest", "clean_source", "digest_sources", "load_context",
           "match_sources"]
