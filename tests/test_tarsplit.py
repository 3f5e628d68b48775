"""The tar-split record (``image/tarsplit.py``) and the streaming decompressor: a layer's tar
made again byte for byte from its unpacked files, and data decompressed piece by piece as it
downloads.  Pure Python, on files of the test's own (the store's use of them, as root of the
user namespace and chrooted, is in test_layer_store.py)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import tarfile
from pathlib import Path

import pytest

from rootless.image import compression, tarsplit

pytestmark = pytest.mark.both_modes


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.mode = kind, 946684800, 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def _tar(entries, fmt=tarfile.PAX_FORMAT, tail: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue() + tail


def _unpack(data: bytes, root: Path, chunk: int = 65536) -> tuple[tarsplit.Recorder, bytes]:
    """Unpack ``data`` under ``root`` as the unpacking child does; (the recorder, the record)."""
    record = io.BytesIO()
    writer = tarsplit.Writer(record)
    rec = tarsplit.Recorder(io.BufferedReader(io.BytesIO(data), buffer_size=chunk), writer.write)
    with tarfile.open(fileobj=rec, mode="r:", copybufsize=chunk) as tar:
        def members():
            for m in tar:
                rec.member(m)
                yield m
        tar.extractall(root, members=members())
    digest = rec.finish()
    writer.close(rec.pos, digest)
    assert digest == _digest(data) and rec.pos == len(data)
    return rec, record.getvalue()


def _again(record: bytes, root: Path) -> bytes:
    out = bytearray()
    got = tarsplit.regenerate(io.BytesIO(record), out.extend, str(root))
    assert got == _digest(bytes(out))
    return bytes(out)


EVERY_KIND = [
    _entry("dir/", tarfile.DIRTYPE, mode=0o755),
    *[_entry(f"dir/f{size}", data=os.urandom(size)) for size in (0, 1, 511, 512, 513, 70_000)],
    _entry("dir/" + "long" * 40 + "/name", data=b"long name\n"),
    _entry("dir/ünï", data=b"\xff" * 600),
    _entry("dir/hard", tarfile.LNKTYPE, linkname="dir/f1"),
    _entry("dir/soft", tarfile.SYMTYPE, linkname="f511"),
    _entry("dir/fifo", tarfile.FIFOTYPE),
    _entry("dir/.wh.gone", data=b""),
    _entry("dir/.wh.odd", data=b"whiteout with data"),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("chunk", [512, 65536, 1 << 20])
def test_a_tar_is_made_again_byte_for_byte(tmp_path, fmt, chunk):
    data = _tar(EVERY_KIND, fmt, tail=b"\0" * 9000 + b"junk after the end")
    rec, record = _unpack(data, tmp_path / "layer", chunk)
    assert rec.usable(str(tmp_path / "layer"))
    assert _again(record, tmp_path / "layer") == data
    assert len(record) < len(data) // 20            # the data is not in the record
    assert tarsplit.total_size(io.BytesIO(record)) == len(data)


def test_a_tar_of_nothing_but_its_end(tmp_path):
    data = b"\0" * 10240
    record = io.BytesIO()
    writer = tarsplit.Writer(record)
    rec = tarsplit.Recorder(io.BytesIO(data), writer.write)
    with tarfile.open(fileobj=rec, mode="r:") as tar:
        assert tar.getmembers() == []
    writer.close(rec.pos, rec.finish())
    assert _again(record.getvalue(), tmp_path) == data


def test_a_file_changed_or_gone_is_named(tmp_path):
    data = _tar([_entry("a", data=b"x" * 1000), _entry("b", data=b"y" * 10)])
    _rec, record = _unpack(data, tmp_path)
    (tmp_path / "a").write_bytes(b"x" * 1001)
    with pytest.raises(tarsplit.LayerChanged, match="'a' is longer"):
        _again(record, tmp_path)
    (tmp_path / "a").write_bytes(b"x" * 999)
    with pytest.raises(tarsplit.LayerChanged, match="'a' is shorter"):
        _again(record, tmp_path)
    (tmp_path / "a").unlink()
    with pytest.raises(tarsplit.LayerChanged, match="'a' cannot be read"):
        _again(record, tmp_path)
    (tmp_path / "a").write_bytes(b"z" * 1000)      # same size, other bytes: the digest tells
    out = bytearray()
    assert tarsplit.regenerate(io.BytesIO(record), out.extend, str(tmp_path)) != _digest(data)


@pytest.mark.parametrize("entries", [
    [_entry("a", data=b"first"), _entry("a", data=b"second")],                      # a name twice
    [_entry("d/a", data=b"one"), _entry("s", tarfile.SYMTYPE, linkname="d"),
     _entry("s/a", data=b"two")],                                                   # through a link
])
def test_a_record_whose_files_were_written_over_is_not_usable(tmp_path, entries):
    rec, _record = _unpack(_tar(entries), tmp_path)
    assert not rec.usable(str(tmp_path))


def test_a_truncated_record_is_refused(tmp_path):
    _rec, record = _unpack(_tar([_entry("a", data=b"x" * 100)]), tmp_path)
    plain = gzip.decompress(record)
    cut = gzip.compress(plain[:plain.rindex(b'{"end"')])
    with pytest.raises(ValueError, match="truncated"):
        _again(cut, tmp_path)


# ----------------------------------------------------------------------------- decompression

PLAIN = os.urandom(200_000) + b"\0" * 3_000_000 + os.urandom(7)


def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("kind,make", [
    ("gzip", lambda d: gzip.compress(d[:1000], mtime=0) + gzip.compress(d[1000:], mtime=0) + b"\0" * 64),
    ("zstd", lambda d: _zstd(d[:5]) + _zstd(d[5:])),
    ("bzip2", bz2.compress),
    ("xz", lzma.compress),
    ("plain", lambda d: d),
])
@pytest.mark.parametrize("piece", [3, 4096, 1 << 30])
def test_data_decompressed_piece_by_piece(kind, make, piece):
    blob = make(PLAIN)
    if piece == 3:
        blob, want = blob[:60_000], None           # a prefix, three bytes at a time
    else:
        want = PLAIN
    dec = compression.Decompressor()
    out = bytearray()
    for i in range(0, len(blob), piece):
        for chunk in dec.feed(blob[i:i + piece]):
            assert len(chunk) <= 1 << 22
            out += chunk
    assert dec.kind == kind
    if want is not None:
        for chunk in dec.finish():
            out += chunk
        assert bytes(out) == want
    else:
        assert PLAIN.startswith(bytes(out))


@pytest.mark.parametrize("blob,match", [
    (gzip.compress(b"data" * 1000)[:-9], "truncated"),
    (gzip.compress(b"data") + b"not gzip", "followed by something else"),
])
def test_bad_compressed_data_is_an_error(blob, match):
    dec = compression.Decompressor()
    with pytest.raises(compression.ERRORS, match=match):
        list(dec.feed(blob))
        list(dec.finish())


def test_tiny_inputs():
    for blob, want in ((b"", b""), (b"abc", b"abc"), (gzip.compress(b"", mtime=0), b"")):
        dec = compression.Decompressor()
        assert b"".join([*dec.feed(blob), *dec.finish()]) == want


def test_compressing_a_stream_is_deterministic(tmp_path):
    data = _tar(EVERY_KIND)
    first = compression.compress_stream(io.BytesIO(data), str(tmp_path / "a.gz"), "gzip")
    second = compression.compress_stream(io.BytesIO(data), str(tmp_path / "b.gz"), "gzip")
    assert first == second and first[2] == _digest(data)
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == data
