"""COPY/ADD layers: names, modes, owners, parents, links, archives, URLs; the merged-layers view."""

import bz2
import http.server
import io
import lzma
import os
import socket
import tarfile
import threading

import pytest
import zstandard

from rootless.build.copying import digest_copy, download, resolve_chown, write_layer
from rootless.build.fsview import DirView, LayersView
from rootless.build.plan import CopyStep
from rootless.errors import BuildError

from .trees import make

pytestmark = pytest.mark.both_modes


PASSWD = "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1001::/home/bob:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:bob\n"


@pytest.fixture
def lower(tmp_path):
    root = make(tmp_path / "lower", {"etc/passwd": PASSWD, "etc/group": GROUP, "usr/lib/x": "x",
                                     "var/run": ("/run",), "run": None, "app": None})
    os.chmod(os.path.join(root, "app"), 0o700)
    return LayersView([root])


@pytest.fixture
def ctx(tmp_path):
    root = make(tmp_path / "ctx", {"a.txt": "A", "b.txt": "B", "dir/f": "F", "dir/sub/g": "G",
                                   "dir/link": ("f",), "top": ("dir/f",), "empty": None})
    os.chmod(os.path.join(root, "dir/f"), 0o751)
    os.link(os.path.join(root, "dir/f"), os.path.join(root, "dir/sub/hard"))
    return DirView(root)


def layer(step, source, lower, **kw):
    buf = io.BytesIO()
    write_layer(buf, step, source, lower, **kw)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()}


def copy(sources, dest, **kw):
    return CopyStep(kw.pop("keyword", "COPY"), 3, "Dockerfile", sources=sources, dest=dest, **kw)


def test_file_to_a_new_path_creates_parents(ctx, lower):
    out = layer(copy(["a.txt"], "/opt/x/y.txt"), ctx, lower, now=1000)
    assert list(out) == ["opt", "opt/x", "opt/x/y.txt"]
    d, _ = out["opt"]
    assert (d.isdir(), d.mode, d.uid, d.gid, d.mtime) == (True, 0o755, 0, 0, 1000)
    f, data = out["opt/x/y.txt"]
    assert data == b"A" and f.mode == 0o644 and (f.uid, f.gid) == (0, 0)


def test_existing_parents_are_written_as_they_are_in_the_image(ctx, lower):
    """Unpacked, a layer without the parent would get one made 0755 root, and in an overlay
    the top layer's directory is the one seen: the image's own goes in, unchanged."""
    st = lower.lstat("app")
    for dest in ("/app/", "/app"):                               # an existing directory: copied into it
        out = layer(copy(["a.txt"], dest), ctx, lower)
        assert list(out) == ["app", "app/a.txt"]
        app = out["app"][0]
        assert (app.mode, app.uid, app.gid, app.mtime) == (0o700, st.st_uid, st.st_gid, int(st.st_mtime))


def test_directory_copies_its_contents_with_links(ctx, lower):
    out = layer(copy(["dir"], "/dst"), ctx, lower)
    assert list(out) == ["dst", "dst/f", "dst/link", "dst/sub", "dst/sub/g", "dst/sub/hard"]
    assert out["dst/f"][0].mode == 0o751
    assert out["dst/link"][0].issym() and out["dst/link"][0].linkname == "f"
    hard = out["dst/sub/hard"][0]
    assert hard.islnk() and hard.linkname == "dst/f"


def test_top_level_symlink_is_followed(ctx, lower):
    out = layer(copy(["top"], "/t"), ctx, lower)
    assert out["t"][0].isreg() and out["t"][1] == b"F"


def test_several_sources_and_globs(ctx, lower):
    out = layer(copy(["*.txt", "empty"], "/d/"), ctx, lower)
    assert list(out) == ["d", "d/a.txt", "d/b.txt"]
    with pytest.raises(BuildError, match=r"copies 2 files or directories: the destination must be a directory"):
        layer(copy(["*.txt"], "/d"), ctx, lower)
    with pytest.raises(BuildError, match="COPY nope: no such file or directory in the build context"):
        layer(copy(["nope"], "/d"), ctx, lower)


