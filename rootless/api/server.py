"""``rootless system service``: the Docker Engine API on a unix socket that only its owner
may use.

One trio task per connection: h11 parses requests (heads bounded in size, bodies read by
the handler as it needs them), ``router.find`` picks the handler, and its answer goes back
as JSON, a chunked stream, or — for attach and exec — the raw connection.  Every connection
is checked with ``SO_PEERCRED`` first: a peer of another uid is refused and logged.  The
engine runs in worker threads (``Request.engine``); the server itself never blocks.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
import sys
import time
from typing import AsyncIterator

import h11
import trio

from ..errors import Conflict, NotFound, RootlessError, UsageError
from . import router
from .http import ApiError, Hijack, Request, Response, until_hangup

MAX_HEAD = 64 << 10            # request line and headers
RECEIVE = 64 << 10
SERVER_NAME = "rootless"


def default_socket() -> str:
    from ..paths import runtime_dir
    return os.path.join(runtime_dir(), "docker.sock")


def log(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
    sys.stderr.flush()


TRIM_AFTER = 11.0               # trio's worker threads end after 10 s idle


def trim_memory() -> None:
    """Free what the collector can, then hand the C heap's free pages back (glibc)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):        # not glibc
        pass


M_ARENA_MAX = -8


def few_arenas(count: int = 1) -> None:
    """glibc gives each thread that allocates a heap arena of its own; the service's worker
    threads come and go, and each arena keeps pages.  One is enough for a service that mostly waits."""
    import ctypes
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, count)
    except (OSError, AttributeError):        # not glibc
        pass


def status_of(e: BaseException) -> tuple[int, str]:
    """Docker's status code and message for an error a handler raised."""
    if isinstance(e, ApiError):
        return e.status, e.message
    if isinstance(e, NotFound):
        return 404, str(e)
    if isinstance(e, Conflict):
        return 409, str(e)
    if isinstance(e, UsageError):
        return 400, str(e)
    if isinstance(e, RootlessError):
        return 500, str(e)
    return 500, f"internal error: {type(e).__name__}: {e}"


# --- listening ----------------------------------------------------------------------------

def inherited_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation: ``LISTEN_FDS``, fd 3)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or not os.environ.get("LISTEN_FDS"):
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)          # not for the children we start
    try:
        sock = socket.socket(fileno=3)
    except OSError as e:
        raise UsageError(f"LISTEN_FDS says a socket was passed, but fd 3 is not one ({e.strerror}): "
                         "start the service from a systemd socket unit, or unset LISTEN_FDS") from None
    os.set_inheritable(3, False)
    if sock.family != socket.AF_UNIX:
        raise UsageError("the socket systemd passed (LISTEN_FDS) is not a unix socket: use ListenStream=%t/...")
    return sock


