"""The layer of a COPY or ADD, written as a tar stream.

Docker's rules: a directory source copies its contents; a file goes to DEST, or into it when
DEST ends with ``/`` or is a directory in the image; several sources need a DEST ending in
``/``; a source that is itself a symlink is followed, symlinks below it are copied as
symlinks; hard links inside one copy stay hard links.  Files keep their permission bits
unless ``--chmod``; everything is owned by 0:0 unless ``--chown`` (names looked up in the
image's /etc/passwd and /etc/group; a name alone takes the user's primary group, a number
alone the same number as group, as BuildKit does).  Parent directories the image lacks are
created 0755, owned as the copied files; directories the image has are never written (that
would change their mode or owner).  Paths of DEST are resolved through the image's symlinks.

ADD also extracts a local tar (plain, gzip, bzip2, xz, zstd) into DEST, keeping the
archive's owners unless ``--chown``, and downloads http(s) URLs (``download``, before the
cache key is computed) into a 0600 file dated by Last-Modified.

Entries are sorted (parents first); times come from the sources, clamped to ``epoch``
(SOURCE_DATE_EPOCH) when given; directories made here take ``epoch`` or the build's time.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ..errors import BuildError
from ..image import compression
from .context import HashCache, SourceDigest, digest_sources, match_sources
from .fsview import FsView
from .plan import CopyStep, is_url

if TYPE_CHECKING:
    import httpx


# ---------------------------------------------------------------- owners

def _table(lower: FsView | None, path: str) -> list[list[str]]:
    text = lower.read_text(path) if lower is not None else None
    return [ln.split(":") for ln in (text or "").splitlines() if ln.strip() and not ln.startswith("#")]


def resolve_chown(spec: str, lower: FsView | None) -> tuple[int, int]:
    """``--chown=USER[:GROUP]`` to numeric ids, names read from the image's files."""
    user, _, group = spec.partition(":")
    if not user:
        raise BuildError(f"--chown={spec}: the user is missing; write --chown=USER[:GROUP]")
    if user.isdigit():
        uid = gid = int(user)
    else:
        entry = next((e for e in _table(lower, "etc/passwd") if len(e) >= 4 and e[0] == user), None)
        if entry is None or not entry[2].isdigit():
            raise BuildError(f"--chown={spec}: there is no user {user!r} in the image's /etc/passwd; "
                             "give a numeric id or create the user first")
        uid = int(entry[2])
        gid = int(entry[3]) if entry[3].isdigit() else uid
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            entry = next((e for e in _table(lower, "etc/group") if len(e) >= 3 and e[0] == group), None)
            if entry is None or not entry[2].isdigit():
                raise BuildError(f"--chown={spec}: there is no group {group!r} in the image's /etc/group; "
                                 "give a numeric id or create the group first")
            gid = int(entry[2])
    return uid, gid


# ---------------------------------------------------------------- downloads

@dataclass
class Download:
    url: str
    path: str              # the downloaded file (the caller removes it)
    sha256: str            # "sha256:HEX"
    name: str              # the file name DEST gets when it is a directory
    mtime: int | None      # from Last-Modified


def _file_name(url: str, response: httpx.Response) -> str:
    cd = response.headers.get("content-disposition", "")
    for part in cd.split(";"):
        k, _, v = part.strip().partition("=")
        if k.lower() == "filename" and v.strip('"'):
            return posixpath.basename(v.strip('"'))
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    return name or "__unnamed__"


def download(url: str, into_dir: str, *, checksum: str | None = None, timeout: float = 60.0) -> Download:
    """Fetch ``url`` for ADD into a file under ``into_dir``; an error names the URL and why."""
    import httpx            # here: its import is a tenth of a cached rebuild, and only ADD of a URL needs it
    fd, path = tempfile.mkstemp(prefix=".add-", dir=into_dir)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as r:
            if r.status_code >= 400:
                raise BuildError(f"ADD {url}: the server answered {r.status_code} {r.reason_phrase}")
            for chunk in r.iter_bytes(1 << 20):
                h.update(chunk)
                out.write(chunk)
            name = _file_name(url, r)
            lm = r.headers.get("last-modified")
        mtime = None
        if lm:
            try:
                mtime = int(email.utils.parsedate_to_datetime(lm).timestamp())
            except (TypeError, ValueError):
                mtime = None
    except httpx.HTTPError as e:
        os.unlink(path)
        raise BuildError(f"ADD {url}: cannot download it: {e or type(e).__name__}") from None
    except BaseException:
        os.unlink(path)
        raise
    digest = "sha256:" + h.hexdigest()
    if checksum and checksum != digest:
        os.unlink(path)
        raise BuildError(f"ADD {url}: the download's digest is {digest}, not the --checksum {checksum}")
    return Download(url, path, digest, name, mtime)


