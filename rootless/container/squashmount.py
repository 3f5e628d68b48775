"""Squashfs images mounted once per node and user, shared by the containers that run them.

``acquire(path, maps, run_base)`` returns the directory where squashfs file ``path`` is mounted,
for a container's overlay to use as its one lower layer, and a lock the caller holds for as long
as the container runs.  Its state lives under the run-time directory::

    RUN/sqfs/KEY/        KEY: the file's device, inode, size, mtime and path, hashed
      use.lock           every user of the mount holds a shared flock(2) on it
      setup.lock         held while one command checks or starts the mount
      state              {"pid": squashfuse's pid, "start": its start time}, while mounted
      mnt/               the mount point (the mount itself is in the holder's namespace)
      squashfuse.log     squashfuse's stderr

The mount is made by ``squashfuse`` as root of the per-user holder's user namespace (the one
user networks use, ``network/user_networks.ensure_holder``: the caller's maps, so owners in the
file are container ids: 0 is you, 1000 a sub-id), in a mount namespace of its own: nothing is
mounted in the host's namespaces and no setuid helper is used.  The mount is reached as
``/proc/PID/root/RUN/sqfs/KEY/mnt`` (PID: squashfuse).  The kernel lets a process follow that
link only from the host's user namespace or from the same one with as many capabilities
(``cap_ptrace_access_check``), so a container of a squashfs image is made in the holder's user
namespace (``SandboxSpec.join_userns``), as one on a user network is: its overlay daemon then
reads the mount, and FUSE lets it (it has the mounter's uid).  The container's own processes
see only the overlay.

The process that mounted it execs ``flock -x use.lock rm -f state``: it waits until no user
holds the shared lock, then removes the state and exits; squashfuse, its child, gets SIGTERM
then (its parent-death signal), unmounts and exits, and the namespace ends with it.  A command
that takes the shared lock afterwards finds no state and mounts the file again.  Killing the
users (their lock goes with them) or the holder (squashfuse follows) never leaves a mount.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from typing import NoReturn

from ..errors import RootlessError
from ..sandbox import channel, idmap, libc
from ..sandbox.userns import fork_into_userns, wait as wait_child
from ..network.user_networks import ensure_holder
from . import procs

READY_TIMEOUT = 30.0


@dataclass
class Mounted:
    lower: str          # the mounted root, as a path for processes of the holder's user namespace
    lock_fd: int        # the shared lock: close it when the container has ended
    pid: int            # squashfuse's pid
    holder: int         # the pid of the per-user holder whose user namespace the mount is in

    def userns(self) -> int:
        """The mount's user namespace, open: the container's first user namespace must be this
        one (``SandboxSpec.join_userns``), for its overlay to read the mount."""
        return os.open(f"/proc/{self.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)   # alive while we hold the lock

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def key_of(path: str) -> str:
    st = os.stat(path)
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{os.path.realpath(path)}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def state_dir(run_base: str, path: str) -> str:
    return os.path.join(run_base, "sqfs", key_of(path))


def acquire(path: str, maps: idmap.IdMaps, run_base: str) -> Mounted:
    """Squashfs file ``path`` mounted (already, or now), and our shared lock on its use."""
    exe = shutil.which("squashfuse")
    if not exe:
        raise RootlessError("squashfuse is not installed: install the squashfuse package to run "
                            "squashfs images (Debian, Ubuntu, Fedora)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise RootlessError("/dev/fuse is missing or not usable by you: squashfs images are mounted with FUSE")
    d = state_dir(run_base, path)
    os.makedirs(os.path.join(d, "mnt"), mode=0o700, exist_ok=True)
    setup = os.open(os.path.join(d, "setup.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(setup, fcntl.LOCK_EX)
        use = os.open(os.path.join(d, "use.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # waits while a holder tears the mount down (it holds the lock exclusively then)
            fcntl.flock(use, fcntl.LOCK_SH)
            holder = ensure_holder(maps, run_base)
            pid = _running(d, holder)
            if not pid:
                pid = _mount(exe, os.path.abspath(path), d, maps, holder)
        except BaseException:
            os.close(use)
            raise
    finally:
        os.close(setup)
    return Mounted(f"/proc/{pid}/root{os.path.join(d, 'mnt')}", use, pid, holder)


def _running(d: str, holder: int) -> int:
    try:
        with open(os.path.join(d, "state")) as f:
            state = json.load(f)
        pid, start = int(state["pid"]), int(state["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if state.get("holder") != holder:
        return 0          # mounted in a holder's namespace that is gone: it is going too
    return pid if start and procs.start_time(pid) == start else 0


def _mount(exe: str, path: str, d: str, maps: idmap.IdMaps, holder: int) -> int:
    """Start a holder: squashfuse mounting ``path`` on ``d/mnt`` in a user and mount namespace
    of its own, watched by ``flock``; squashfuse's pid once the mount is there."""
    mnt = os.path.join(d, "mnt")
    log = os.path.join(d, "squashfuse.log")
    flock = shutil.which("flock") or "flock"

    def child(sock: socket.socket) -> NoReturn:
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        if os.fork():
            os._exit(0)           # the holder below is nobody's child of ours: it outlives us
        try:
            os.setsid()
            null = os.open("/dev/null", os.O_RDWR)
            err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(err, 2)
            keep = sock.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, 1 << 16)
            fuse = os.fork()
            if fuse == 0:
                libc.set_pdeathsig(signal.SIGTERM)    # our end (flock's) is its end
                os.execv(exe, [exe, "-f", "-o", "ro", path, mnt])
            before = os.stat(d).st_dev
            deadline = time.monotonic() + READY_TIMEOUT
            while os.stat(mnt).st_dev == before:
                done, status = os.waitpid(fuse, os.WNOHANG)
                if done:
                    with open(log, errors="replace") as f:
                        why = f.read().strip()[-1000:]
                    raise OSError(f"squashfuse could not mount {path}: {why or 'it exited'}")
                if time.monotonic() > deadline:
                    os.kill(fuse, signal.SIGKILL)
                    raise OSError(f"squashfuse did not mount {path} within {READY_TIMEOUT:.0f} s")
                time.sleep(0.005)
            channel.send(sock, "mounted", pid=fuse)
            sock.close()
            os.execv(flock, [flock, "-x", os.path.join(d, "use.lock"), "rm", "-f", os.path.join(d, "state")])
        except BaseException as e:  # noqa: BLE001 - report, never unwind into the caller's code
            channel.send_error(sock, str(e))
            os._exit(125)

    userns = os.open(f"/proc/{holder}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid, sock = fork_into_userns(maps, child, name="rootless-sqfs", join=userns)
    except channel.ChildError as e:
        raise RootlessError(f"cannot mount the squashfs image {path}: {e}") from None
    finally:
        os.close(userns)
    with sock:
        try:
            msg, _ = channel.expect(sock, "mounted")
        except channel.ChildError as e:
            raise RootlessError(f"cannot mount the squashfs image {path}: {e}") from None
        except channel.ProtocolError as e:
            raise RootlessError(f"cannot mount the squashfs image {path}: {e}") from None
        finally:
            wait_child(pid)
    fuse = int(msg["pid"])
    start = procs.start_time(fuse)
    from .. import atomic
    atomic.write_file(os.path.join(d, "state"), json.dumps({"pid": fuse, "start": start, "holder": holder, "file": path}).encode())
    return fuse


def mounted(run_base: str, path: str) -> int:
    """squashfuse's pid if ``path`` is mounted now for us, else 0 (for tests and ``info``)."""
    try:
        d = state_dir(run_base, path)
        with open(os.path.join(d, "state")) as f:
            return _running(d, int(json.load(f)["holder"]))
    except (ValueError, KeyError, TypeError):
        return 0
    except OSError:
        return 0


__all__ = ["Mounted", "acquire", "mounted", "key_of", "state_dir"]