def test_chown_chmod(ctx, lower):
    out = layer(copy(["dir"], "/new/dst/", chown="bob:staff", chmod=0o600), ctx, lower)
    assert {(m.uid, m.gid) for m, _ in out.values()} == {(1000, 50)}
    assert out["new"][0].mode == 0o755                  # made parents are not chmod'ed
    assert out["new/dst/f"][0].mode == 0o600
    assert resolve_chown("bob", lower) == (1000, 1001)
    assert resolve_chown("7", lower) == (7, 7)
    assert resolve_chown("7:staff", lower) == (7, 50)
    with pytest.raises(BuildError, match="no user 'alice' in the image's /etc/passwd"):
        resolve_chown("alice", lower)
    with pytest.raises(BuildError, match="no group 'wheel'"):
        resolve_chown("0:wheel", lower)
    assert resolve_chown("1:2", None) == (1, 2)


def test_dest_through_a_symlink_of_the_image(ctx, lower):
    out = layer(copy(["a.txt"], "/var/run/a"), ctx, lower)
    assert list(out) == ["run", "run/a"]


def test_epoch_clamps_times(ctx, lower):
    out = layer(copy(["a.txt"], "/n/a"), ctx, lower, epoch=5, now=100)
    assert {m.mtime for m, _ in out.values()} == {5}


def test_heredoc_files(lower):
    out = layer(copy([], "/d/", heredocs=[("one", "1\n"), ("two", "2\n")]), None, lower)
    assert out["d/one"][1] == b"1\n" and out["d/two"][0].mode == 0o644


def test_copy_from_merged_layers(tmp_path, lower):
    l0 = make(tmp_path / "l0", {"out/a": "a0", "out/b": "b", "out/gone/x": "x", "hidden/y": "y"})
    l1 = make(tmp_path / "l1", {"out/a": "a1", "out/.wh.b": "", "out/.wh.gone": "", "out/c": "c",
                                "hidden/.wh..wh..opq": "", "hidden/z": "z"})
    view = LayersView([l0, l1])
    assert view.listdir("out") == ["a", "c"] and view.listdir("hidden") == ["z"]
    assert view.lstat("out/b") is None and view.lstat("out/gone/x") is None and view.lstat("hidden/y") is None
    out = layer(copy(["/out"], "/o"), view, lower, what="stage build")
    assert list(out) == ["o", "o/a", "o/c"] and out["o/a"][1] == b"a1"
    with pytest.raises(BuildError, match="COPY /out/b: no such file or directory in stage build"):
        layer(copy(["/out/b"], "/o"), view, lower, what="stage build")


def test_layers_view_deeper_whiteouts_and_opaque(tmp_path):
    l0 = make(tmp_path / "l0", {"a/b/c": "old", "p/q/r": "r"})
    l1 = make(tmp_path / "l1", {"a/.wh.b": ""})
    l2 = make(tmp_path / "l2", {"a/b/d": "new", "p/.wh..wh..opq": "", "p/q/s": "s"})
    v = LayersView([l0, l1, l2])
    assert v.listdir("a/b") == ["d"] and v.lstat("a/b/c") is None
    assert v.listdir("p/q") == ["s"] and v.lstat("p/q/r") is None
    assert v.read_text("a/b/d") == "new"


def test_layers_view_opaque_xattr(tmp_path):
    l0 = make(tmp_path / "l0", {"d/old": "o"})
    l1 = make(tmp_path / "l1", {"d/new": "n"})
    try:
        os.setxattr(os.path.join(l1, "d"), "user.overlay.opaque", b"y")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    assert LayersView([l0, l1]).listdir("d") == ["new"]


