"""A container's output and input: ``logs``, ``attach`` (also before it starts: ``docker run``
without ``-d`` attaches, then starts) and ``resize`` of its terminal.

Output comes from the container's log (container/logfile.py), followed by the engine in a
worker thread that stops when the client goes away; without a terminal it is Docker's
multiplexed stream (``http.frame``), with one (``-t``) the raw bytes.  Input, and the output of
a terminal, go through the container's console (container/console.py): the monitor's socket
that ``rootless attach`` uses too.
"""

from __future__ import annotations

import collections
import datetime
import re
import threading
from typing import Any, AsyncIterator, Callable, Iterator

import trio

from .http import HANGUPS, STDERR, STDOUT, ApiError, Hijack, Request, Response, frame, raise_unless_hangup, until_hangup
from .. import events
from .router import route

RAW = "application/vnd.docker.raw-stream"
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
DEFAULT_DETACH_KEYS = b"\x10\x11"           # ctrl-p,ctrl-q


# --- a blocking engine generator, read from trio ------------------------------------------

async def thread_batches(produce: Callable[[Callable[[], bool]], Iterator[Any]],
                         limit: int = 4096) -> AsyncIterator[list[Any]]:
    """The items of ``produce(stop)``, iterated in a thread of its own, in batches as they come.

    ``stop()`` turns true once the consumer has gone (closed, cancelled: the client went
    away); the generator checks it while it waits (logs follow), so the thread ends then.
    The thread waits while ``limit`` items are unread: a slow client slows the reading."""
    token = trio.lowlevel.current_trio_token()
    cond = threading.Condition()
    items: collections.deque = collections.deque()
    state: dict[str, Any] = {"stop": False, "done": False, "error": None, "wake": trio.Event()}

    def wake() -> None:                     # in trio's thread
        state["wake"].set()

    def notify() -> None:
        try:
            token.run_sync_soon(wake)
        except trio.RunFinishedError:
            pass

    def stopped() -> bool:
        return state["stop"]

    def work() -> None:
        try:
            for item in produce(stopped):
                with cond:
                    while len(items) >= limit and not state["stop"]:
                        cond.wait()
                    if state["stop"]:
                        return
                    first = not items
                    items.append(item)
                if first:
                    notify()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            state["error"] = e
        finally:
            with cond:
                state["done"] = True
            notify()

    threading.Thread(target=work, name="rootless-api-stream", daemon=True).start()
    try:
        while True:
            with cond:
                state["wake"] = trio.Event()
                got = list(items)
                items.clear()
                done = state["done"]
                cond.notify_all()
            if got:
                yield got
                continue
            if done:
                if state["error"] is not None:
                    raise state["error"]
                return
            await state["wake"].wait()
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()


# --- logs -----------------------------------------------------------------------------------

def _unix_time(req: Request, name: str) -> float | None:
    """``since``/``until``: Unix seconds (``1700000000.123456789``, what the CLI sends), or
    RFC 3339; 0 or absent: no bound."""
    value = req.arg(name)
    if value in (None, "", "0"):
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
        return datetime.datetime.fromisoformat(when).timestamp()
    except ValueError:
        raise ApiError(400, f"invalid value for {name}: '{value}' is neither a Unix time nor an RFC 3339 "
                            "time") from None


def _nanoseconds(when: str) -> str:
    """The log's time as Docker prints it (RFC 3339 with nanoseconds)."""
    return re.sub(r"\.(\d{6})Z$", r".\g<1>000Z", when)


def _container(store, name: str):
    from ..container.records import Containers
    return Containers(store).find(name)


def _has_tty(rec) -> bool:
    return bool((rec.config.get("options") or {}).get("tty"))


def _encode(line, tty: bool, timestamps: bool) -> bytes:
    data = line.text.encode()
    if timestamps:
        data = _nanoseconds(line.time).encode() + b" " + data
    if tty:
        return data
    return frame(STDERR if line.stream == "stderr" else STDOUT, data)


@route("GET", "/containers/{name}/logs")
async def logs(req: Request, name: str) -> Response:
    from ..container import lifecycle
    streams = {s for s in ("stdout", "stderr") if req.flag(s)}
    if not streams:
        raise ApiError(400, "Bad parameters: you must choose at least one stream (stdout=1 or stderr=1)")
    follow, timestamps = req.flag("follow"), req.flag("timestamps")
    since, until = _unix_time(req, "since"), _unix_time(req, "until")
    tail_arg = req.arg("tail", "all")
    tail = None
    if tail_arg not in ("all", ""):
        tail = req.int_arg("tail")
        if tail is not None and tail < 0:
            tail = None
    store = req.store
    rec = await req.engine(_container, store, name)
    if (rec.config.get("options") or {}).get("log_driver") == "none":
        raise ApiError(501, f"configured logging driver does not support reading: container {rec.name} "
                            "was run with --log-driver none")
    tty = _has_tty(rec)

    def produce(stop: Callable[[], bool]) -> Iterator[Any]:
        return lifecycle.logs(store, rec.id, follow, tail, since, until, stop)

    async def body() -> AsyncIterator[bytes]:
        async for batch in thread_batches(produce):
            data = b"".join(_encode(line, tty, timestamps) for line in batch if line.stream in streams)
            if data:
                yield data

    return Response(200, body(), RAW if tty else MULTIPLEXED)


