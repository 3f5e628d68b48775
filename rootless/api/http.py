"""What a handler of the API sees and answers: the request (query, headers, body read on
demand and bounded), the response (JSON, a streamed body, or the connection taken over for
attach and exec), and the error Docker's clients print.

Handlers are ``async def handler(req: Request, **path_params) -> Response``.  They call the
engine through ``req.engine(fn, *args)`` (a worker thread: the engine blocks) and raise
``ApiError`` or any ``RootlessError``; the server words both as Docker's ``{"message": ...}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

MAX_JSON_BODY = 16 << 20        # a create or a network config; archives and contexts stream


HANGUPS = (trio.BrokenResourceError, trio.ClosedResourceError)   # the client went away


def raise_unless_hangup(group: BaseExceptionGroup) -> None:
    """A stream's nursery failed: a client that went away ends it quietly; anything else is
    raised again."""
    _, rest = group.split(HANGUPS)
    if rest is not None:
        raise rest


class ApiError(Exception):
    """An answer other than 2xx that is not an engine error: a bad parameter (400), a
    route that does not exist (404), a body that is too large (413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


TRUE = ("1", "true", "True", "yes")


@dataclass
class Request:
    method: str
    path: str                                   # without the /vX.Y prefix
    query: dict[str, list[str]]
    headers: dict[str, str]                     # names in lower case
    version: tuple[int, int]                    # the API version the client asked for
    store_root: str
    _receive: Callable[[], Awaitable[bytes | None]] = field(repr=False, default=None)  # next body chunk; None at end
    _body_done: bool = False

    # --- the query string --------------------------------------------------------------
    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def args(self, name: str) -> list[str]:
        return list(self.query.get(name, []))

    def flag(self, name: str, default: bool = False) -> bool:
        """Docker's boolean parameters: 1/true/True (anything else is false)."""
        value = self.arg(name)
        if value is None:
            return default
        return value in TRUE

    def int_arg(self, name: str, default: int | None = None) -> int | None:
        value = self.arg(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise ApiError(400, f"invalid value for {name}: '{value}' is not an integer") from None

    def filters(self) -> dict[str, list[str]]:
        """``filters={"label":["a=b"]}``, or the older ``{"label":{"a=b":true}}``, as
        ``{"label": ["a=b"]}``."""
        text = self.arg("filters")
        if not text:
            return {}
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError):
            raise ApiError(400, f"invalid filters: {text!r} is not JSON") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "invalid filters: expected a JSON object")
        out: dict[str, list[str]] = {}
        for key, value in raw.items():
            if isinstance(value, dict):
                out[key] = [k for k, on in value.items() if on]
            elif isinstance(value, list):
                out[key] = [str(v) for v in value]
            else:
                out[key] = [str(value)]
        return out

    def filter_args(self) -> list[str]:
        """The filters as the command line's ``--filter key=value`` list."""
        return [f"{k}={v}" for k, values in self.filters().items() for v in values]

    # --- the body ------------------------------------------------------------------------
    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (an archive, a build context, an image to load)."""
        while not self._body_done:
            data = await self._receive()
            if data is None:
                self._body_done = True
                return
            if data:
                yield data

    async def body(self, limit: int = MAX_JSON_BODY) -> bytes:
        parts, size = [], 0
        async for data in self.chunks():
            size += len(data)
            if size > limit:
                raise ApiError(413, f"request body larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    async def json(self) -> Any:
        """The body as JSON; an empty body is ``{}``."""
        data = await self.body()
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except ValueError as e:
            raise ApiError(400, f"invalid JSON body: {e}") from None
        except RecursionError:
            raise ApiError(400, "invalid JSON body: nested too deeply") from None

    # --- the engine ----------------------------------------------------------------------
    @property
    def store(self):
        from ..image.store import Store
        return Store(self.store_root)

    async def engine(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread: the engine blocks on files, locks and children."""
        return await trio.to_thread.run_sync(lambda: fn(*args), abandon_on_cancel=True)


@dataclass
class Response:
    status: int = 200
    body: bytes | AsyncIterator[bytes] = b""     # an async iterator: sent chunked as it comes
    content_type: str | None = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Hijack:
    """The connection becomes a raw byte stream once the response head is sent (attach, exec
    start): ``run(stream, early)`` owns it, ``early`` being what the client sent past the
    request (its first input bytes).  Answered ``101 UPGRADED`` when the client asked to
    upgrade (``Upgrade: tcp``), else ``200`` with no length, as Docker does."""
    run: Callable[[trio.abc.Stream, bytes], Awaitable[None]]
    content_type: str = "application/vnd.docker.raw-stream"


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode() + b"\n")


def no_content() -> Response:
    return Response(204, b"", None)


def text_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


class _Body:
    """A streamed answer whose ``aclose`` also runs ``on_close``, whether it was read or not: a
    generator that never started runs no ``finally``, and its client may leave before the head
    is sent."""

    def __init__(self, chunks: AsyncIterator[bytes], on_close: Callable[[], Any] | None):
        self._chunks, self._on_close = chunks, on_close

    def __aiter__(self) -> "_Body":
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            close, self._on_close = self._on_close, None
            if close:
                close()


def json_stream(items: AsyncIterator[Any], on_close: Callable[[], Any] | None = None) -> Response:
    """A stream of JSON objects, one per line (pull and push progress, build output, events,
    stats).  ``on_close()``: frees what the stream holds once it ends, read or not."""
    async def body() -> AsyncIterator[bytes]:
        try:
            async for item in items:
                yield json.dumps(item).encode() + b"\n"
        finally:                            # at once, not when the collector finds it
            aclose = getattr(items, "aclose", None)
            if aclose:
                await aclose()
    return Response(200, _Body(body(), on_close), "application/json")


async def until_hangup(stream: trio.abc.Stream, every: float = 0.5) -> None:
    """Return once the client has closed its connection entirely (not a mere half-close: the
    end of its input).  A stream whose client went away while it had nothing to send is ended
    by this, not by a write that never comes.  Polls: reading would take the client's bytes."""
    import select
    sock = getattr(stream, "socket", None)
    if sock is None:
        await trio.sleep_forever()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP | select.POLLERR)
    while True:
        if any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0)):
            return
        await trio.sleep(every)


# --- Docker's multiplexed stream (logs, attach and exec without a terminal) -----------------

STDIN, STDOUT, STDERR = 0, 1, 2


def frame(stream: int, data: bytes) -> bytes:
    """One frame: [stream, 0, 0, 0, size (big endian, 4 bytes)] then the data."""
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data
