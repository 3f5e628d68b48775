"""Podman with fuse-overlay as its overlay ``mount_program`` (in place of fuse-overlayfs).

containers/storage runs ``MOUNT_PROGRAM -o lowerdir=...,upperdir=...,workdir=...[,volatile]
[,uidmapping=...,gidmapping=...] MERGED`` inside podman's user namespace and unmounts MERGED
when the container is removed; the daemon must then exit by itself."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ..conftest import RANGE_MODE, end_podman
from ..registry_server import running_registry

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
              pytest.mark.skipif(not RANGE_MODE, reason="rootless podman needs a subordinate id range")]


def _daemons(marker: str) -> list[int]:
    """PIDs of fuse-overlay processes whose command line mentions ``marker``."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if b"fuse_overlay.cli" in cmd and marker.encode() in cmd:
            pids.append(int(p.name))
    return pids


def test_podman_pulls_and_runs_with_fuse_overlay_as_mount_program(rl, tmp_path):
    run_root = tempfile.mkdtemp(prefix="fo-pod-", dir="/tmp")
    root = tmp_path / "p-root"
    log = tmp_path / "mount-program.log"
    wrapper = tmp_path / "fuse-overlay"
    wrapper.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n"
                       f"PYTHONPATH={REPO} exec {sys.executable} -m fuse_overlay.cli \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "XDG_RUNTIME_DIR": run_root}
    base = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
            "--root", str(root), "--runroot", run_root, "--storage-driver", "overlay",
            "--storage-opt", f"overlay.mount_program={wrapper}"]

    def podman(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, env=env)

    try:
        with running_registry() as reg:
            remote = f"{reg.host}/fo/busybox:1"
            pushed = rl("push", "busybox", remote)
            assert pushed.returncode == 0, pushed.stderr
            pulled = podman("pull", "--tls-verify=false", remote)
            if pulled.returncode != 0 and "newuidmap" in pulled.stderr:
                pytest.skip(f"rootless podman cannot start here: {pulled.stderr.strip()[-200:]}")
            assert pulled.returncode == 0, pulled.stderr
        ran = podman("run", "--rm", "--network", "none", remote, "sh", "-c",
                     "grep ' / / ' /proc/self/mountinfo | grep -o fuse.fuse-overlay; "
                     "echo changed > /etc/motd; cat /etc/motd; rm /bin/vi; ls /bin/vi 2>/dev/null || echo gone; "
                     "mkdir -p /a/b && echo deep > /a/b/f && mv /a/b /a/c && cat /a/c/f")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == ["fuse.fuse-overlay", "changed", "gone", "deep"], ran.stdout
        args = log.read_text().splitlines()
        assert args and all(a.startswith("-o lowerdir=") and "upperdir=" in a for a in args), args
        # the container is gone: podman unmounted, the daemon ends by itself
        deadline = time.monotonic() + 20
        while _daemons(str(root)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _daemons(str(root))
    finally:
        for pid in _daemons(str(root)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        end_podman(base, env, root, run_root)
        shutil.rmtree(run_root, ignore_errors=True)