# ---------------------------------------------------------------- entries

@dataclass
class _Entry:
    path: str                                   # in the image, no leading "/"
    type: bytes                                 # tarfile.DIRTYPE, REGTYPE, SYMTYPE, ...
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int = 0
    opener: Callable[[], BinaryIO] | None = None
    linkname: str = ""
    link_key: object = None                     # files sharing it are hard links of one another
    devmajor: int = 0
    devminor: int = 0


class _Layer:
    def __init__(self, step: CopyStep, lower: FsView | None, owner: tuple[int, int] | None,
                 epoch: int | None, now: int):
        self.step, self.lower, self.owner, self.epoch, self.now = step, lower, owner, epoch, now
        self.entries: dict[str, _Entry] = {}

    def time(self, t: float | None) -> int:
        t = int(t) if t is not None else self.now
        return min(t, self.epoch) if self.epoch is not None else t

    def ids(self, uid: int = 0, gid: int = 0) -> tuple[int, int]:
        return self.owner if self.owner is not None else (uid, gid)

    def lower_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory in the image (through its symlinks)."""
        if self.lower is None:
            return path == ""
        try:
            real = self.lower.resolve(path)
        except OSError:
            return False
        st = self.lower.lstat(real)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def dest_path(self, path: str) -> str:
        """``path`` with its parents resolved through the image's symlinks."""
        path = path.strip("/")
        if not path or self.lower is None:
            return path
        parent, _, name = path.rpartition("/")
        try:
            parent = self.lower.resolve(parent) if parent else ""
        except OSError as e:
            raise BuildError(f"{self.step.keyword} to /{path}: {e}") from None
        return f"{parent}/{name}" if parent else name

    def add(self, e: _Entry) -> None:
        e.path = self.dest_path(e.path)
        if e.type != tarfile.DIRTYPE:
            self.entries.pop(e.path, None)
        elif e.path in self.entries and self.entries[e.path].type == tarfile.DIRTYPE:
            return                                         # an earlier source made it already
        elif self.lower_dir(e.path) and not e.path == "":
            e = self._as_in_lower(e.path) or e             # keep the image's directory as it is
        if e.path:
            self.entries[e.path] = e

    def _as_in_lower(self, path: str) -> "_Entry | None":
        """An entry for the image's own directory ``path``, as it is there.  A layer must hold
        every parent of what it adds: unpacked, a missing one would be made with other owner
        and mode, and in an overlay the top layer's directory is the one seen."""
        if self.lower is None:
            return None
        st = self.lower.lstat(path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return None
        return _Entry(path, tarfile.DIRTYPE, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, self.time(st.st_mtime))

    def add_source_entry(self, view: FsView, src: str, st: os.stat_result, dest: str) -> None:
        uid, gid = self.ids()
        mode = stat.S_IMODE(st.st_mode)
        chmod = self.step.chmod
        mtime = self.time(st.st_mtime)
        m = st.st_mode
        if stat.S_ISDIR(m):
            self.add(_Entry(dest, tarfile.DIRTYPE, chmod if chmod is not None else mode, uid, gid, mtime))
        elif stat.S_ISREG(m):
            key = ("src", id(view), st.st_dev, st.st_ino) if st.st_nlink > 1 else None
            self.add(_Entry(dest, tarfile.REGTYPE, chmod if chmod is not None else mode, uid, gid, mtime,
                            st.st_size, lambda v=view, s=src: v.open(s), link_key=key))
        elif stat.S_ISLNK(m):
            self.add(_Entry(dest, tarfile.SYMTYPE, 0o777, uid, gid, mtime, linkname=view.readlink(src)))
        elif stat.S_ISFIFO(m):
            self.add(_Entry(dest, tarfile.FIFOTYPE, mode, uid, gid, mtime))
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            self.add(_Entry(dest, tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE, mode, uid, gid, mtime,
                            devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev)))
        # sockets are not copied

    def add_tree(self, view: FsView, src: str, dest: str) -> None:
        for path, st in view.walk(src):
            rel = path[len(src):].lstrip("/") if src else path
            self.add_source_entry(view, path, st, f"{dest}/{rel}")

    def add_parents(self) -> None:
        uid, gid = self.ids()
        for path in list(self.entries):
            parts = path.split("/")[:-1]
            for n in range(1, len(parts) + 1):
                p = "/".join(parts[:n])
                if p in self.entries:
                    continue
                if self.lower_dir(p):
                    kept = self._as_in_lower(self.lower.resolve(p)) if self.lower is not None else None
                    if kept is not None and kept.path == p:
                        self.entries[p] = kept
                    continue
                self.entries[p] = _Entry(p, tarfile.DIRTYPE, 0o755, uid, gid, self.time(None))

    def write(self, out: BinaryIO) -> None:
        self.add_parents()
        first: dict[object, str] = {}
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries, key=lambda p: p.split("/")):
                e = self.entries[path]
                info = tarfile.TarInfo(e.path + ("/" if e.type == tarfile.DIRTYPE else ""))
                info.type, info.mode, info.uid, info.gid, info.mtime = e.type, e.mode, e.uid, e.gid, e.mtime
                info.uname = info.gname = ""
                info.linkname = e.linkname
                info.devmajor, info.devminor = e.devmajor, e.devminor
                if e.type == tarfile.REGTYPE and e.link_key is not None and e.link_key in first:
                    info.type, info.linkname = tarfile.LNKTYPE, first[e.link_key]
                    tar.addfile(info)
                    continue
                if e.type == tarfile.REGTYPE:
                    if e.link_key is not None:
                        first[e.link_key] = e.path
                    info.size = e.size
                    assert e.opener is not None
                    with e.opener() as f:
                        tar.addfile(info, _Exact(f, e.size, e.path))
                else:
                    tar.addfile(info)