# --- attach ---------------------------------------------------------------------------------

def parse_detach_keys(text: str | None) -> bytes:
    """Docker's ``detachKeys``: ``ctrl-p,ctrl-q``, ``a``...; empty: the default."""
    if not text:
        return DEFAULT_DETACH_KEYS
    keys = b""
    for part in text.split(","):
        part = part.strip()
        if len(part) == 1:
            keys += part.encode()
        elif part.lower().startswith("ctrl-") and len(part) == 6:
            c = part[5].lower()
            code = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}.get(c)
            if code is None:
                if not "a" <= c <= "z":
                    raise ApiError(400, f"invalid detach keys '{text}': use ctrl-<a-z@[\\]^_> or single "
                                        "characters, separated by commas")
                code = ord(c) - ord("a") + 1
            keys += bytes([code])
        else:
            raise ApiError(400, f"invalid detach keys '{text}': use e.g. 'ctrl-p,ctrl-q'")
    return keys


class DetachWatch:
    """Finds the detach key sequence in the input, across reads."""

    def __init__(self, keys: bytes):
        self.keys, self.held = keys, b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(the input to pass on, whether the sequence was typed)."""
        if not self.keys:
            return data, False
        data = self.held + data
        self.held = b""
        at = data.find(self.keys)
        if at >= 0:
            return data[:at], True
        for n in range(min(len(self.keys) - 1, len(data)), 0, -1):  # a prefix at the end: wait
            if data.endswith(self.keys[:n]):
                self.held = data[-n:]
                return data[:-n], False
        return data, False

    def rest(self) -> bytes:
        """What was held at the end of the input (the start of the sequence, never finished)."""
        held, self.held = self.held, b""
        return held


class _Attach:
    """One attach: the client's connection relayed to the container until its run ends."""

    def __init__(self, req: Request, rec, want: set[str], stdin: bool, stream: bool, logs: bool,
                 detach_keys: bytes):
        self.store, self.req, self.rec = req.store, req, rec
        options = rec.config.get("options") or {}
        self.tty = bool(options.get("tty"))
        self.has_input = stdin and (self.tty or bool(options.get("interactive")))
        self.want, self.stream, self.logs = want, stream, logs
        self.detach = DetachWatch(detach_keys if self.tty else b"")   # as Docker: keys of a terminal only
        self.console: trio.SocketStream | None = None
        self.console_ready = trio.Event()
        self.console_lock = trio.Lock()
        self.pending: list[bytes] = []
        self.input_ended = False
        self.before_start = False
        self.mark = None

    async def prepare(self) -> None:
        from ..container import lifecycle
        from ..container.records import running
        self.before_start = not running(self.rec)
        await self.req.engine(events.emit, self.store.root, "container", "attach", self.rec.id,
                              events.container_attributes(self.rec))
        # before the start: the log held open now, so that a run removed as soon as it ends
        # (--rm) is still read whole
        self.mark = await self.req.engine(lifecycle.log_mark, self.store, self.rec.id,
                                          self.logs and not self.before_start, self.before_start)

    async def run(self, client: trio.abc.Stream, early: bytes) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, client, nursery.cancel_scope)
                if self.has_input:
                    nursery.start_soon(self._input, client, early, nursery.cancel_scope)
                await self._output(client)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_unless_hangup(group)
        except HANGUPS:
            pass
        finally:
            if self.mark is not None:
                self.mark.close()
            if self.console is not None:
                with trio.CancelScope(shield=True):
                    await self.console.aclose()

    async def _watch(self, client: trio.abc.Stream, scope: trio.CancelScope) -> None:
        await until_hangup(client)
        scope.cancel()

    async def _send(self, client: trio.abc.Stream, stream: str, data: bytes) -> None:
        if stream in self.want and data:
            await client.send_all(data if self.tty else frame(STDERR if stream == "stderr" else STDOUT, data))

    async def _output(self, client: trio.abc.Stream) -> None:
        from ..container import lifecycle
        store, cid, mark = self.store, self.rec.id, self.mark
        if self.logs and not self.before_start:
            # what it wrote until now, then (stream=1) what comes
            def earlier(stop: Callable[[], bool]) -> Iterator[Any]:
                return lifecycle.logs(store, cid, False, None, None)
            async for batch in thread_batches(earlier):
                for line in batch:
                    await self._send(client, line.stream, line.text.encode())
            mark = self.mark = await self.req.engine(lifecycle.log_mark, store, cid)
        if not self.stream:
            return
        if self.before_start:
            async for _ in thread_batches(lambda stop: iter([lifecycle.wait_started(store, cid, mark, stop)])):
                pass
        if self.tty or self.has_input:
            await self._connect_console()
        if self.tty and await self._console_output(client):
            return
        async for batch in thread_batches(lambda stop: lifecycle.run_output(store, cid, mark, stop)):
            for line in batch:
                await self._send(client, line.stream, line.text.encode())

    async def _connect_console(self) -> None:
        from ..container.console import REPLAY
        from ..container.lifecycle import console_path
        try:
            self.console = await trio.open_unix_socket(console_path(self.rec))
            if self.tty and self.before_start:     # the output it wrote before we came first
                await self.console.send_all(_console_frame(REPLAY, b""))
        except (OSError, trio.BrokenResourceError):
            self.console = None          # the run has ended already: its output is in the log
        self.console_ready.set()
        await self._flush()

    async def _console_output(self, client: trio.abc.Stream) -> bool:
        """A terminal's output from the console: True if it was all relayed; False when the
        log has to give it (the run ended before we could ask for what came first)."""
        from ..container.console import OUT, REPLAY, Frames
        if self.console is None:
            return False
        frames, held, replayed = Frames(), [], not self.before_start
        while True:
            try:
                data = await self.console.receive_some(65536)
            except HANGUPS:
                data = b""
            if not data:
                return replayed
            for kind, payload in frames.feed(data):
                if kind == REPLAY:
                    replayed = True
                    await self._send(client, "stdout", payload)
                    for chunk in held:
                        await self._send(client, "stdout", chunk)
                    held = []
                elif kind == OUT:
                    if replayed:
                        await self._send(client, "stdout", payload)
                    else:
                        held.append(payload)

    async def _input(self, client: trio.abc.Stream, early: bytes, scope: trio.CancelScope) -> None:
        """The client's input to the console once it is connected (kept until then); its end
        ends the container's input too where Docker's StdinOnce says so."""
        from ..container.console import EOF
        data = early
        while True:
            if data:
                data, detached = self.detach.feed(data)
                self.pending.append(data)
                await self._flush()
                if detached:
                    scope.cancel()           # the client detaches: the container runs on
                    return
            data = await client.receive_some(65536)
            if not data:
                break
        self.pending.append(self.detach.rest())
        self.input_ended = True
        await self.console_ready.wait()
        await self._flush()
        if self.console is not None and not self.tty and self._stdin_once():
            async with self.console_lock:
                try:
                    await self.console.send_all(_console_frame(EOF, b""))
                except HANGUPS:
                    pass

    async def _flush(self) -> None:
        """What the client typed, to the console once it is there."""
        from ..container.console import IN
        if not self.console_ready.is_set():
            return
        data = b"".join(self.pending)
        self.pending.clear()
        if self.console is None or not data:
            return
        async with self.console_lock:
            try:
                await self.console.send_all(_console_frame(IN, data))
            except HANGUPS:
                pass

    def _stdin_once(self) -> bool:
        """Whether the end of this client's input ends the container's (Docker's StdinOnce:
        ``docker run -i``, which attaches before it starts)."""
        api = self.rec.config.get("api") or {}
        return bool(api.get("StdinOnce", self.before_start))


def _console_frame(kind: bytes, data: bytes) -> bytes:
    from ..container.console import frame as console_frame
    return console_frame(kind, data)


@route("POST", "/containers/{name}/attach")
async def attach(req: Request, name: str) -> Hijack:
    rec = await req.engine(_container, req.store, name)
    want = {s for s in ("stdout", "stderr") if req.flag(s)}
    a = _Attach(req, rec, want, req.flag("stdin"), req.flag("stream"), req.flag("logs"),
                parse_detach_keys(req.arg("detachKeys")))
    await a.prepare()
    return Hijack(a.run, RAW if a.tty else MULTIPLEXED)


@route("POST", "/containers/{name}/resize")
async def resize(req: Request, name: str) -> Response:
    from ..container import lifecycle
    height, width = req.int_arg("h", 0), req.int_arg("w", 0)
    if not (0 <= height < 65536 and 0 <= width < 65536):
        raise ApiError(400, f"invalid terminal size {height}x{width}: h and w are between 0 and 65535")
    await req.engine(lifecycle.resize, req.store, name, height, width)
    return Response(200, b"", None)
