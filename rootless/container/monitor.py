"""Detached containers (``run -d``): the monitor process that outlives the CLI.

    rootless run -d (CLI)  ── fork ──>  rootless-monitor (new session, stdin /dev/null)
        waits on a pipe for                 the container's stdout/stderr are pipes, pumped by a
        "started <id>" or an error,         thread into containers/ID/ctr.log (JSON lines: log,
        prints the id, exits 0              stream, time — Docker's json-file format); then it is
                                            P of the process model: starts the container, keeps
                                            its network helpers and cgroup, waits, records the exit.

The monitor is the container's lifeline: the intermediate process dies with it
(PR_SET_PDEATHSIG), and with it the whole container — so a monitor killed with -9 leaves
no container running; ``ps`` then shows it exited, and the next ``run`` sweeps its cgroup.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Callable

MONITOR_NAME = "rootless-mon"    # what ps shows (a process name holds 15 bytes)


def log_path(container_dir: str) -> str:
    return os.path.join(container_dir, "ctr.log")


class Detacher:
    """Forks the monitor; ``started``/``failed`` are called in the monitor, ``wait_parent`` in the CLI."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.pid = 0

    @classmethod
    def reporting_to(cls, w: int) -> "Detacher":
        """The monitor's side only: it reports on ``w`` (a monitor forked by the fork server)."""
        d = cls.__new__(cls)
        d.r, d.w, d.pid = -1, w, 0
        return d

    def fork(self) -> bool:
        """True in the monitor, False in the CLI."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.r)
            os.setsid()
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.close(null)
            from ..sandbox import libc
            libc.set_process_name(MONITOR_NAME)
            return True
        os.close(self.w)
        return False

    def _send(self, msg: dict) -> None:
        if self.w < 0:
            return
        try:
            os.write(self.w, json.dumps(msg).encode() + b"\n")
        except OSError:
            pass
        os.close(self.w)
        self.w = -1

    def close(self) -> None:
        """Report nothing from this process (another one reports)."""
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def started(self, cid: str) -> None:
        self._send({"id": cid})

    def failed(self, message: str, code: int) -> None:
        self._send({"error": message, "exit_code": code})

    def wait_parent(self) -> tuple[str | None, str | None, int]:
        """(id, error, exit code) as the monitor reported them."""
        with os.fdopen(self.r, "rb") as f:
            line = f.readline()
        if not line:
            return None, ("the container monitor ended before the container started (it was killed, or "
                          "the container was removed with 'rootless rm -f' meanwhile)"), 125
        msg = json.loads(line)
        return msg.get("id"), msg.get("error"), int(msg.get("exit_code", 0))


class LogPump:
    """The container's stdout/stderr (fds 1 and 2 of whatever the monitor starts) into ``path``
    (in ``cfg``'s format and bound: container/logfile.py)."""

    def __init__(self, path: str, tee: Callable[[str, bytes], None] | None = None, cfg=None, pipes: bool = True):
        from .logfile import LogConfig, LogWriter
        self.path = path
        self.writer = LogWriter(path, cfg or LogConfig())      # first: it fails if the container is gone
        self.pipes = {"stdout": os.pipe(), "stderr": os.pipe()} if pipes else {}
        self.threads: list[threading.Thread] = []
        self.tee = tee                  # also given every chunk (attached clients, console.py)
        self.lock = threading.Lock()

    def redirect(self) -> None:
        """Make the pipes our fds 1 and 2, so that the container inherits them."""
        os.dup2(self.pipes["stdout"][1], 1)
        os.dup2(self.pipes["stderr"][1], 2)
        for _, w in self.pipes.values():
            os.close(w)

    def start(self) -> None:
        """Pump in threads; our own fds 1 and 2 go to /dev/null so only the container writes the pipes."""
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        self.pump_pipes()

    def writers(self) -> tuple[int, int]:
        """The pipes' write ends, for a container started in the foreground (``stdio``)."""
        return self.pipes["stdout"][1], self.pipes["stderr"][1]

    def close_writers(self) -> None:
        """Close our copies of the pipes' write ends (once; again is a no-op)."""
        for stream, (r, w) in self.pipes.items():
            if w >= 0:
                os.close(w)
                self.pipes[stream] = (r, -1)

    def pump_pipes(self) -> None:
        for stream, (r, _) in self.pipes.items():
            self.add_source(stream, r)

    def add_source(self, stream: str, fd: int) -> None:
        """Pump ``fd`` (closed at its end) into the log as ``stream``: the pipes, or a pty master."""
        from ..sandbox.spawn import quiet_thread
        self.threads.append(quiet_thread(self._pump, stream, fd))

    def _pump(self, stream: str, fd: int) -> None:
        feed = self.sink(stream, tee=True)
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:          # EIO: a pty whose last user closed it
                chunk = b""
            if not chunk:
                break
            feed(chunk)
        feed(None)
        os.close(fd)

    def sink(self, stream: str, tee: bool = False) -> Callable[[bytes | None], None]:
        """A callable given ``stream``'s output chunk by chunk (None at its end), written to the
        log line by line: the pumps', and a foreground ``-t`` container's pty as we relay it."""
        pending = [b""]

        def feed(chunk: bytes | None) -> None:
            if chunk is None:
                if pending[0]:
                    self._write(stream, [pending[0]], self.lock)
                pending[0] = b""
                return
            if tee and self.tee is not None:
                self.tee(stream, chunk)
            *lines, pending[0] = (pending[0] + chunk).split(b"\n")
            self._write(stream, [line + b"\n" for line in lines], self.lock)
        return feed

    def _write(self, stream: str, lines: list[bytes], lock: threading.Lock) -> None:
        if not lines:
            return
        with lock:
            try:
                self.writer.write(stream, lines)
            except OSError:
                pass        # a full disk or a removed container: the output still reaches its readers

    def finish(self, timeout: float = 5.0) -> None:
        for t in self.threads:
            t.join(timeout)
        self.writer.close()


def run_detached(start: Callable[["Detacher"], int], request: dict | None = None) -> str:
    """Have a monitor call ``start(detacher)``; returns the container's id once it has started.

    The monitor is forked by the per-user fork server when one answers (``request``: what
    the server's child needs to plan and start the same container, see ``detached.adopt``),
    else by this process."""
    d = Detacher()
    if request is None or not _spawn_by_server(d, request):
        if d.fork():
            code = 125
            try:
                code = start(d)
            except BaseException as e:  # noqa: BLE001 - the CLI hears of it through the pipe
                d.failed(str(e), getattr(e, "exit_code", 125))
            finally:
                os._exit(code if isinstance(code, int) else 125)
    cid, error, code = d.wait_parent()
    if error:
        from ..errors import RootlessError
        raise RootlessError(error, code)
    return cid


def _spawn_by_server(d: Detacher, request: dict) -> bool:
    from . import forkserver, services
    from .. import paths
    path = services.ensure(paths.runtime_dir())
    if path is None:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        d.pid = forkserver.spawn_monitor(path, request, d.w)
    except forkserver.Unavailable:
        return False
    os.close(d.w)
    d.w = -1
    return True
