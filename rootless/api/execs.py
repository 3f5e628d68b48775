"""``docker exec``: an exec is created (its command and options, kept in this service's memory),
then started — attached (the connection becomes its stdin/stdout/stderr, multiplexed unless it
has a terminal) or detached — then inspected for its exit code.

The engine starts the process (``lifecycle.exec_start``) with pipes of ours as its stdio, or
with a pty it opens inside the container (``Tty``).  It dies with the thread that forked it
(PR_SET_PDEATHSIG), so each exec has a thread of its own that starts it and waits for it; the
relaying is trio's, on the pipes and the pty master.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
import termios
import threading
from dataclasses import dataclass, field
from typing import Any

import trio

from .http import (HANGUPS, STDERR, STDOUT, ApiError, Hijack, Request, Response, frame, json_response,
                   raise_unless_hangup, until_hangup)
from .. import events
from .router import route
from .streams import MULTIPLEXED, RAW, DetachWatch, parse_detach_keys

KEEP_FINISHED = 256             # finished execs kept for inspection (Docker drops them with the container)


@dataclass
class Exec:
    id: str
    container_id: str
    cmd: list[str]
    env: list[str]
    user: str | None
    workdir: str | None
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool
    privileged: bool
    detach_keys: str
    started: bool = False
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    master: int | None = None               # the pty master while it runs (Tty)
    size: bytes | None = None               # the window size asked for before it ran
    finished: trio.Event = field(default_factory=trio.Event)

    def inspect(self) -> dict[str, Any]:
        return {"ID": self.id, "Running": self.running, "ExitCode": self.exit_code, "Pid": self.pid,
                "ContainerID": self.container_id, "OpenStdin": self.stdin, "OpenStdout": self.stdout,
                "OpenStderr": self.stderr, "CanRemove": False, "DetachKeys": self.detach_keys,
                "ProcessConfig": {"tty": self.tty, "entrypoint": self.cmd[0] if self.cmd else "",
                                  "arguments": self.cmd[1:], "privileged": self.privileged,
                                  "user": self.user or ""}}


EXECS: dict[str, Exec] = {}


def _find(exec_id: str) -> Exec:
    ex = EXECS.get(exec_id)
    if ex is None:
        matches = [e for e in EXECS.values() if e.id.startswith(exec_id)] if len(exec_id) >= 3 else []
        if len(matches) != 1:
            raise ApiError(404, f"No such exec instance: {exec_id}")
        ex = matches[0]
    return ex


def _forget_old() -> None:
    done = [e for e in EXECS.values() if e.started and not e.running]
    for e in done[:max(0, len(done) - KEEP_FINISHED)]:
        EXECS.pop(e.id, None)


def _running_container(store, name: str):
    from ..container.records import Containers, running
    from ..errors import Conflict
    rec = Containers(store).find(name)
    if not running(rec):
        raise Conflict(f"Container {rec.id} is not running")
    return rec


def _strings(body: dict, key: str) -> list[str]:
    value = body.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"invalid {key}: expected a list of strings")
    return value


@route("POST", "/containers/{name}/exec")
async def create(req: Request, name: str) -> Response:
    body = await req.json()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid exec config: expected a JSON object")
    cmd = _strings(body, "Cmd")
    if not cmd:
        raise ApiError(400, "No exec command specified: give Cmd, e.g. [\"sh\", \"-c\", \"...\"]")
    keys = body.get("DetachKeys") or ""
    parse_detach_keys(keys)
    workdir = body.get("WorkingDir") or None
    if workdir is not None and not workdir.startswith("/"):
        raise ApiError(400, f"the working directory '{workdir}' is invalid: it needs to be an absolute path")
    rec = await req.engine(_running_container, req.store, name)
    _forget_old()
    ex = Exec(id=secrets.token_hex(32), container_id=rec.id, cmd=cmd, env=_strings(body, "Env"),
              user=body.get("User") or None, workdir=workdir, tty=bool(body.get("Tty")),
              stdin=bool(body.get("AttachStdin")), stdout=bool(body.get("AttachStdout")),
              stderr=bool(body.get("AttachStderr")), privileged=bool(body.get("Privileged")), detach_keys=keys)
    EXECS[ex.id] = ex
    await req.engine(events.exec_event, req.store.root, rec, "exec_create", cmd, ex.id)
    return json_response({"Id": ex.id}, 201)


@route("GET", "/exec/{exec_id}/json")
async def inspect(req: Request, exec_id: str) -> Response:
    return json_response(_find(exec_id).inspect())


def _set_size(ex: Exec) -> None:
    if ex.master is not None and ex.size is not None:
        try:
            fcntl.ioctl(ex.master, termios.TIOCSWINSZ, ex.size)   # the process gets SIGWINCH
        except OSError:
            pass


def _winsize(height: int, width: int) -> bytes:
    if not (0 <= height < 65536 and 0 <= width < 65536):
        raise ApiError(400, f"invalid terminal size {height}x{width}: h and w are between 0 and 65535")
    return struct.pack("HHHH", height, width, 0, 0)


@route("POST", "/exec/{exec_id}/resize")
async def resize(req: Request, exec_id: str) -> Response:
    ex = _find(exec_id)
    ex.size = _winsize(req.int_arg("h", 0), req.int_arg("w", 0))
    if ex.started and not ex.running:
        from ..errors import Conflict
        raise Conflict(f"exec {ex.id} has ended")
    _set_size(ex)
    return Response(200, b"", None)


class _Process:
    """The exec's process, started and waited for by a thread of its own; its fds ours."""

    def __init__(self, store, ex: Exec, attached: bool):
        self.store, self.ex = store, ex
        self.started = trio.Event()
        self.relay = -1
        self.error: BaseException | None = None
        self.theirs: list[int] = []           # the child's ends, closed once it has them
        self.ours: dict[str, int] = {}        # "in", "out", "err": our ends of its pipes
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.theirs.append(null)
        stdio = [null, null, null]
        if attached and not ex.tty:
            for n, (name, wanted) in enumerate((("in", ex.stdin), ("out", ex.stdout), ("err", ex.stderr))):
                if wanted:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    theirs, ours = (r, w) if n == 0 else (w, r)
                    self.theirs.append(theirs)
                    self.ours[name] = ours
                    stdio[n] = theirs
        self.stdio = tuple(stdio)

    def start(self) -> None:
        ex = self.ex
        ex.started = True
        token = trio.lowlevel.current_trio_token()

        def soon(fn) -> None:
            try:
                token.run_sync_soon(fn)
            except trio.RunFinishedError:
                pass

        def work() -> None:
            from ..container import lifecycle
            try:
                started = lifecycle.exec_start(self.store, ex.container_id, ex.cmd, ex.stdin, ex.tty, ex.env,
                                               ex.user, ex.workdir, ex.privileged, 0, self.stdio, ex.size,
                                               exec_id=ex.id)
            except BaseException as e:  # noqa: BLE001 - told to the client
                self.error = e
                started = None
            finally:
                for fd in self.theirs:
                    os.close(fd)
            if started is None:
                soon(self._failed)
                return
            soon(lambda: self._running(started))
            code = lifecycle.exec_wait(started)
            lifecycle.exec_died(self.store, ex.container_id, code, ex.id)
            soon(lambda: self._ended(code))

        threading.Thread(target=work, name="rootless-api-exec", daemon=True).start()

    def _running(self, started) -> None:
        ex = self.ex
        ex.running, ex.pid, ex.master = True, started.init_pid, started.tty_master
        if ex.master is not None:
            self.relay = os.dup(ex.master)        # the relay's: the master itself is closed at the end
        _set_size(ex)
        self.started.set()

    def _failed(self) -> None:
        ex = self.ex
        ex.exit_code = getattr(self.error, "exit_code", 126)
        self.started.set()
        ex.finished.set()

    def _ended(self, code: int) -> None:
        ex = self.ex
        ex.running, ex.exit_code = False, code
        if ex.master is not None:
            os.close(ex.master)           # a relay reads its own duplicate to the end
        ex.master = None
        ex.finished.set()

    def close_ours(self) -> None:
        if self.relay >= 0:
            os.close(self.relay)
            self.relay = -1
        for fd in self.ours.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.ours.clear()


