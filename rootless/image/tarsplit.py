"""A layer's tar, kept as its unpacked directory plus a small record ("tar-split").

The store keeps a pulled layer once: unpacked (``layers/HEX/``).  What is needed to make its
exact tar again — the same bytes, so the same sha256, its diff id — is recorded while it is
unpacked: every byte of the stream that is not the data of a regular file (headers, PAX and
GNU long-name records, padding, the end-of-archive blocks, anything after them) kept as it
came, and for each regular file's data only its name and size.  ``regenerate`` replays the
record, reading the files' data from the layer directory (as root of the user namespace,
chrooted in it: the names resolve exactly as they did when the layer was unpacked).

What unpacking changes is left to the raw bytes: entries whose data is not a plain file's
(links, devices, sparse files, whiteouts ``.wh.*`` that become overlay whiteouts) keep their
data in the record.  The record is checked right after the unpack (``Recorder.usable``): when
the files it names may not hold their data any more (an archive naming one file twice, or
writing one over another through its own links), it is not used and the layer's blob is kept.
Every tar made again is checked against the diff id (``layers.layer_tar``).

The record: gzip-compressed JSON lines: ``{"tarsplit": 1}``, then ``{"r": BASE64}`` (raw
bytes) or ``{"f": NAME, "n": SIZE}`` (a file's data), and last ``{"end": true, "size": N,
"digest": D}`` (the whole stream's length and sha256).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import posixpath
import stat
import tarfile
import zlib
from typing import BinaryIO, Callable, Iterator

from . import compression

VERSION = 1
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class LayerChanged(Exception):
    """The layer directory no longer holds what its record names (a file gone, or resized)."""


class Recorder:
    """A reader of a plain tar stream that hashes every byte read and records the stream as raw
    bytes and file references: call ``member(m)`` for each member as tarfile yields it (before
    its data is read), and ``finish()`` at the end.  It seeks forward only (by reading on), which
    is all ``tarfile.open(fileobj=..., mode="r:")`` asks when its members are taken in order: so
    tarfile reads exactly the headers and then each file's data (its stream mode, "r|", copies
    every byte through buffers of its own, several times slower)."""

    def __init__(self, raw: BinaryIO, write: Callable[[dict], None]):
        self.raw = raw
        self._write = write
        self.hash = hashlib.sha256()
        self.pos = 0                 # bytes read from ``raw``
        self._start = 0              # the stream offset of ``_pending[0]``
        self._pending = bytearray()  # bytes from _start not yet recorded
        self._skip_to = 0            # bytes before this offset are a file's data: not kept
        self.files: list[tuple[str, int]] = []   # the file references recorded
        self._names: set[str] = set()
        self.ambiguous = False       # a name given twice: what the record names may be gone

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n) if n is not None and n >= 0 else self.raw.read()
        if data:
            self.hash.update(data)
            end = self.pos + len(data)
            if end > self._skip_to:
                keep = data[max(0, self._skip_to - self.pos):]
                if not self._pending:
                    self._start = max(self.pos, self._skip_to)
                self._pending += keep
            self.pos = end
        return data

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return False

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self.pos
        elif whence != 0:
            raise io.UnsupportedOperation("a tar stream cannot seek from its end")
        if pos < self.pos:
            raise io.UnsupportedOperation(f"a tar stream cannot go back (from {self.pos} to {pos})")
        while self.pos < pos:
            if not self.read(min(pos - self.pos, 1 << 20)):
                break
        return self.pos

    def _flush_raw(self, upto: int) -> None:
        """Record the pending bytes before stream offset ``upto`` as raw."""
        count = max(0, min(upto, self._start + len(self._pending)) - self._start)
        if count:
            self._write({"r": base64.b64encode(bytes(self._pending[:count])).decode()})
            del self._pending[:count]
            self._start += count

    def member(self, m: tarfile.TarInfo) -> None:
        """Member ``m`` was read: its data, if a plain file's, is recorded by name."""
        key = posixpath.normpath("/" + m.name)
        if key in self._names:
            self.ambiguous = True
        self._names.add(key)
        if not (m.type in REGULAR and m.sparse is None and m.size > 0
                and not posixpath.basename(m.name.rstrip("/")).startswith(".wh.")):
            return
        start, end = m.offset_data, m.offset_data + m.size
        self._flush_raw(start)
        # bytes already read ahead inside the data are dropped, those after it kept
        if self._pending:
            drop = max(0, min(end, self._start + len(self._pending)) - self._start)
            del self._pending[:drop]
            self._start += drop
        if not self._pending:
            self._start = end
        self._skip_to = max(self._skip_to, end)
        self._write({"f": m.name, "n": m.size})
        self.files.append((m.name, m.size))

    def usable(self, root: str = "/") -> bool:
        """Whether the files the record names are, once unpacked (whiteouts made), where and as
        it says: no name given twice in the archive, each one a regular file of its size, no two
        the same file (one written over the other through a link).  Anything subtler is caught
        when the tar is made again: its sha256 is checked every time."""
        if self.ambiguous:
            return False
        seen: set[tuple[int, int]] = set()
        for name, size in self.files:
            try:
                st = os.stat(_path(root, name))
            except OSError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_size != size or (st.st_dev, st.st_ino) in seen:
                return False
            seen.add((st.st_dev, st.st_ino))
        return True

    def finish(self) -> str:
        """Read what is left of the stream (after the end-of-archive blocks too) and record it;
        the sha256 of the whole stream."""
        while self.read(1 << 20):
            pass
        self._flush_raw(self.pos)
        return "sha256:" + self.hash.hexdigest()


