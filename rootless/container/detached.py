"""A detached container's monitor, forked by the per-user fork server (entry point ``monitor``).

``become_monitor`` runs in the server's child: it takes on the CLI's descriptors, environment,
working directory, umask and soft rlimits, then ``adopt`` plans the container again from the
CLI's options and starts it in this process (``run.monitor_main``).  This module sits above
``run`` and ``monitor``; the fork server knows it only by name (``services.ENTRIES``).

**The lean monitor.**  What a monitor costs is what it wrote since the server forked it:
CPython's reference counts and allocations while it planned and started the container dirty
about 4 MiB of pages shared with the server.  So the server's child (T, ``LeanMonitor``) does
not start the container itself: it becomes a child subreaper and forks a starter (H) that
plans and starts it as any monitor would, but without being a subreaper itself, so that the
container's PID 1 becomes T's child when the intermediate process exits (and takes T's life as
its parent-death signal).  Once the container runs, H hands T the log pipes (``Handoff``),
records T as the container's owner and monitor, and ends.  T, which has done next to nothing
since the fork, pumps the log and waits for PID 1; at its end T forks another H, which records
the end (``run._Starter._ended_under_lean_monitor``: poststop hooks, cgroup, --rm) and restarts
it if the policy says so, handing over again.  A container that needs something of its owner's
for its whole life (a console, health checks, a squashfs mount's lock, user networks) is
waited for by H itself, as before; T then only waits for H.  Network helpers (slirp4netns,
pasta, port forwarders) follow H's death, so H hands over and then lingers as ``sleep
infinity`` (``Handoff.linger``), which T kills once the container has ended.  If H dies before
it has handed over, T kills what it left (orphans are T's children) and ends.
"""

from __future__ import annotations

import os
import time

from . import forkserver
from .monitor import MONITOR_NAME, Detacher


def become_monitor(request: dict, fds: list[int]) -> int:
    """Become the monitor the CLI asked for (``forkserver.spawn_monitor``); see ``adopt``."""
    report, out, err = fds
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        os.close(fd)
    forkserver.take_caller_state(request)
    from ..sandbox import libc
    libc.set_process_name(MONITOR_NAME)
    detacher = Detacher.reporting_to(report)
    try:
        os.chdir(request["cwd"])
    except OSError as e:
        detacher.failed(f"the working directory {request['cwd']} is gone: {e.strerror}", 125)
        return 125
    if lean_likely(request["opts"]):
        return LeanMonitor(detacher, request).run()
    return adopt(detacher, request)


def lean_likely(opts: dict) -> bool:
    """Whether the container will most likely be handed to a lean monitor (``run`` decides,
    once planned: an image's HEALTHCHECK, say, keeps the starter waiting).  A container with
    a console, health checks or user networks gets the one monitor of before: T and H would
    both stay for its life."""
    from ..network import MODES
    net = (opts.get("network") or "").partition(":")[0]     # a user network's name is none of these
    return (os.environ.get("ROOTLESS_LEAN_MONITOR") != "0" and not opts.get("tty") and not opts.get("interactive")
            and not opts.get("health_cmd")
            and net in ("", "bridge", "container", *MODES)
            and not str(opts.get("image") or "").endswith(".sqfs"))