def listen(path: str) -> socket.socket:
    """A unix socket at ``path``, mode 0600, in a directory only we can enter.  A socket left by a
    service that is gone is replaced; one that still answers is refused."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UsageError(f"{directory} must be a directory only you can use (mode 0700): "
                         f"run 'chmod 700 {directory}', or give --socket in a directory of your own")
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise UsageError(f"{path} exists and is not a socket: remove it, or give another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)                 # a service that is gone left it
        else:
            raise UsageError(f"another service is already listening on {path}: stop it, or give another --socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:
        raise UsageError(f"cannot listen on {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


# --- the service --------------------------------------------------------------------------

class Service:
    def __init__(self, store_root: str, idle_timeout: float = 0, quiet: bool = False):
        self.store_root = store_root
        self.idle_timeout = idle_timeout
        self.quiet = quiet
        self.active = 0
        self.last_active = time.monotonic()
        self.owner = os.getuid()
        self.ended = trio.Event()

    async def serve(self, sock: socket.socket, task_status=trio.TASK_STATUS_IGNORED) -> None:
        router.load_handlers()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            if self.idle_timeout > 0:
                nursery.start_soon(self._idle_watch, nursery.cancel_scope)
            nursery.start_soon(self._trim_when_idle)
            task_status.started()
            try:
                await trio.serve_listeners(self._connection, [listener], handler_nursery=nursery)
            finally:
                self.ended.set()

    async def _idle_watch(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(min(1.0, self.idle_timeout))
            if self.active == 0 and time.monotonic() - self.last_active >= self.idle_timeout:
                if not self.quiet:
                    log(f"idle for {self.idle_timeout:g} s: exiting")
                scope.cancel()
                return

    async def _trim_when_idle(self) -> None:
        """Once no client has been connected for TRIM_AFTER seconds (trio's idle worker threads
        have ended by then), give the memory the requests used back to the system: a service
        waits idle most of its life."""
        trimmed_at = self.last_active
        while True:
            await trio.sleep(2)
            if self.active == 0 and self.last_active != trimmed_at \
                    and time.monotonic() - self.last_active >= TRIM_AFTER:
                trimmed_at = self.last_active
                trim_memory()

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            pid, uid = peer_uid(stream.socket)
        except OSError:
            await stream.aclose()
            return
        if uid != self.owner:
            log(f"refused a connection from uid {uid} (pid {pid}): this service serves uid {self.owner} only")
            await stream.aclose()
            return
        self.active += 1
        try:
            await Connection(self, stream).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as e:  # noqa: BLE001 - a streamed body failed after its head: a bug, logged;
            import traceback   # this connection ends, the service lives on
            log("".join(traceback.format_exception(e)).rstrip())
        finally:
            self.active -= 1
            self.last_active = time.monotonic()
            with trio.CancelScope(shield=True):
                await stream.aclose()


class Connection:
    """One client connection: requests one after another (keep-alive) until it closes or is
    taken over by a hijacked stream."""

    def __init__(self, service: Service, stream: trio.SocketStream):
        self.service = service
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.hung_up = False

    async def _send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _next_event(self):
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                if self.conn.they_are_waiting_for_100_continue:
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                data = await self.stream.receive_some(RECEIVE)
                self.conn.receive_data(data)
                continue
            return event

    async def _receive_body(self) -> bytes | None:
        try:
            event = await self._next_event()
        except h11.RemoteProtocolError as e:     # cut short, a bad chunk: the client's error
            raise ApiError(400, f"malformed request body: {e}") from None
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise ApiError(400, "the request body ended early")

    async def run(self) -> None:
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as e:
                await self._refuse_malformed(e)
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            hijacked = await self._request(event)
            if hijacked:
                return
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                # what the handler did not read of the body is skipped
                while self.conn.their_state is h11.SEND_BODY:
                    await self._receive_body()
                self.conn.start_next_cycle()
            except (h11.ProtocolError, ApiError):
                return

    async def _refuse_malformed(self, e: h11.RemoteProtocolError) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = e.error_status_hint or 400
        body = json.dumps({"message": f"malformed request: {e}"}).encode() + b"\n"
        head = (f"HTTP/1.1 {status} Bad Request\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            await self.stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _make_request(self, event: h11.Request) -> Request:
        from urllib.parse import parse_qs, urlsplit
        target = event.target.decode("latin-1")
        parts = urlsplit(target)
        version, path = router.split_version(parts.path)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        return Request(method=event.method.decode("ascii"), path=path,
                       query=parse_qs(parts.query, keep_blank_values=True), headers=headers,
                       version=version, store_root=self.service.store_root, _receive=self._receive_body)

    async def _request(self, event: h11.Request) -> bool:
        """Answer one request; True if the connection was taken over."""
        started = time.monotonic()
        req = None
        # the head alone for HEAD, also when it was refused before a handler ran (h11 refuses a
        # body there, and its error must not take the connection's task down)
        self.head_only = event.method == b"HEAD"
        try:
            req = self._make_request(event)
            handler, params = router.find(req.method, req.path)
            response = await handler(req, **params)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as e:  # noqa: BLE001 - every failure is an answer, never a dead server
            status, message = status_of(e)
            if status == 500 and not isinstance(e, RootlessError):
                import traceback
                log("".join(traceback.format_exception(e)).rstrip())
            response = Response(status, json.dumps({"message": message}).encode() + b"\n")
        if isinstance(response, Hijack):
            await self._hijack(event, response)
            return True
        await self._respond(req, response)
        if not self.service.quiet:
            what = event.target.decode("latin-1", "replace")[:200]
            log(f"{event.method.decode()} {what} {response.status} {time.monotonic() - started:.3f}s")
        return False

    def _head(self, req: Request | None, response: Response, streaming: bool) -> list[tuple[str, str]]:
        headers = [("Server", SERVER_NAME), ("Api-Version", router.version_text(router.API_VERSION)),
                   ("Docker-Experimental", "false"), ("Ostype", "linux")]
        if response.content_type:
            headers.append(("Content-Type", response.content_type))
        if not streaming and response.status not in (204, 304):
            headers.append(("Content-Length", str(len(response.body))))
        return headers + response.headers

    async def _respond(self, req: Request | None, response: Response) -> None:
        streaming = not isinstance(response.body, (bytes, bytearray))
        try:
            await self._send(h11.Response(status_code=response.status, headers=self._head(req, response, streaming)))
        except BaseException:
            if streaming:                   # the client left before the head: the stream is closed unread
                with trio.CancelScope(shield=True):
                    aclose = getattr(response.body, "aclose", None)
                    if aclose:
                        await aclose()
            raise
        if self.head_only:
            if streaming:
                await response.body.aclose()
            await self._send(h11.EndOfMessage())
            return
        if not streaming:
            if response.body:
                await self._send(h11.Data(data=response.body))
            await self._send(h11.EndOfMessage())
            return
        body: AsyncIterator[bytes] = response.body
        try:
            await self._stream_body(body)
        finally:
            with trio.CancelScope(shield=True):
                aclose = getattr(body, "aclose", None)
                if aclose:
                    await aclose()

    async def _stream_body(self, body: AsyncIterator[bytes]) -> None:
        """The chunks of a streamed answer.  A client that goes away while the stream has
        nothing to send (logs -f of a quiet container, events) ends it too: the body is
        cancelled.  A body that fails once the head is sent can only end early: the connection
        is closed, and the service lives on."""
        try:
            try:
                async with trio.open_nursery() as watch:
                    watch.start_soon(self._hangup, watch.cancel_scope)
                    async for chunk in body:
                        if chunk:
                            await self._send(h11.Data(data=chunk))
                    watch.cancel_scope.cancel()
            except BaseExceptionGroup as group:     # the watcher raises nothing: the body's error
                raise group.exceptions[0] if len(group.exceptions) == 1 else group
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as e:  # noqa: BLE001 - see above
            if isinstance(e, RootlessError):
                log(f"a stream ended early: {e}")
            else:
                import traceback
                log("".join(traceback.format_exception(e)).rstrip())
            raise trio.BrokenResourceError("the stream failed") from e
        if watch.cancel_scope.cancelled_caught and self.hung_up:
            raise trio.BrokenResourceError("the client closed the connection")
        await self._send(h11.EndOfMessage())

    async def _hangup(self, scope: trio.CancelScope) -> None:
        await until_hangup(self.stream)
        self.hung_up = True
        scope.cancel()

    async def _hijack(self, event: h11.Request, hijack: Hijack) -> None:
        upgrade = any(k.lower() == b"upgrade" for k, _ in event.headers)
        # the request's body (none for attach; exec start's is its JSON, read by the handler)
        while self.conn.their_state is h11.SEND_BODY:
            await self._receive_body()
        if upgrade and self.conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:
            await self._send(h11.InformationalResponse(status_code=101, headers=[
                ("Content-Type", hijack.content_type), ("Connection", "Upgrade"), ("Upgrade", "tcp"),
                ("Api-Version", router.version_text(router.API_VERSION))], reason=b"UPGRADED"))
            early = self.conn.trailing_data[0]
        else:
            await self.stream.send_all(
                f"HTTP/1.1 200 OK\r\nContent-Type: {hijack.content_type}\r\nServer: {SERVER_NAME}\r\n"
                f"Api-Version: {router.version_text(router.API_VERSION)}\r\n\r\n".encode())
            early = self.conn.trailing_data[0]
        if not self.service.quiet:
            log(f"{event.method.decode()} {event.target.decode('latin-1', 'replace')[:200]} hijacked")
        try:
            await hijack.run(self.stream, bytes(early))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as e:  # noqa: BLE001 - a bug in one stream must not end the service
            import traceback
            log("".join(traceback.format_exception(e)).rstrip())


async def _signals(scope: trio.CancelScope, quiet: bool) -> None:
    """SIGINT or SIGTERM (systemd's stop) ends the service."""
    import signal
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not quiet:
                log(f"{signal.Signals(signum).name}: exiting")
            scope.cancel()
            return


# --- entry point --------------------------------------------------------------------------

def open_socket(socket_path: str | None) -> tuple[socket.socket, str | None]:
    """The listening socket: systemd's (socket activation), else one at ``socket_path`` (the
    default: $XDG_RUNTIME_DIR/rootless/docker.sock); and its path, removed when the service ends."""
    sock = inherited_socket()
    if sock is not None:
        return sock, None
    path = socket_path or default_socket()
    return listen(path), path


def exec_service(store_root: str, sock: socket.socket, path: str | None, idle_timeout: float,
                 quiet: bool) -> None:
    """Become the service: a fresh interpreter (``python -m rootless.api``) that loads only what
    serving needs — not the command line's modules (a service waits, idle, most of its life:
    its memory is what it costs) — and inherits the listening socket."""
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    args = [sys.executable, "-m", "rootless.api", "--fd", str(fd), "--root", store_root,
            "--timeout", repr(idle_timeout)] + (["--path", path] if path else []) + (["--quiet"] if quiet else [])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)