def _message(e: BaseException) -> str:
    from ..errors import RootlessError
    if isinstance(e, (RootlessError, ApiError)):
        return str(e)
    return f"internal error: {type(e).__name__}: {e}"


@route("POST", "/exec/{exec_id}/start")
async def start(req: Request, exec_id: str) -> Response | Hijack:
    body = await req.json()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid exec start config: expected a JSON object")
    ex = _find(exec_id)
    if ex.started:
        from ..errors import Conflict
        raise Conflict(f"exec {ex.id} has already been started: create another one")
    size = body.get("ConsoleSize")
    if ex.tty and isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        ex.size = _winsize(size[0], size[1])
    store = req.store
    if body.get("Detach"):
        proc = _Process(store, ex, attached=False)
        proc.start()
        await proc.started.wait()
        if proc.error is not None:
            raise proc.error
        return Response(200, b"", None)
    await req.engine(_running_container, store, ex.container_id)
    return Hijack(lambda client, early: _attached(store, ex, client, early), RAW if ex.tty else MULTIPLEXED)


async def _attached(store, ex: Exec, client: trio.abc.Stream, early: bytes) -> None:
    proc = _Process(store, ex, attached=True)
    proc.start()
    try:
        await proc.started.wait()
        if proc.error is not None:
            text = (_message(proc.error) + "\n").encode()
            await client.send_all(text if ex.tty else frame(STDERR, text))
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, client, nursery.cancel_scope)
            if ex.tty:
                pty = trio.lowlevel.FdStream(proc.relay)
                proc.relay = -1
                async with pty:
                    if ex.stdin:
                        nursery.start_soon(_pump_in, client, early, pty, parse_detach_keys(ex.detach_keys),
                                           False, nursery.cancel_scope)
                    await _pump_out(pty, client, None, trio.Lock())
                    await ex.finished.wait()
                    nursery.cancel_scope.cancel()
            else:
                sending = trio.Lock()
                streams = {name: trio.lowlevel.FdStream(proc.ours.pop(name)) for name in ("in", "out", "err")
                           if name in proc.ours}
                try:
                    if "in" in streams:
                        nursery.start_soon(_pump_in, client, early, streams["in"], b"", True,  # keys: -t only
                                           nursery.cancel_scope)
                    async with trio.open_nursery() as outputs:
                        for name, kind in (("out", STDOUT), ("err", STDERR)):
                            if name in streams:
                                outputs.start_soon(_pump_out, streams[name], client, kind, sending)
                    await ex.finished.wait()
                    nursery.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True):
                        for s in streams.values():
                            await s.aclose()
    except BaseExceptionGroup as group:
        raise_unless_hangup(group)
    except HANGUPS:
        pass
    finally:
        proc.close_ours()


async def _watch(client: trio.abc.Stream, scope: trio.CancelScope) -> None:
    await until_hangup(client)
    scope.cancel()


async def _pump_out(source: trio.lowlevel.FdStream, client: trio.abc.Stream, kind: int | None,
                    sending: trio.Lock) -> None:
    """A pipe (or the pty master) to the client until its end; a pty's end is EIO."""
    while True:
        try:
            data = await source.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            return
        async with sending:          # stdout's and stderr's frames, one after the other
            await client.send_all(data if kind is None else frame(kind, data))


async def _pump_in(client: trio.abc.Stream, early: bytes, sink: trio.lowlevel.FdStream, keys: bytes,
                   close_at_end: bool, scope: trio.CancelScope) -> None:
    """The client's input to the process; its end closes the process's stdin (not a pty's)."""
    watch = DetachWatch(keys)
    data = early
    try:
        while True:
            if data:
                data, detached = watch.feed(data)
                if data:
                    await sink.send_all(data)
                if detached:
                    scope.cancel()
                    return
            data = await client.receive_some(65536)
            if not data:
                held = watch.rest()
                if held:
                    await sink.send_all(held)
                break
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass              # the process closed its stdin
    if close_at_end:
        await sink.aclose()
