"""Errors a user meets: each is one sentence that names the thing and the fix.

Never a raw errno text ("[Errno 13] Permission denied: '...'"), never a traceback, never a
path the user did not give (the container's root filesystem in the store, a temporary file).
Everything is real: the CLI as the unprivileged user, real namespaces and mounts.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import ROOTLESS, Rootless, needs_range

pytestmark = pytest.mark.both_modes


def one_sentence(proc: subprocess.CompletedProcess, *needles: str, code: int = 125,
                 hidden: tuple[str, ...] = ()) -> str:
    """The single error line of ``proc``, checked: exit code, wording, nothing internal."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines()
             if line and not line.startswith("rootless: warning:")]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("rootless: "), line
    for bad in ("Errno", "Traceback", "ReadError", "method gz", ".tmp-", *hidden):
        assert bad not in line, (bad, line)
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _tar(path: Path, entries: list[tuple[str, str, str]]) -> Path:
    """A tar of (name, kind, symlink target or file data) entries, in that order."""
    with tarfile.open(path, "w") as t:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, value
                t.addfile(info)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            else:
                data = value.encode()
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


# --- run ----------------------------------------------------------------------------------

@pytest.mark.parametrize("network", [None, "none"])
def test_bind_mount_under_proc(rl, network):
    before = set(os.listdir(rl.root / "containers"))
    args = ["--network", network] if network else []
    proc = rl("run", "--rm", *args, "-v", "/tmp:/proc/x", "busybox", "true")
    one_sentence(proc, "/proc/x", "outside /proc", hidden=(str(rl.root),))
    assert set(os.listdir(rl.root / "containers")) == before   # refused before anything exists
    one_sentence(rl("run", "--rm", "--mount", "type=tmpfs,target=/proc/sys/x", "busybox", "true"),
                 "/proc/sys/x", "outside /proc")


def test_mount_point_that_cannot_be_made(rl):
    # /sys is a read-only sysfs: the mount point cannot be created there. The message names the
    # container path, not the root filesystem's place in the store.
    for network in ("none", None):
        args = ["--network", network] if network else []
        proc = rl("run", "--rm", *args, "-v", "/tmp:/sys/x", "busybox", "true")
        one_sentence(proc, "/sys/x", "/tmp", "read-only", "choose another container path",
                     hidden=(str(rl.root), "rootfs"))
    proc = rl("run", "--rm", "--network", "none", "-v", "/tmp:/proc/cpuinfo", "busybox", "true")
    one_sentence(proc, "/proc/cpuinfo", "a directory cannot be mounted on a file", hidden=(str(rl.root),))


def test_hostname_too_long(rl):
    before = set(os.listdir(rl.root / "containers"))
    proc = rl("run", "--rm", "--hostname", "h" * 100, "busybox", "true")
    one_sentence(proc, "--hostname", "100 bytes", "at most 64")
    assert set(os.listdir(rl.root / "containers")) == before
    one_sentence(rl("run", "--rm", "-d", "--hostname", "h" * 65, "busybox", "true"), "65 bytes", "at most 64")
    assert set(os.listdir(rl.root / "containers")) == before
    out = rl("run", "--rm", "--network", "none", "--hostname", "h" * 64, "busybox", "hostname")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "h" * 64


# --- import and layers ----------------------------------------------------------------------

def test_import_not_a_tar(rl, tmp_path):
    one_sentence(rl("import", "/dev/null", "errs-null"), "/dev/null", "is empty", "tarball")
    text = tmp_path / "notes.txt"
    text.write_text("just some words, and not a tar archive at all\n" * 20)
    one_sentence(rl("import", str(text), "errs-text"), str(text), "not a tar archive", "tarball")
    one_sentence(rl("import", "-", "errs-stdin", input=""), "standard input", "is empty")


