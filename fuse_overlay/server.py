"""A pre-forked fuse-overlay server: one resident process per user, a forked child per mount.

Starting a fuse-overlay daemon costs an interpreter and the pyfuse3 import (~60 ms on our
machines; ~150 ms while the daemon used trio) on every container start.  This server pays
that once: it imports everything, listens on a unix socket, and for each request forks a
child that

1. joins the user and mount namespaces of the requesting process (by its pid; the server
   runs as the same user, which owns those namespaces),
2. runs the ordinary ``fuse-overlay -f`` code path with the arguments it was sent,
   signalling readiness on the notify fd that came with the request (SCM_RIGHTS),
3. once mounted, leaves that mount namespace for a private copy of it from which it
   detaches the mount: it then holds no reference to the mount, which lives exactly as long
   as the processes of the container (and of whoever else joined its mount namespace).
   When the last of them ends, the kernel destroys the mount, aborts the FUSE connection
   and the daemon's main loop ends: no process has to watch another or unmount anything,
   and the requester may exit while the mount stays in use.

Protocol (SOCK_SEQPACKET): request ``{"pid": N, "argv": [...]}`` with one fd (the notify fd,
named ``notify_fd=@`` in argv); reply ``{"pid": CHILD}`` or ``{"error": "..."}``.
The server exits after ``--idle`` seconds without requests and without children; its pid is
in ``SOCKET.pid`` meanwhile.

    python -m fuse_overlay.server SOCKET [--idle SECONDS]
"""
from __future__ import annotations

import json
import marshal
import os
import select
import signal
import socket
import sys
import time
from typing import Callable

IDLE = 300.0
REQUEST_TIMEOUT = 5.0     # a connection that sends no request within this is dropped


def _preload() -> None:
    from . import loop
    loop.import_pyfuse3()      # the point of the server: imported once (trio is not needed)
    from . import _sys, cli, copyup, fs, inodes, layers, loop, mount, ownership  # noqa: F401


def _leave_mount(mountpoint: str) -> None:
    """Called once mounted (before readiness is reported): move to a private copy of the
    requester's mount namespace and detach our mount there (see point 3 above)."""
    from . import _sys
    _sys.unshare(_sys.CLONE_NEWNS, "CLONE_NEWNS")
    _sys.umount2(mountpoint, _sys.MNT_DETACH)


def mount_child(request: dict, fds: list[int]) -> int:
    """In a forked child: the mount of ``request``; returns when the mount has ended."""
    return _child(request, fds[0])


def _child(request: dict, notify_fd: int) -> int:
    from . import _sys, cli, mount
    pid = int(request["pid"])
    for kind, flag in (("user", _sys.CLONE_NEWUSER), ("mnt", _sys.CLONE_NEWNS)):
        fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _sys.setns(fd, flag, f"/proc/{pid}/ns/{kind}")
        finally:
            os.close(fd)
    os.chdir("/")
    argv = [a.replace("notify_fd=@", f"notify_fd={notify_fd}") for a in request["argv"]]
    mount.after_mount = _leave_mount
    return cli.main(argv)


def _still_ours(path: str, inode: int) -> bool:
    """Whether ``path`` is still the socket we bound (clients can reach us)."""
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def serve(path: str, idle: float, preload: Callable[[], None] = lambda: None,
          child: Callable[[dict, list[int]], int] = mount_child) -> int:
    """Listen at ``path``; fork ``child(request, fds)`` per request (``preload`` runs first).
    Other programs reuse this loop with a ``child`` of their own (rootless's fork server)."""
    _preload()
    preload()
    import gc
    gc.freeze()   # the preloaded objects stay shared with every forked daemon (no GC writes to them)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    bound_inode = os.stat(path).st_ino
    with open(path + ".pid", "w") as f:
        f.write(f"{os.getpid()}\n")
    children: set[int] = set()
    # Accepted connections whose request has not come yet, with their deadline: each client
    # is served on its own, so one that connects and never sends stalls nobody.
    pending: dict[socket.socket, float] = {}
    last = time.monotonic()
    while True:
        for pid in list(children):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    children.discard(pid)
            except ChildProcessError:
                children.discard(pid)
        now = time.monotonic()
        for conn, deadline in list(pending.items()):
            if now > deadline:
                del pending[conn]
                conn.close()
        if not children and not pending and (now - last > idle or not _still_ours(path, bound_inode)):
            break           # idle, or unreachable: a server started at once replaced our socket
        ready, _, _ = select.select([listener, *pending], [], [], 1.0)
        for sock in ready:
            last = time.monotonic()
            if sock is listener:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                pending[conn] = last + REQUEST_TIMEOUT
                continue
            del pending[sock]
            with sock:
                kid = _answer(sock, child, keep_closed=[listener, *pending])
            if kid:
                children.add(kid)
    try:
        if os.stat(path).st_ino == bound_inode:  # not a newer server's socket
            os.unlink(path)
            os.unlink(path + ".pid")
    except OSError:
        pass
    return 0


def _answer(conn: socket.socket, child: Callable[[dict, list[int]], int],
            keep_closed: list[socket.socket]) -> int:
    """Read one request from ``conn``, fork its child and reply with its pid (0: refused)."""
    fds: list[int] = []
    compact = False
    try:
        data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
        # JSON, or marshal from a client that must not import json (rootless's command line,
        # 5 ms less per command); only this user can reach the socket, in its 0700 directory.
        compact = data[:1] != b"{"
        request = marshal.loads(data) if compact else json.loads(data)
        if not isinstance(request, dict):
            raise ValueError("a request is a mapping")
        kid = os.fork()
        if kid == 0:
            code = 1
            try:
                for other in (*keep_closed, conn):
                    other.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                code = child(request, fds)
            except BaseException as e:  # noqa: BLE001 - report, never return into the loop
                print(f"fuse-overlay: {e}", file=sys.stderr)
            finally:
                os._exit(code)
        try:
            conn.send(marshal.dumps({"pid": kid}) if compact else json.dumps({"pid": kid}).encode())
        except OSError:
            pass       # the client left; the child runs on and reports through its own fds
        return kid
    except (OSError, ValueError, KeyError, IndexError, EOFError, TypeError) as e:
        try:
            conn.send(marshal.dumps({"error": str(e)}) if compact else json.dumps({"error": str(e)}).encode())
        except OSError:
            pass
        return 0
    finally:
        for fd in fds:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        print("usage: python -m fuse_overlay.server SOCKET [--idle SECONDS]", file=sys.stderr)
        return 1
    idle = IDLE
    if "--idle" in args:
        idle = float(args[args.index("--idle") + 1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return serve(args[0], idle)


if __name__ == "__main__":
    sys.exit(main())