def _tar_bytes(compress=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (("pkg/bin/tool", b"#!/bin/sh\n", 0o755), ("pkg/README", b"r", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, 12, 34, 99
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("pkg/hard")
        info.type, info.linkname = tarfile.LNKTYPE, "pkg/README"
        tar.addfile(info)
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"e"))
    data = buf.getvalue()
    return {None: lambda d: d, "gz": __import__("gzip").compress, "bz2": bz2.compress, "xz": lzma.compress,
            "zst": zstandard.ZstdCompressor().compress}[compress](data)


@pytest.mark.parametrize("compress", [None, "gz", "bz2", "xz", "zst"])
def test_add_extracts_a_local_tar(tmp_path, lower, compress):
    ctx = DirView(make(tmp_path / "c", {"pkg.tar": _tar_bytes(compress)}))
    out = layer(copy(["pkg.tar"], "/opt", keyword="ADD"), ctx, lower)
    assert list(out) == ["opt", "opt/escape", "opt/pkg", "opt/pkg/README", "opt/pkg/bin", "opt/pkg/bin/tool",
                         "opt/pkg/hard"]
    tool = out["opt/pkg/bin/tool"][0]
    assert (tool.mode, tool.uid, tool.gid, tool.mtime) == (0o755, 12, 34, 99)
    assert out["opt/pkg/hard"][0].islnk() and out["opt/pkg/hard"][0].linkname == "opt/pkg/README"
    # COPY does not extract
    out = layer(copy(["pkg.tar"], "/opt/"), ctx, lower)
    assert list(out) == ["opt", "opt/pkg.tar"]


def test_add_tar_never_escapes_the_destination(tmp_path, lower):
    ctx = DirView(make(tmp_path / "c", {"pkg.tar": _tar_bytes()}))
    out = layer(copy(["pkg.tar"], "/opt", keyword="ADD"), ctx, lower)
    assert "escape" not in out and "opt/escape" in out


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/missing":
            self.send_error(404)
            return
        body = b"downloaded"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    t.join()


def test_add_url(server, tmp_path, lower):
    url = f"{server}/files/tool.bin"
    d = download(url, str(tmp_path))
    assert d.name == "tool.bin" and d.mtime == 1445412480
    import hashlib
    assert d.sha256 == "sha256:" + hashlib.sha256(b"downloaded").hexdigest()
    out = layer(copy([url], "/dl/", keyword="ADD"), None, lower, downloads={url: d})
    f, data = out["dl/tool.bin"]
    assert data == b"downloaded" and f.mode == 0o600 and f.mtime == 1445412480
    out = layer(copy([url], "/named", keyword="ADD"), None, lower, downloads={url: d})
    assert list(out) == ["named"]
    os.unlink(d.path)


def test_add_url_errors(server, tmp_path):
    with pytest.raises(BuildError, match=r"ADD .*/missing: the server answered 404"):
        download(f"{server}/missing", str(tmp_path))
    with pytest.raises(BuildError, match=r"not the --checksum"):
        download(f"{server}/x", str(tmp_path), checksum="sha256:" + "0" * 64)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                              # nothing listens there now
    with pytest.raises(BuildError, match=rf"ADD http://127.0.0.1:{port}/f: cannot download it: "):
        download(f"http://127.0.0.1:{port}/f", str(tmp_path), timeout=5)
    assert os.listdir(tmp_path) == []


def test_digest_copy_covers_sources_downloads_and_heredocs(server, tmp_path, ctx):
    url = f"{server}/f"
    d = download(url, str(tmp_path))
    a = digest_copy(copy(["a.txt"], "/x"), ctx)
    assert a.kind == "file" and a.id.startswith("file:")
    both = digest_copy(copy(["a.txt", url], "/x/", keyword="ADD"), ctx, downloads={url: d})
    assert both.kind == "multi" and both.hex != a.hex
    h1 = digest_copy(copy([], "/x", heredocs=[("h", "1")]), None)
    h2 = digest_copy(copy([], "/x", heredocs=[("h", "2")]), None)
    assert h1.kind == "file" and h1.hex != h2.hex
    with pytest.raises(BuildError, match="not downloaded"):
        digest_copy(copy([url], "/x", keyword="ADD"), None)
    os.unlink(d.path)


def test_link_copies_ignore_the_image(ctx, lower):
    out = layer(copy(["a.txt"], "/app", link=True, chown="bob"), ctx, lower)
    assert list(out) == ["app"] and out["app"][0].isreg() and out["app"][0].uid == 1000
    out = layer(copy(["a.txt"], "/usr/lib/", link=True), ctx, lower)
    assert list(out) == ["usr", "usr/lib", "usr/lib/a.txt"]


def test_layers_view_character_device_whiteouts(tmp_path):
    l0 = make(tmp_path / "l0", {"d/a": "a", "d/b": "b"})
    l1 = make(tmp_path / "l1", {"d": None})
    try:
        os.mknod(os.path.join(l1, "d/a"), 0o600 | __import__("stat").S_IFCHR, 0)
    except PermissionError:
        pytest.skip("making a character device needs CAP_MKNOD")
    v = LayersView([l0, l1])
    assert v.listdir("d") == ["b"] and v.lstat("d/a") is None


def test_copying_the_context_root_makes_dest_0755(tmp_path, lower):
    root = make(tmp_path / "ctx0700", {"f": "x"})
    os.chmod(root, 0o700)
    out = layer(copy(["."], "/new/"), DirView(root), lower)
    assert list(out) == ["new", "new/f"] and out["new"][0].mode == 0o755
