"""The per-user fork server: the processes that stay resident per container come from here.

One resident process per user (``python -m rootless.container.forkserver SOCKET``) imports the engine,
pyfuse3 and trio once, listens at ``RUNTIME/forkserver-CODE.sock`` (CODE: see ``_code_id``) and forks, on request,
a child that calls one of the entry points it was started with (``--entry NAME=MODULE:FUNCTION``;
``services.py`` names them and the modules to preload).  It imports none of the code it runs
itself, so it sits below ``run``, ``monitor`` and ``rootfs``, which call it:

* ``mount``: a fuse-overlay daemon for a container's root filesystem, in the requester's
  user and mount namespaces (``fuse_overlay.server.mount_child``).  A container starts as
  fast as with the kernel's overlay: no interpreter and no pyfuse3/trio import per start.
* ``monitor``: the monitor of a detached container (``run -d``, ``start``, ``restart``).  The
  CLI sends its parsed options, environment, working directory and umask, with the write
  end of its "started" pipe and its stdout/stderr; the child becomes the monitor, exactly as
  a monitor forked by the CLI would (``monitor.run_detached``, ``detached.become_monitor``).

Both children share the server's memory copy-on-write (the server calls ``gc.freeze`` after
its imports so that the collector does not write to those pages), so what a container costs
is what its two processes wrote since the fork, not two interpreters and their imports
(docs/containers.md has the figures).  The server exits after ``--idle`` seconds without
requests and without children; monitors and daemons are its children, so it stays while a
container runs.  It is started in a session of its own by the first command that needs it,
before any namespace or cgroup of a container exists, so it belongs to none.

``ensure``, ``mount`` and ``spawn_monitor`` are the client side.  They return None / raise
``Unavailable`` rather than fail a command: the caller then forks a monitor or starts a
fuse-overlay daemon of its own.  ``ROOTLESS_FORKSERVER=0`` disables the server.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time

START_TIMEOUT = 10.0
SOCKET = "forkserver.sock"
LOG = "forkserver.log"
_RLIMITS = ("RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE", "RLIMIT_STACK", "RLIMIT_MEMLOCK")


class Unavailable(Exception):
    pass


def _connect(path: str):
    import socket      # here: the command line's thin client (cli/client.py) imports this module
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


@functools.lru_cache(maxsize=1)
def _code_id(services: str = "") -> str:
    """Names the code a server runs: the interpreter, the newest source file of rootless
    and fuse_overlay, and what it preloads and runs (``services``).  A server started before
    an upgrade (or an edit) keeps its old socket and ends once idle; the next command starts
    one with the new code."""
    import zlib        # not hashlib: its OpenSSL costs every command that asks (cli/client.py) 2 ms
    import fuse_overlay
    newest = 0
    rootless_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for pkg in (rootless_dir, os.path.dirname(fuse_overlay.__file__)):
        for base, _dirs, files in os.walk(pkg):
            for name in files:
                if name.endswith(".py"):
                    newest = max(newest, os.stat(os.path.join(base, name)).st_mtime_ns)
    key = f"{sys.executable}\0{newest}\0{services}".encode()
    return f"{zlib.crc32(key):08x}{zlib.adler32(key):08x}"[:12]


def socket_path(run_dir: str, preload: tuple[str, ...] = (), entries: dict[str, str] | None = None) -> str:
    """Where the server started with ``preload`` and ``entries`` (see ``ensure``) listens."""
    return os.path.join(run_dir, SOCKET.replace(".sock", f"-{_code_id(chr(0).join(_args(preload, entries)))}.sock"))


def _args(preload: tuple[str, ...], entries: dict[str, str] | None) -> list[str]:
    args = ["--preload", ",".join(preload)] if preload else []
    for name, target in sorted((entries or {}).items()):
        args += ["--entry", f"{name}={target}"]
    return args


def ensure(run_dir: str, preload: tuple[str, ...] = (), entries: dict[str, str] | None = None,
           wait: bool = True) -> str | None:
    """The server's socket path, starting the server when none answers; None if it cannot start.

    ``preload``: modules the server imports once (its children share them); ``entries``:
    what a request may ask it to run, by name, as ``"module:function"`` (``function(request,
    fds)`` in the forked child, its return value the child's exit status).  ``wait=False``:
    start it if need be, but return None at once rather than wait for it to listen."""
    if os.environ.get("ROOTLESS_FORKSERVER") == "0":
        return None
    path = socket_path(run_dir, preload, entries)
    try:
        _connect(path).close()
        return path
    except OSError:
        pass
    if not wait and not _claim_start(path):
        return None          # another command started it a moment ago: it is importing still
    from ..sandbox.spawn import spawn_daemon
    idle = os.environ.get("ROOTLESS_FORKSERVER_IDLE", "300")
    log = os.open(os.path.join(run_dir, LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        spawn_daemon([sys.executable, "-m", "rootless.container.forkserver", path, "--idle", idle,
                      *_args(preload, entries)], stderr_fd=log)
    except OSError:
        return None
    finally:
        os.close(log)
    if not wait:
        return None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            _connect(path).close()
            return path
        except OSError:
            time.sleep(0.01)
    return None


def _claim_start(path: str) -> bool:
    """True if no other command began starting this server in the last START_TIMEOUT
    seconds (``PATH.starting``, its time the claim's): commands that do not wait for the
    server must not each start one while the first still imports."""
    marker = path + ".starting"
    try:
        if time.time() - os.stat(marker).st_mtime < START_TIMEOUT:
            return False
    except OSError:
        pass
    try:
        with open(marker, "w"):
            pass
    except OSError:
        return False
    return True


def _request(path: str, request: dict, fds: list[int], timeout: float) -> int:
    """Send ``request`` with ``fds``; the forked child's pid."""
    try:
        conn = _connect(path)
    except OSError as e:
        raise Unavailable(f"the fork server at {path} does not answer: {e}") from None
    with conn:
        try:
            import socket
            import json     # here: cli/client.py imports this module, and json imports re (5 ms)
            socket.send_fds(conn, [json.dumps(request).encode()], fds)
            conn.settimeout(timeout)
            reply = json.loads(conn.recv(65536) or b"{}")
        except (OSError, ValueError) as e:
            raise Unavailable(f"the fork server at {path} failed: {e}") from None
    if "pid" not in reply:
        raise Unavailable(f"the fork server refused: {reply.get('error', 'no answer')}")
    return int(reply["pid"])


def mount(path: str, argv: list[str], timeout: float) -> int:
    """A fuse-overlay mount in this process's user and mount namespaces; the serving pid."""
    r, w = os.pipe()
    try:
        try:
            pid = _request(path, {"entry": "mount", "pid": os.getpid(), "argv": argv}, [w], timeout)
        finally:
            os.close(w)
        import select
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready or not os.read(r, 16).startswith(b"ready"):
            raise OSError(f"fuse-overlay did not mount the root filesystem (fork server child {pid}; "
                          f"see {os.path.join(os.path.dirname(path), LOG)})")
        return pid
    finally:
        os.close(r)


def spawn_monitor(path: str, request: dict, report_fd: int) -> int:
    """Have the server fork the monitor of a detached container; it reports on ``report_fd``."""
    return _request(path, {**request, **caller_state(), "entry": "monitor"}, [report_fd, 1, 2], 10.0)


def caller_state() -> dict:
    """What a child of the server takes on to act for this process (``take_caller_state``):
    its environment, working directory, umask and soft rlimits."""
    rlimits = {}
    for name in _RLIMITS:
        try:
            rlimits[name] = resource.getrlimit(getattr(resource, name))[0]
        except (AttributeError, OSError, ValueError):
            pass
    return {"env": dict(os.environ), "cwd": os.getcwd(), "umask": _umask(), "rlimits": rlimits}


def take_caller_state(request: dict) -> None:
    """In the server's child: the environment, umask and soft rlimits of ``caller_state``
    (the working directory is the caller's to take: its absence is worded by each)."""
    import time as _time
    os.environ.clear()
    os.environ.update(request["env"])
    _time.tzset()                      # TZ may differ from the server's
    os.umask(int(request["umask"]))
    for name, soft in request.get("rlimits", {}).items():
        try:
            limit = getattr(resource, name)
            resource.setrlimit(limit, (soft, resource.getrlimit(limit)[1]))
        except (AttributeError, OSError, ValueError):
            pass


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


# --- the server side ------------------------------------------------------------------

def _import(target: str):
    """``"module:function"`` -> the function."""
    import importlib
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _preloader(modules: list[str]):
    def preload() -> None:
        import importlib
        for name in modules:
            importlib.import_module(name)
    return preload


def _dispatcher(entries: dict[str, str]):
    def child(request: dict, fds: list[int]) -> int:
        name = request.get("entry")
        if name not in entries:
            raise ValueError(f"unknown entry point {name!r} (this server runs {', '.join(sorted(entries))})")
        return _import(entries[name])(request, fds)
    return child


def main(argv: list[str] | None = None) -> int:
    import signal
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        print("usage: python -m rootless.container.forkserver SOCKET [--idle SECONDS] [--preload MODULE,...] "
              "[--entry NAME=MODULE:FUNCTION]...", file=sys.stderr)
        return 1
    idle = float(args[args.index("--idle") + 1]) if "--idle" in args else 300.0
    preload = [m for m in (args[args.index("--preload") + 1] if "--preload" in args else "").split(",") if m]
    entries = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--entry")
    # Nothing of whoever started us stays open here (a pipe held by a resident server keeps
    # its reader waiting; spawn() already closes them, this is for any other starter).
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from fuse_overlay.server import serve
    return serve(args[0], idle, preload=_preloader(preload), child=_dispatcher(entries))


if __name__ == "__main__":
    sys.exit(main())
