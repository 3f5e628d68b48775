"""Fixtures for the engine's tests: a private image store with a busybox image, and the CLI.

Everything is real: the tests run the installed ``rootless`` command as the
unprivileged user running pytest, in real namespaces.  The store is removed at the
end through ``rootless unshare`` (files in it may be owned by sub-ids).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_script = Path(sys.executable).parent / "rootless"
ROOTLESS = [str(_script)] if _script.exists() else [sys.executable, "-m", "rootless"]


def subid_range(kind: str = "uid") -> tuple[int, int] | None:
    """This user's first sub-id range (start, count), or None (single-uid mode)."""
    if not shutil.which("newuidmap") or not shutil.which("newgidmap"):
        return None
    user = pwd.getpwuid(os.getuid()).pw_name
    found = {}
    for k in ("uid", "gid"):
        try:
            lines = Path(f"/etc/sub{k}").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            parts = line.split(":")
            if len(parts) == 3 and parts[0] in (user, str(os.getuid())) and int(parts[2]) > 0:
                found[k] = (int(parts[1]), int(parts[2]))
                break
    if len(found) != 2:
        return None
    return found[kind]


RANGE_MODE = subid_range() is not None
needs_range = pytest.mark.skipif(not RANGE_MODE, reason="this user has no subordinate id range (/etc/subuid)")
needs_single = pytest.mark.skipif(RANGE_MODE, reason="this user has a subordinate id range: single-uid mode not in use")


class Rootless:
    """Runs the CLI against one store."""

    def __init__(self, root: Path, run_dir: Path | None = None):
        self.root = root
        # No registry but the tests' own is ever contacted: an image missing from the store is not
        # pulled unless a test asks for it (--pull missing|always).
        self.env = {**os.environ, "ROOTLESS_ROOT": str(root), "ROOTLESS_PULL_POLICY": "never"}
        if run_dir is not None:
            self.env["XDG_RUNTIME_DIR"] = str(run_dir)
        else:       # the default run-time directory: no fork server there that no test would stop
            self.env["ROOTLESS_FORKSERVER"] = "0"

    def __call__(self, *args: str, input: str | bytes | None = None, timeout: float = 60,
                 check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        text = not isinstance(input, bytes)
        proc = subprocess.run([*ROOTLESS, *args], input=input, capture_output=True, text=text,
                              timeout=timeout, env={**self.env, **(env or {})},
                              stdin=subprocess.DEVNULL if input is None else None)
        if check and proc.returncode != 0:
            raise AssertionError(f"rootless {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([*ROOTLESS, *args], env={**self.env, **kw.pop("env", {})}, **kw)

    def container_dir(self, name: str) -> Path:
        import json
        for d in (self.root / "containers").iterdir():
            cfg = d / "config.json"
            if cfg.exists() and json.loads(cfg.read_text())["name"] == name:
                return d
        raise LookupError(name)


def make_busybox_tar(path: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "busybox-rootfs"), str(path)], check=True,
                   capture_output=True, timeout=60)
    return path


def overlay_internal_errors(store: Path | None = None, run: Path | None = None) -> list[str]:
    """Internal errors fuse-overlay recorded: in containers' work dirs, and in the fork
    server's log (daemons of containers already removed).  Any of them is a bug."""
    found = []
    if store is not None:
        for f in store.glob("containers/*/work/fuse-overlay.errors"):
            found += [f"{f}: {line}" for line in f.read_text(errors="replace").splitlines()]
    if run is not None:
        log = run / "rootless" / "forkserver.log"
        if log.exists():
            found += [f"{log}: {line}" for line in log.read_text(errors="replace").splitlines()
                      if "internal error in" in line]
    return found


@pytest.fixture(scope="session")
def store_root(tmp_path_factory, run_dir) -> Path:
    root = tmp_path_factory.mktemp("store")
    yield root
    errors = overlay_internal_errors(store=root)
    # Layers and container trees hold files owned by sub-ids: remove them as the namespace's root.
    subprocess.run([*ROOTLESS, "unshare", "rm", "-rf", str(root)], timeout=120,
                   env={**os.environ, "ROOTLESS_NO_SINGLE_UID_WARNING": "1"})
    # A test that provokes one on purpose removes its container (tests/test_rootfs_errors.py).
    assert not errors, "fuse-overlay recorded internal errors during the tests:\n" + "\n".join(errors)


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory) -> Path:
    return make_busybox_tar(tmp_path_factory.mktemp("images") / "busybox.tar")


def stop_background(run_dir: Path) -> None:
    """Stop what the tests' containers started to outlive them: the fork server(s) and the
    networks' holder (by the PIDs they recorded)."""
    for pidfile in [*(run_dir / "rootless").glob("forkserver*.sock.pid"), run_dir / "rootless" / "netns-holder.pid"]:
        _stop_recorded(pidfile)


def _stop_recorded(pidfile: Path) -> None:
    import signal
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(200):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except OSError:
            return          # gone (and reaped) between two looks: a CI run's teardown failed here
        __import__("time").sleep(0.05)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    d.chmod(0o700)
    yield d
    stop_background(d)
    errors = overlay_internal_errors(run=d)
    assert not errors, "fuse-overlay logged internal errors during the tests:\n" + "\n".join(errors)


@pytest.fixture(scope="session")
def rl_session(store_root: Path, busybox_tar: Path, run_dir: Path) -> Rootless:
    rl = Rootless(store_root, run_dir)
    rl("import", "-c", 'CMD ["/bin/sh"]', str(busybox_tar), "busybox", check=True)
    return rl


@pytest.fixture
def rl(rl_session: Rootless) -> Rootless:
    return rl_session


def read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    """What ``fd`` (a pty master, a socket) gives until ``needle`` appears or ``timeout`` passes."""
    import select
    import time
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                buf += os.read(fd, 4096)
            except OSError:
                break
    return buf


def layer_tars(rl: Rootless, ref: str) -> list[bytes]:
    """Image ``ref``'s layer tars, bottom first (from ``rootless save``: the store keeps most
    layers unpacked with a tar-split record, not as blobs)."""
    import json
    import tarfile
    import tempfile
    with tempfile.TemporaryDirectory(prefix="layer-tars-") as work:
        archive = os.path.join(work, "saved.tar")
        rl("save", "-o", archive, ref, check=True)
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            return [tar.extractfile(name).read() for name in manifest[0]["Layers"]]


def wait_for_fork_server(rl: Rootless, timeout: float = 30) -> None:
    """Run a container, then wait until a fork server answers in ``rl``'s run-time directory:
    the commands after this are handed to it (one finding none starts one in the background and
    runs itself)."""
    import socket
    import time
    rl("run", "--rm", "busybox", "true", check=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (Path(rl.env["XDG_RUNTIME_DIR"]) / "rootless").glob("forkserver-*.sock"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                try:
                    s.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise AssertionError("no fork server answers")


def end_podman(base: list[str], env: dict[str, str], root: Path | str, run_root: str) -> None:
    """Remove a test's Podman store ``root`` and run root (as root of Podman's user namespace),
    and end the pause process Podman left for that run root."""
    pause = Path(run_root) / "libpod" / "tmp" / "pause.pid"
    pid = int(pause.read_text()) if pause.exists() else 0
    subprocess.run([*base, "unshare", "rm", "-rf", str(root), run_root], capture_output=True, timeout=120, env=env)
    if pid:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
