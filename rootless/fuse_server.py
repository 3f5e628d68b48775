"""The per-user fuse-overlay server (``fuse_overlay/server.py``), from the engine's side.

``ensure`` (in the engine's own process, before any namespace or cgroup exists, so the
server belongs to neither) connects to ``RUNTIME/fuse-overlay.sock`` or starts the server
in a session of its own and waits for it.  ``mount`` (in the intermediate process) asks it
for a fuse-overlay mount in the caller's namespaces and waits for the notify fd.  Both
return None / raise ``Unavailable`` rather than fail a run: the caller then starts a
daemon of its own.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

START_TIMEOUT = 10.0


class Unavailable(Exception):
    pass


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


def ensure(run_dir: str) -> str | None:
    """The server's socket path, starting the server when none answers; None if it cannot start."""
    path = os.path.join(run_dir, "fuse-overlay.sock")
    try:
        _connect(path).close()
        return path
    except OSError:
        pass
    from .sandbox.spawn import spawn
    idle = os.environ.get("ROOTLESS_FUSE_SERVER_IDLE", "300")
    log = os.open(os.path.join(run_dir, "fuse-overlay-server.log"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        spawn([sys.executable, "-m", "fuse_overlay.server", path, "--idle", idle],
              capture_stderr=False, stderr_fd=log, new_session=True)
    except OSError:
        return None
    finally:
        os.close(log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            _connect(path).close()
            return path
        except OSError:
            time.sleep(0.01)
    return None


def mount(path: str, argv: list[str], timeout: float) -> int:
    """A fuse-overlay mount in this process's user and mount namespaces; the serving pid."""
    r, w = os.pipe()
    try:
        try:
            conn = _connect(path)
        except OSError as e:
            raise Unavailable(f"the fuse-overlay server at {path} does not answer: {e}") from None
        with conn:
            socket.send_fds(conn, [json.dumps({"pid": os.getpid(), "argv": argv}).encode()], [w])
            os.close(w)
            w = -1
            conn.settimeout(timeout)
            reply = json.loads(conn.recv(65536) or b"{}")
        if "pid" not in reply:
            raise Unavailable(f"the fuse-overlay server refused: {reply.get('error', 'no answer')}")
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready or not os.read(r, 16).startswith(b"ready"):
            raise OSError(f"fuse-overlay did not mount the root filesystem (server child {reply['pid']}; "
                          f"see {os.path.join(os.path.dirname(path), 'fuse-overlay-server.log')})")
        return int(reply["pid"])
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