LAYER_CASES = {
    # a dangling symlink where the archive later needs a directory
    "dangling": ([("evil", "sym", "somewhere"), ("evil/x", "file", "x")],
                 ("'evil/x'", "'evil'", "symbolic link to 'somewhere'")),
    # a file where the archive later needs a directory
    "file": ([("evil", "file", "x"), ("evil/x", "file", "x")], ("'evil/x'", "'evil'", "a file")),
    # symlinks that point at each other
    "loop": ([("a", "sym", "b"), ("b", "sym", "a"), ("a/x", "file", "x")], ("'a/x'", "'a'", "loop")),
    # deeper: the colliding parent is not the first component
    "deep": ([("d", "dir", ""), ("d/evil", "sym", "../nowhere"), ("d/evil/sub/x", "file", "x")],
             ("'d/evil/sub/x'", "'d/evil'", "symbolic link to '../nowhere'")),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_with_colliding_entries(rl, tmp_path, case):
    entries, needles = LAYER_CASES[case]
    archive = _tar(tmp_path / f"{case}.tar", [("ok", "file", "fine"), *entries])
    line = one_sentence(rl("import", str(archive), f"errs-{case}"), str(archive), *needles,
                        hidden=("File exists", "Not a directory", str(rl.root)))
    assert "layer" in line
    assert "errs-" + case not in rl("images").stdout
    assert not [n for n in os.listdir(rl.root / "layers") if n.startswith(".tmp-")]


def test_layer_symlink_to_root_is_harmless(rl, tmp_path):
    # evil -> / and then evil/x: resolved inside the layer (chrooted), so it is simply /x there.
    archive = _tar(tmp_path / "root.tar", [("evil", "sym", "/"), ("evil/x", "file", "x")])
    proc = rl("import", str(archive), "errs-rootlink")
    assert proc.returncode == 0, proc.stderr
    rl("rmi", "errs-rootlink")


def test_load_symlink_loop(rl, tmp_path):
    loop = _tar(tmp_path / "loop.tar", [
        ("manifest.json", "sym", "a.json"), ("a.json", "sym", "b.json"), ("b.json", "sym", "manifest.json")])
    proc = rl("load", "-i", str(loop))
    one_sentence(proc, str(loop), "manifest.json", "symbolic link loop", hidden=("outside the archive",))
    selfref = _tar(tmp_path / "self.tar", [("manifest.json", "sym", "./manifest.json")])
    one_sentence(rl("load", "-i", str(selfref)), "manifest.json", "symbolic link loop")
    # a config in a loop, found through a valid manifest
    cfg = _tar(tmp_path / "cfg.tar", [
        ("manifest.json", "file", json.dumps([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": []}])),
        ("c.json", "sym", "d/../c.json")])
    one_sentence(rl("load", "-i", str(cfg)), "c.json", "symbolic link loop")


# --- the store and outputs -------------------------------------------------------------------

def test_store_in_a_directory_i_cannot_write(rl, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        other = Rootless(locked / "store")
        for args in (("images",), ("run", "--rm", "busybox", "true")):
            line = one_sentence(other(*args), str(locked / "store"), "--root", "ROOTLESS_ROOT",
                                hidden=("Permission denied",))
            assert str(locked) in line
    finally:
        locked.chmod(0o700)


@needs_range
def test_store_of_another_user(rl, tmp_path):
    # A store that belongs to someone else (here: a sub-uid of ours, made with 'rootless unshare';
    # for the host it is another user), readable but not writable, then not even readable.
    store = tmp_path / "theirs"
    env = {**os.environ, "ROOTLESS_ROOT": str(rl.root)}
    subprocess.run([*ROOTLESS, "unshare", "sh", "-c",
                    f"mkdir -p {store}/blobs/sha256 {store}/layers {store}/containers {store}/tmp && "
                    f"chown -R 1:1 {store} && chmod -R 755 {store}"], env=env, check=True, timeout=60)
    try:
        assert os.stat(store).st_uid != os.getuid()
        other = Rootless(store)
        for args in (("images",), ("import", "/dev/null", "x"), ("run", "--rm", "busybox", "true")):
            one_sentence(other(*args), str(store), "not yours", "--root", "ROOTLESS_ROOT",
                         hidden=("Permission denied",))
        subprocess.run([*ROOTLESS, "unshare", "chmod", "700", str(store)], env=env, check=True, timeout=60)
        one_sentence(other("images"), str(store), "not yours", "--root", hidden=("Permission denied",))
    finally:
        subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(store)], env=env, timeout=60)


def test_save_to_a_path_that_cannot_be_written(rl, tmp_path):
    line = one_sentence(rl("save", "-o", "/proc/x", "busybox"), "/proc/x")
    assert "/proc/x." not in line
    missing = tmp_path / "no" / "such" / "dir" / "out.tar"
    one_sentence(rl("save", "-o", str(missing), "busybox"), str(missing), str(missing.parent), "does not exist")
    one_sentence(rl("save", "-o", str(tmp_path), "busybox"), str(tmp_path), "is a directory")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # a device is written to as it is (as Docker does), not replaced
    ok = rl("save", "-o", "/dev/null", "busybox")
    assert ok.returncode == 0, ok.stderr


def test_a_failed_mount_is_reported_when_many_start_at_once(rl):
    """Under load the container's first process may fail before the engine tells it the network
    is ready: the engine's write then met EPIPE, which click turned into exit status 1 and no
    message.  The mount's own error must be reported every time."""
    procs = [rl.popen("run", "--rm", "-v", "/tmp:/sys/x", "busybox", "true",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(12)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 125 and "/sys/x" in err, (p.returncode, err)


@pytest.mark.both_modes
@pytest.mark.parametrize("command", [("network", "inspect"), ("network", "rm"), ("volume", "inspect"),
                                     ("volume", "rm"), ("volume", "create")])
def test_a_name_too_long_for_a_file_is_not_found_or_invalid(rl, command):
    """A 300-character name is "no such" (or, to create, an invalid name), not the errno of
    the file it would be (found by the API fuzz test: GET /networks/<long> was a 500)."""
    proc = rl(*command, "a" * 300)
    assert proc.returncode != 0
    assert "File name too long" not in proc.stderr and "Errno" not in proc.stderr, proc.stderr
    assert any(w in proc.stderr for w in ("does not exist", "no such volume", "invalid volume name")), proc.stderr
