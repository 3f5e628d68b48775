"""The build context: loading it, views with .dockerignore, COPY source globs, content digests."""

import io
import os
import tarfile

import pytest

from rootless.build.context import HashCache, digest_sources, load_context, match_sources
from rootless.build.fsview import DirView, LayersView
from rootless.errors import BuildError, UsageError

from .trees import make

pytestmark = pytest.mark.both_modes


@pytest.fixture
def ctx(tmp_path):
    return make(tmp_path / "ctx", {
        "Dockerfile": "FROM scratch\n", "a.go": "a", "b.go": "b", "README.md": "r", "x.md": "x",
        "src/main.go": "m", "src/sub/util.go": "u", "src/doc.txt": "d", "secret/key": "k", "secret/pub": "p",
        "link": ("src/main.go",), "dirlink": ("src",),
    })


def test_load_a_directory_with_its_dockerignore(ctx):
    make(ctx, {".dockerignore": "*.md\n!README.md\nsecret\n!secret/pub\n"})
    c = load_context(ctx)
    assert c.dockerfile == "FROM scratch\n" and c.dockerfile_name == "Dockerfile"
    v = c.view
    assert v.lstat("x.md") is None and v.lstat("README.md") is not None
    assert v.lstat("secret/key") is None and v.lstat("secret/pub") is not None
    assert v.listdir("secret") == ["pub"] and "secret" in v.listdir("")
    assert [p for p, _ in v.walk("") if p.startswith("secret")] == ["secret", "secret/pub"]


def test_dockerfile_outside_the_context_and_its_own_ignore_file(ctx, tmp_path):
    df = tmp_path / "other.Dockerfile"
    df.write_text("FROM busybox\n")
    (tmp_path / "other.Dockerfile.dockerignore").write_text("*.go\n")
    make(ctx, {".dockerignore": "*.md\n"})
    c = load_context(ctx, str(df))
    assert c.dockerfile == "FROM busybox\n"
    assert c.view.lstat("a.go") is None and c.view.lstat("x.md") is not None


def test_dockerfile_relative_to_the_context(ctx, monkeypatch, tmp_path):
    make(ctx, {"sub/Dockerfile.dev": "FROM dev\n"})
    monkeypatch.chdir(tmp_path)
    assert load_context(ctx, "sub/Dockerfile.dev").dockerfile == "FROM dev\n"


def test_missing_things(ctx, tmp_path):
    with pytest.raises(UsageError, match="is not a directory"):
        load_context(str(tmp_path / "nope"))
    os.unlink(os.path.join(ctx, "Dockerfile"))
    with pytest.raises(UsageError, match="there is no Dockerfile at .*: write one, or name it with -f"):
        load_context(ctx)