class _Exact:
    """A reader that gives exactly ``size`` bytes: a file that changed while copied is an error."""

    def __init__(self, f: BinaryIO, size: int, path: str):
        self.f, self.left, self.path = f, size, path

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        if len(data) < n:
            raise BuildError(f"/{self.path} changed while it was copied")
        self.left -= len(data)
        return data


def _is_archive(view: FsView, path: str) -> bool:
    try:
        with view.open(path) as f:
            head = f.read(512)
    except OSError:
        return False
    return compression.kind_of(head) != "plain" or head[257:262] == b"ustar"


def _open_archive(view: FsView, path: str, tmpdir: str) -> tarfile.TarFile:
    """The archive ``path``, decompressed (image.compression, the one decompressor) into a
    temporary file."""
    import io
    plain = tempfile.TemporaryFile(dir=tmpdir)
    try:
        with view.open(path) as f:
            raw = f if hasattr(f, "peek") else io.BufferedReader(f)   # type: ignore[arg-type]
            shutil.copyfileobj(compression.open_decompressed(raw), plain, 1 << 20)
        plain.seek(0)
        return tarfile.open(fileobj=plain, mode="r:")
    except (tarfile.TarError, *compression.ERRORS) as e:
        plain.close()
        raise BuildError(f"ADD {path}: cannot read the archive: {e}") from None


def _add_archive(layer: _Layer, tar: tarfile.TarFile, dest: str) -> None:
    members = tar.getmembers()
    by_name = {}
    for m in members:
        by_name[posixpath.normpath("/" + m.name).lstrip("/")] = m
    for m in members:
        name = posixpath.normpath("/" + m.name).lstrip("/")
        if not name or name == ".":
            continue
        target = f"{dest}/{name}" if dest else name
        uid, gid = layer.ids(m.uid, m.gid)
        mtime = layer.time(m.mtime)
        if m.isdir():
            layer.add(_Entry(target, tarfile.DIRTYPE, m.mode & 0o7777, uid, gid, mtime))
        elif m.isreg() or m.islnk():
            src = m
            if m.islnk():
                src = by_name.get(posixpath.normpath("/" + m.linkname).lstrip("/"))
                if src is None or not src.isreg():
                    continue
            key = ("tar", id(tar), posixpath.normpath("/" + src.name))
            layer.add(_Entry(target, tarfile.REGTYPE, src.mode & 0o7777, uid, gid, mtime, src.size,
                             lambda s=src: tar.extractfile(s), link_key=key))   # type: ignore[arg-type,return-value]
        elif m.issym():
            layer.add(_Entry(target, tarfile.SYMTYPE, 0o777, uid, gid, mtime, linkname=m.linkname))
        elif m.isfifo():
            layer.add(_Entry(target, tarfile.FIFOTYPE, m.mode & 0o7777, uid, gid, mtime))
        elif m.ischr() or m.isblk():
            layer.add(_Entry(target, m.type, m.mode & 0o7777, uid, gid, mtime,
                             devmajor=m.devmajor, devminor=m.devminor))