class Writer:
    """A record written to the open file ``f``: ``write(segment)`` as the Recorder calls it,
    ``close(size, digest)`` at the end (the closing line says what the whole stream was)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.z = zlib.compressobj(6, zlib.DEFLATED, 31)        # gzip's format
        self.write({"tarsplit": VERSION})

    def write(self, seg: dict) -> None:
        self.f.write(self.z.compress(json.dumps(seg).encode() + b"\n"))

    def close(self, size: int, digest: str) -> None:
        self.write({"end": True, "size": size, "digest": digest})
        self.f.write(self.z.flush())
        self.f.flush()
        with contextlib.suppress(io.UnsupportedOperation):    # a file in memory (tests)
            os.fsync(self.f.fileno())


def record_file(tar: BinaryIO, out: BinaryIO, root: str = "/") -> tuple[str, bool]:
    """Record the tar-split of the plain tar ``tar`` (read from its start, nothing unpacked) to
    ``out``, for a layer already unpacked under ``root`` (a commit's, written with its tar):
    (the tar's sha256, whether the record is usable there, ``Recorder.usable``)."""
    writer = Writer(out)
    rec = Recorder(tar, writer.write)
    with tarfile.open(fileobj=rec, mode="r:") as t:
        for m in t:
            rec.member(m)
    digest = rec.finish()
    writer.close(rec.pos, digest)
    return digest, rec.usable(root)


def segments(f: BinaryIO) -> Iterator[dict]:
    """The record's segments; ValueError if it is not a whole record of this version."""
    with compression.open_decompressed(f) as gz:
        first = json.loads(gz.readline() or b"{}")
        if first.get("tarsplit") != VERSION:
            raise ValueError("not a tar-split record of this version")
        for line in gz:
            seg = json.loads(line)
            if seg.get("end"):
                return
            yield seg
    raise ValueError("the tar-split record is truncated")


def _path(root: str, name: str) -> str:
    """Where tarfile unpacked member ``name`` under ``root`` (joined as it does: the kernel
    resolves ``..`` and links, chrooted in the layer, as it did while unpacking)."""
    return os.path.join(root, name.lstrip("/"))


def regenerate(record: BinaryIO, out: Callable[[bytes], object], root: str = "/") -> str:
    """Write the tar the record describes to ``out``, the files' data read under ``root``; its
    sha256.  Raises ``LayerChanged`` when a file is missing or not of its recorded size."""
    h = hashlib.sha256()
    for seg in segments(record):
        if "r" in seg:
            data = base64.b64decode(seg["r"])
            h.update(data)
            out(data)
            continue
        name, size = seg["f"], int(seg["n"])
        path = _path(root, name)
        try:
            f = open(path, "rb")
        except OSError as e:
            raise LayerChanged(f"'{name}' cannot be read ({os.strerror(e.errno).lower() if e.errno else e})") from None
        with f:
            left = size
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise LayerChanged(f"'{name}' is shorter than it was")
                h.update(chunk)
                out(chunk)
                left -= len(chunk)
            if f.read(1):
                raise LayerChanged(f"'{name}' is longer than it was")
    return "sha256:" + h.hexdigest()


__all__ = ["Recorder", "LayerChanged", "Writer", "segments", "regenerate"]


def total_size(f: BinaryIO) -> int:
    """The length of the tar the record describes (its closing line says)."""
    with compression.open_decompressed(f) as gz:
        last = b""
        for line in gz:
            last = line
    end = json.loads(last or b"{}")
    if not end.get("end"):
        raise ValueError("the tar-split record is truncated")
    return int(end["size"])