def test_context_as_a_tar_on_stdin(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("Dockerfile", b"FROM t\n"), ("f", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    scratch = tmp_path / "s"
    scratch.mkdir()
    c = load_context("-", stdin=io.BytesIO(buf.getvalue()), scratch_dir=str(scratch))
    assert c.dockerfile == "FROM t\n" and c.view.lstat("f") is not None


def _tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[kind]
            info.mode = 0o755
            info.linkname = value
            tar.addfile(info)
    return buf.getvalue()


def test_a_tar_context_keeps_symlinks_that_point_anywhere(tmp_path):
    """As docker build: links are part of the context, stored as they are (COPY copies the
    link, never what it points at), even absolute ones or ones leading out of the context."""
    data = _tar([("Dockerfile", "file", b"FROM t\n"), ("bin", "dir", ""), ("bin/sh", "sym", "/bin/busybox"),
                 ("up", "sym", "../../etc"), ("f", "file", b"x"), ("hard", "hard", "f")])
    scratch = tmp_path / "s"
    scratch.mkdir()
    c = load_context("-", stdin=io.BytesIO(data), scratch_dir=str(scratch))
    assert os.readlink(scratch / "bin" / "sh") == "/bin/busybox" and os.readlink(scratch / "up") == "../../etc"
    assert (scratch / "hard").read_bytes() == b"x" and c.view.lstat("bin/sh") is not None


@pytest.mark.parametrize("entries", [
    [("../evil", "file", b"x")],
    [("/abs", "file", b"x")],
    [("out", "sym", "/tmp"), ("out/evil", "file", b"x")],                  # through a link it made
    [("d", "dir", ""), ("d/up", "sym", "../.."), ("d/up/evil", "file", b"x")],
    [("h", "hard", "../../etc/passwd")],
])
def test_a_tar_context_cannot_write_outside_its_directory(tmp_path, entries):
    scratch = tmp_path / "s"
    scratch.mkdir()
    with pytest.raises(UsageError, match="outside the context"):
        load_context("-", stdin=io.BytesIO(_tar([("Dockerfile", "file", b"FROM t\n")] + entries)),
                     scratch_dir=str(scratch))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_a_later_entry_replaces_a_link_instead_of_writing_through_it(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    scratch = tmp_path / "s"
    scratch.mkdir()
    data = _tar([("Dockerfile", "file", b"FROM t\n"), ("x", "sym", str(outside)), ("x", "file", b"replaced")])
    load_context("-", stdin=io.BytesIO(data), scratch_dir=str(scratch))
    assert outside.read_text() == "untouched" and (scratch / "x").read_bytes() == b"replaced"


def test_dockerfile_alone_on_stdin(tmp_path):
    c = load_context("-", stdin=io.BytesIO(b"FROM alone\n"), scratch_dir=str(tmp_path))
    assert c.dockerfile == "FROM alone\n" and not c.has_context


def test_dockerfile_on_stdin_with_a_directory(ctx):
    c = load_context(ctx, "-", stdin=io.BytesIO(b"FROM piped\n"))
    assert c.dockerfile == "FROM piped\n" and c.view.lstat("a.go") is not None
    with pytest.raises(UsageError, match="cannot both come from stdin"):
        load_context("-", "-", stdin=io.BytesIO(b""))


def test_globs_match_as_go_does(ctx):
    v = DirView(ctx)
    assert match_sources(v, "*.go") == ["a.go", "b.go"]
    assert match_sources(v, "src/*.go") == ["src/main.go"]
    assert match_sources(v, "*/*.go") == ["dirlink/main.go", "src/main.go"]
    assert match_sources(v, "/src/sub/../*.txt") == ["src/doc.txt"]
    assert match_sources(v, "[ab].go") == ["a.go", "b.go"]
    assert match_sources(v, "?.go") == ["a.go", "b.go"]
    assert match_sources(v, "src") == ["src"]
    assert match_sources(v, "dirlink/sub/util.go") == ["dirlink/sub/util.go"]


def test_a_source_that_matches_nothing_is_named(ctx):
    v = DirView(ctx)
    with pytest.raises(BuildError, match=r"COPY nope\.txt: no such file or directory in the build context$"):
        match_sources(v, "nope.txt")
    with pytest.raises(BuildError, match=r"COPY \*\.rs: no such file"):
        match_sources(v, "*.rs")
    with pytest.raises(BuildError, match="outside the build context"):
        match_sources(v, "../x")
    make(ctx, {".dockerignore": "secret\n"})
    c = load_context(ctx)
    with pytest.raises(BuildError, match=".dockerignore excludes it"):
        match_sources(c.view, "secret/key", ignore=c.ignore)


def test_digest_ignores_times_and_sees_every_byte(ctx):
    v = DirView(ctx)
    first = digest_sources(v, ["src", "a.go"])
    assert first.kind == "multi" and first.files == 4
    os.utime(os.path.join(ctx, "src/sub/util.go"), (1, 1))
    assert digest_sources(v, ["src", "a.go"]).hex == first.hex
    with open(os.path.join(ctx, "src/sub/util.go"), "a") as f:
        f.write("!")
    assert digest_sources(v, ["src", "a.go"]).hex != first.hex
    assert digest_sources(v, ["a.go"]).id.startswith("file:")
    assert digest_sources(v, ["src"]).id.startswith("dir:")


def test_digest_sees_modes_links_and_names(ctx):
    v = DirView(ctx)
    before = digest_sources(v, ["src"]).hex
    os.chmod(os.path.join(ctx, "src/main.go"), 0o755)
    after_mode = digest_sources(v, ["src"]).hex
    assert after_mode != before
    os.symlink("main.go", os.path.join(ctx, "src/l"))
    after_link = digest_sources(v, ["src"]).hex
    os.unlink(os.path.join(ctx, "src/l"))
    os.symlink("doc.txt", os.path.join(ctx, "src/l"))
    assert len({after_mode, after_link, digest_sources(v, ["src"]).hex}) == 3
    os.rename(os.path.join(ctx, "src/doc.txt"), os.path.join(ctx, "src/doc2.txt"))
    assert digest_sources(v, ["src"]).hex != after_link


def test_top_level_symlink_is_followed_in_the_digest(ctx):
    v = DirView(ctx)
    assert digest_sources(v, ["link"]).kind == "file"
    assert digest_sources(v, ["dirlink"]).kind == "dir"


def test_hash_cache_reads_each_file_once(ctx):
    cache = HashCache()
    digest_sources(DirView(ctx), ["src"], cache=cache)
    n = len(cache._known)
    digest_sources(DirView(ctx), ["src", "src/main.go"], cache=cache)
    assert len(cache._known) == n == 3


def test_digest_over_merged_layers(tmp_path):
    low = make(tmp_path / "l0", {"app/a": "1", "app/b": "2"})
    up = make(tmp_path / "l1", {"app/.wh.b": "", "app/c": "3"})
    d1 = digest_sources(LayersView([low, up]), ["app"])
    other = make(tmp_path / "o", {"app/a": "1", "app/c": "3"})
    assert d1.hex == digest_sources(DirView(other), ["app"]).hex
