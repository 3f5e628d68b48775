"""The one decompressor of the engine: layers and archives in gzip, bzip2, xz, zstd or plain.

The kind is told by the data's first bytes (never by a file name or a media type, which
may lie); ``decompress_file`` streams a file into a plain one while hashing what comes out,
which is how a layer's diff id is checked.  Used by pull, load, save and import.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import zlib
from typing import BinaryIO

KINDS = "gzip, bzip2, xz or zstd"
MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
# What a decompressor raises on bad data, besides OSError and EOFError.
ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)
try:
    import zstandard as _zstd
    ERRORS += (_zstd.ZstdError,)
except ImportError:  # pragma: no cover - a dependency; without it zstd data is refused when met
    pass


def kind_of(head: bytes) -> str:
    """``gzip``, ``bzip2``, ``xz``, ``zstd`` or ``plain`` for data starting with ``head``."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return "plain"


def open_decompressed(raw: BinaryIO) -> BinaryIO:
    """A reader of ``raw``'s data decompressed (``raw`` itself when it is plain).  ``raw`` must
    be able to peek (a buffered reader) or seek."""
    if hasattr(raw, "peek"):
        head = raw.peek(6)[:6]
    else:
        pos = raw.tell()
        head = raw.read(6)
        raw.seek(pos)
    kind = kind_of(head)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[return-value]
    return raw


def file_kind(path: str) -> str:
    with open(path, "rb") as f:
        return kind_of(f.read(6))


def copy_hashing(src: BinaryIO, dst: BinaryIO | None) -> str:
    """Copy ``src`` to ``dst`` (or nowhere); the sha256 of what was read."""
    h = hashlib.sha256()
    while chunk := src.read(1 << 20):
        h.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return "sha256:" + h.hexdigest()


def decompress_file(src: str, dst: str | None) -> str:
    """``src`` decompressed into ``dst`` (None: only hashed); the sha256 of the plain data.
    Raises the decompressor's error on bad data (``ERRORS``)."""
    with open(src, "rb") as raw, open_decompressed(raw) as f:
        if dst is None:
            return copy_hashing(f, None)
        with open(dst, "wb") as out:
            return copy_hashing(f, out)


__all__ = ["KINDS", "ERRORS", "kind_of", "file_kind", "open_decompressed", "copy_hashing", "decompress_file"]