class Handoff:
    """H's side of the lean monitor: tells T, its parent, what to wait for."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.monitor = os.getppid()

    def give(self, rec, started, pump, log_cfg, restarts: int, lingers: bool = False) -> None:
        """Send T the container's pid and the log pipes' read ends (closing ours); the
        container's output goes nowhere else from now on (our fds 1 and 2: /dev/null).
        ``lingers``: H stays, as ``linger`` makes it, until T ends it."""
        import json
        import socket
        from dataclasses import asdict
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        fds = [r for r, _ in pump.pipes.values()]
        msg = {"id": rec.id, "pid": started.init_pid, "log": pump.path, "streams": list(pump.pipes),
               "cfg": asdict(log_cfg), "restarts": restarts, "lingers": lingers}
        socket.send_fds(self.sock, [json.dumps(msg).encode()], fds)
        pump.writer.close()

    def linger(self, keep: list[int]) -> None:
        """Become ``sleep infinity`` in place, keeping ``keep`` open: the network helpers H
        started (slirp4netns, pasta, port forwarders) follow H's death (a parent-death signal,
        slirp4netns's exit fd in ``keep``), and a sleeping process holds ~0.1 MiB where H
        held megabytes.  T kills it when the container has ended; it dies with T."""
        import shutil
        import signal
        from ..sandbox import libc
        libc.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != self.monitor:
            os._exit(1)            # T is gone already
        for fd in keep:
            os.set_inheritable(fd, True)
        sleep = shutil.which("sleep") or "/bin/sleep"
        try:
            os.execv(sleep, [sleep, "infinity"])
        finally:
            os._exit(1)


class LeanMonitor:
    """T: forks the starters (H), waits for the containers they hand over (see the module's doc)."""

    def __init__(self, detacher: Detacher, request: dict) -> None:
        self.detacher, self.request = detacher, request

    def run(self) -> int:
        import socket
        from ..sandbox import libc
        libc.set_child_subreaper(True)
        detacher, existing, ended, waited = self.detacher, self.request.get("existing"), None, 0
        while True:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            starter = os.fork()
            if starter == 0:
                ours.close()
                os._exit(adopt(detacher, {**self.request, "existing": existing}, Handoff(theirs), ended))
            theirs.close()
            if detacher is not None:
                detacher.close()          # the CLI hears from H, and sees EOF when H is done
                detacher = None
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):      # the CLI's stdout/stderr were for H's messages
                    os.dup2(null, fd)
                os.close(null)
            with ours:
                msg, fds = self._handed(ours)
            if msg is None:               # H waited itself, or failed: its status is ours
                code = _reap(starter)
                self._end_orphans()
                if ended is not None:
                    _record_end(self.request["store"], existing, waited, ended[0])
                return code
            if not msg.get("lingers"):
                _reap(starter)
            existing = msg["id"]
            code = self._wait(msg, fds)
            if msg.get("lingers"):        # H holds the network helpers: they end with it
                import signal
                os.kill(starter, signal.SIGKILL)
                _reap(starter)
                self._end_orphans()       # the helpers, ours once H is gone (a subreaper's)
            ended, waited = (code, msg["restarts"]), msg["pid"]

    @staticmethod
    def _handed(sock) -> tuple[dict | None, list[int]]:
        import json
        import socket
        try:
            data, fds, _, _ = socket.recv_fds(sock, 65536, 4)
        except OSError:
            return None, []
        if not data:
            return None, []
        return json.loads(data), fds

    @staticmethod
    def _wait(msg: dict, fds: list[int]) -> int:
        """Log the container's output and wait for its PID 1 (our child): its exit status.
        One thread, poll(2) on the pipes and a pidfd of PID 1: no pump threads (their stacks
        and malloc arenas would be most of what we hold)."""
        import select
        import signal
        from .logfile import LogConfig
        from .monitor import LogPump
        from ..sandbox.container import FORWARDED_SIGNALS
        pid = msg["pid"]

        def forward(signum: int, _frame: object) -> None:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        for s in FORWARDED_SIGNALS:
            signal.signal(s, forward)
        pump = LogPump(msg["log"], cfg=LogConfig(**msg["cfg"]), pipes=False)
        feeds = {fd: pump.sink(stream) for stream, fd in zip(msg["streams"], fds)}
        poller = select.poll()
        for fd in feeds:
            poller.register(fd, select.POLLIN)
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
        code, deadline = None, None
        while feeds:
            timeout = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            ready = poller.poll(timeout)
            if not ready and deadline is not None:
                break                      # a process of the container still holds the pipes
            for fd, _ in ready:
                if fd == pidfd:
                    poller.unregister(pidfd)
                    code, deadline = _reap(pid), time.monotonic() + 5.0
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                feeds[fd](chunk or None)
                if not chunk:
                    poller.unregister(fd)
                    os.close(fd)
                    del feeds[fd]
        for fd, feed in feeds.items():
            feed(None)
            os.close(fd)
        if code is None:
            code = _reap(pid)
        os.close(pidfd)
        pump.writer.close()
        for s in FORWARDED_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        return code

    @staticmethod
    def _end_orphans() -> None:
        """What a starter that died left: its container's processes came to us (a subreaper)."""
        me = os.getpid()
        try:
            with open(f"/proc/{me}/task/{me}/children") as f:
                kids = [int(p) for p in f.read().split()]
        except OSError:
            return
        for kid in kids:
            try:
                os.kill(kid, 9)
            except ProcessLookupError:
                pass
            _reap(kid)


def _record_end(store_root: str, cid: str, pid: int, code: int) -> None:
    """The starter that was to record the end of the round we waited for did not (it plans
    the container again first, and that can fail): record it, so that ``wait`` and ``ps`` see
    that end and its code rather than a container whose every process is gone."""
    from ..image.store import Store
    from ..errors import RootlessError
    from .records import Containers
    from .run import _ended

    def ended(r) -> None:
        if r.state == "running" and r.pid == pid:
            _ended(r, code)
    try:
        Containers(Store(store_root)).update(cid, ended)
    except (RootlessError, OSError):
        pass                              # removed meanwhile


def _reap(pid: int) -> int:
    from ..sandbox.userns import exit_code
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 125
        except InterruptedError:
            continue
        return exit_code(status)


def adopt(detacher: Detacher | None, request: dict, handoff: Handoff | None = None,
          ended: tuple[int, int] | None = None) -> int:
    """In a child of the fork server: be the monitor of the CLI's ``run -d`` or ``start``.

    ``request`` holds what ``run_detached`` was given: the store, the run options, the
    container to start again (None: create one)."""
    from ..errors import RootlessError
    from ..image.store import Store
    from .run import RunOptions, monitor_main
    code = 125
    try:
        code = monitor_main(Store(request["store"]), RunOptions(**request["opts"]), request.get("existing"),
                            detacher, handoff, ended)
    except RootlessError as e:
        if detacher is not None:
            detacher.failed(str(e), e.exit_code)
        return e.exit_code
    except BaseException as e:  # noqa: BLE001 - the CLI hears of it through the pipe
        if detacher is not None:
            detacher.failed(f"the container monitor failed: {e!r}", 125)
        return 125
    return code if isinstance(code, int) else 125


def main(argv: list[str]) -> int:
    """``python -m rootless.container.detached STORE ID``: start container ID of STORE in a
    monitor forked by this fresh process (``lifecycle.start(fork_here=False)`` without a fork
    server); the error, if any, on stderr."""
    import sys
    from ..errors import RootlessError
    from ..image.store import Store
    from .lifecycle import start
    try:
        start(Store(argv[0]), argv[1])
    except RootlessError as e:
        sys.stderr.write(str(e))
        return e.exit_code
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
