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