def serve(store_root: str, sock: socket.socket, path: str | None, idle_timeout: float,
          quiet: bool = False) -> None:
    """Run the service on ``sock`` until it has been idle ``idle_timeout`` seconds (0: for ever)
    or is interrupted; then remove ``path`` (the socket's, if we made it)."""
    service = Service(store_root, idle_timeout, quiet)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signals, nursery.cancel_scope, quiet)
            await nursery.start(service.serve, sock)
            await service.ended.wait()         # idle for --timeout seconds
            nursery.cancel_scope.cancel()
    try:
        trio.run(main)
    finally:
        sock.close()
        if path:
            try:
                os.unlink(path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise


def main(argv: list[str]) -> int:
    """``python -m rootless.api --fd N --root DIR --timeout S [--path P] [--quiet]``: what
    ``rootless system service`` execs once it listens (``exec_service``)."""
    opts: dict[str, str | bool] = {"--quiet": False}
    it = iter(argv)
    for arg in it:
        if arg == "--quiet":
            opts[arg] = True
        elif arg in ("--fd", "--root", "--timeout", "--path"):
            opts[arg] = next(it, "")
        else:
            sys.stderr.write(f"rootless: unknown argument {arg!r}: start the service with 'rootless system service'\n")
            return 125
    try:
        fd = int(opts["--fd"])
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        few_arenas()
        serve(str(opts["--root"]), sock, opts.get("--path") or None, float(opts["--timeout"]), bool(opts["--quiet"]))
    except (KeyError, ValueError, OSError) as e:
        sys.stderr.write(f"rootless: the service cannot start ({e}): start it with 'rootless system service'\n")
        return 125
    except RootlessError as e:
        sys.stderr.write(f"rootless: {e}\n")
        return e.exit_code
    return 0