def digest_copy(step: CopyStep, source: FsView | None, *, cache: HashCache | None = None,
                downloads: Mapping[str, Download] | None = None, what: str = "the build context") -> SourceDigest:
    """What a COPY/ADD step reads, as one digest: its local sources in ``source``, its
    downloads, its heredocs.  ``cache_key(parent, step, d.hex)``; ``step.created_by(d.id)``."""
    local = [s for s in step.sources if not is_url(s)]
    if local and source is None:
        raise BuildError(f"{step.keyword} {local[0]}: there is no build context to copy from")
    d = (digest_sources(source, local, cache=cache, what=what, ignore=getattr(source, "ignore", None))
         if local and source is not None else SourceDigest("multi", hashlib.sha256().hexdigest()))
    count = len(d.paths) + len(step.urls) + len(step.heredocs)
    if not step.urls and not step.heredocs:
        return d
    h = hashlib.sha256(d.hex.encode())
    for url in step.urls:
        dl = (downloads or {}).get(url)
        if dl is None:
            raise BuildError(f"ADD {url}: not downloaded (the executor calls copying.download first)")
        h.update(f"url\0{dl.name}\0{dl.sha256}\0".encode())
    for name, content in step.heredocs:
        h.update(f"heredoc\0{name}\0".encode())
        h.update(hashlib.sha256(content.encode()).hexdigest().encode())
    kind = "file" if count == 1 else "multi"
    return SourceDigest(kind, h.hexdigest(), d.files + len(step.urls) + len(step.heredocs), d.paths)


def write_layer(out: BinaryIO, step: CopyStep, source: FsView | None, lower: FsView | None, *,
                downloads: Mapping[str, Download] | None = None, epoch: int | None = None,
                now: int | None = None, what: str = "the build context") -> None:
    """Write the layer of ``step`` to ``out`` as a tar.

    ``source`` is what the sources are read from: the context's view, or the filesystem of
    the ``--from`` stage or image; ``lower`` is the image being built on (None: empty).
    URL sources must be in ``downloads`` (``download()`` them first).
    """
    owner = resolve_chown(step.chown, lower) if step.chown else None
    # --link: the layer stands on its own (BuildKit copies onto scratch), so nothing of the
    # image decides what it holds; the image still names the --chown user
    layer = _Layer(step, None if step.link else lower, owner, epoch, int(time.time()) if now is None else now)
    dest = step.dest
    dest_dir = dest.endswith("/")
    dest_rel = dest.strip("/")
    matched: list[tuple[str, str]] = []            # (pattern, path in source)
    urls = []
    for pattern in step.sources:
        if is_url(pattern):
            urls.append(pattern)
            continue
        if source is None:
            raise BuildError(f"{step.keyword} {pattern}: there is no build context to copy from")
        matched += [(pattern, p) for p in match_sources(source, pattern, what=what,
                                                        ignore=getattr(source, "ignore", None))]
    count = len(matched) + len(urls) + len(step.heredocs)
    if count > 1 and not dest_dir:
        raise BuildError(f"{step.filename}:{step.line}: {step.keyword} copies {count} files or directories: "
                         f"the destination must be a directory ending in '/' ({dest}/)")
    into_dir = dest_dir or layer.lower_dir(dest_rel)

    def file_dest(name: str) -> str:
        return f"{dest_rel}/{name}".lstrip("/") if into_dir else dest_rel

    tmp = tempfile.mkdtemp(prefix="rootless-add-")
    archives: list[tarfile.TarFile] = []
    try:
        for pattern, path in matched:
            assert source is not None
            try:
                real = source.resolve(path)
            except OSError as e:
                raise BuildError(f"{step.keyword} {pattern}: {e}") from None
            st = source.lstat(real)
            if st is None:
                raise BuildError(f"{step.keyword} {pattern}: /{path} is a symbolic link to nothing in {what}")
            if stat.S_ISDIR(st.st_mode):
                if dest_rel and real:          # a new DEST takes the source directory's mode, but
                    layer.add_source_entry(source, real, st, dest_rel)   # not the context root's
                layer.add_tree(source, real, dest_rel)
            elif step.keyword == "ADD" and stat.S_ISREG(st.st_mode) and _is_archive(source, real):
                tar = _open_archive(source, real, tmp)
                archives.append(tar)
                _add_archive(layer, tar, dest_rel)
            else:
                layer.add_source_entry(source, real, st, file_dest(posixpath.basename(path)))
        for url in urls:
            d = (downloads or {}).get(url)
            if d is None:
                raise BuildError(f"ADD {url}: not downloaded (the executor calls copying.download first)")
            uid, gid = layer.ids()
            layer.add(_Entry(file_dest(d.name), tarfile.REGTYPE, step.chmod if step.chmod is not None else 0o600,
                             uid, gid, layer.time(d.mtime), os.path.getsize(d.path),
                             lambda p=d.path: open(p, "rb")))
        for name, content in step.heredocs:
            data = content.encode()
            path = os.path.join(tmp, f"heredoc-{len(os.listdir(tmp))}")
            with open(path, "wb") as f:
                f.write(data)
            uid, gid = layer.ids()
            layer.add(_Entry(file_dest(name), tarfile.REGTYPE, step.chmod if step.chmod is not None else 0o644,
                             uid, gid, layer.time(None), len(data), lambda p=path: open(p, "rb")))
        layer.write(out)
    finally:
        for tar in archives:
            tar.close()
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["Download", "digest_copy", "download", "resolve_chown", "write_layer"]
