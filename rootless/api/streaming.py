"""Engine work whose output is a stream (pull and push progress, a saved image, a tar of a
container's files), run in a thread of its own and read by the trio side as it comes; and a
request body spooled to a file for the engine calls that read one (load, build, put archive).

``from_thread(work)``: ``work(emit)`` runs in a new thread; each ``emit(item)`` is yielded by
the async iterator returned.  The channel between them is bounded: a slow client slows the
work down instead of filling memory.  When the client goes away the iterator is closed: the
next ``emit`` raises ``Disconnected`` in the worker, which ends the work (its ``finally``
clauses free what it holds).  The work's exception, if any, is raised by the iterator after
the items emitted before it.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any, AsyncIterator, BinaryIO, Callable

import trio

from .http import Request

CHUNK = 64 << 10


class Disconnected(Exception):
    """The client stopped reading: the worker's next ``emit`` raises this."""


async def from_thread(work: Callable[[Callable[[Any], None]], Any], buffer: int = 16) -> AsyncIterator[Any]:
    send, receive = trio.open_memory_channel(buffer)
    token = trio.lowlevel.current_trio_token()
    gone = threading.Event()

    def emit(item: Any) -> None:
        if gone.is_set():
            raise Disconnected()
        try:
            trio.from_thread.run(send.send, ("item", item), trio_token=token)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError, trio.Cancelled):
            gone.set()
            raise Disconnected() from None

    def finished(outcome) -> None:
        if gone.is_set():
            return
        try:
            token.run_sync_soon(lambda: trio.lowlevel.spawn_system_task(_deliver, send, outcome))
        except trio.RunFinishedError:
            pass

    trio.lowlevel.start_thread_soon(lambda: work(emit), finished)
    try:
        async with receive:
            async for kind, value in receive:
                if kind == "item":
                    yield value
                else:
                    value.unwrap()
                    return
    finally:
        gone.set()


async def _deliver(send, outcome) -> None:
    """The work's end, queued after its last items (waits while the channel is full)."""
    try:
        await send.send(("end", outcome))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class ChannelWriter(io.RawIOBase):
    """A file the engine writes (a tar) whose bytes go to ``emit``."""

    def __init__(self, emit: Callable[[Any], None]):
        self.emit = emit

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        if data:
            self.emit(data)
        return len(data)


def writer(emit: Callable[[Any], None]) -> BinaryIO:
    """A buffered file over ``emit`` (chunks of about 64 KiB); close it to send the rest."""
    return io.BufferedWriter(ChannelWriter(emit), CHUNK)


async def bytes_from_thread(work: Callable[[BinaryIO], Any]) -> AsyncIterator[bytes]:
    """The bytes ``work(out)`` writes to ``out``.  A failure once bytes have gone (the status
    line with them) cannot be answered: it is logged and the connection broken off, so that
    the client sees a cut response, never a short archive that looks whole."""
    def run(emit: Callable[[Any], None]) -> None:
        out = writer(emit)
        try:
            work(out)
        finally:
            try:
                out.close()
            except Disconnected:
                pass
    sent = False
    try:
        async for chunk in from_thread(run):
            sent = True
            yield chunk
    except Disconnected:
        return
    except Exception as e:  # noqa: BLE001 - told in the log; the client sees the cut
        if not sent:
            raise                   # nothing went yet: an HTTP error (see first_then_rest)
        from .server import log
        log(f"a streamed answer was cut short: {e}")
        raise trio.BrokenResourceError(str(e)) from None


async def spool(req: Request, directory: str, name: str = "body") -> str:
    """The request's body in a new file under ``directory`` (the caller removes it)."""
    path = os.path.join(directory, name)
    f = await trio.open_file(path, "wb")
    async with f:
        async for chunk in req.chunks():
            await f.write(chunk)
    return path


class BodyReader(io.RawIOBase):
    """The request's body as a file the engine reads in its worker thread (``req.engine``):
    each read fetches the next chunk from the connection through the trio thread, so a large
    upload (``docker cp`` into a container) is never held in memory or spooled to disk."""

    def __init__(self, req: Request):
        self.chunks = req.chunks()
        self.pending = b""
        self.ended = False

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes | None:
        try:
            return await self.chunks.__anext__()
        except StopAsyncIteration:
            return None

    def readinto(self, b) -> int:
        while not self.pending and not self.ended:
            data = trio.from_thread.run(self._next)
            if data is None:
                self.ended = True
            else:
                self.pending = data
        n = min(len(b), len(self.pending))
        b[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


async def first_then_rest(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``items``, its first one awaited now: a failure before it is raised here (answered
    as an HTTP error, the status line not sent yet); the rest is iterated later."""
    it = items.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        async def nothing() -> AsyncIterator[Any]:
            return
            yield
        return nothing()
    except Exception:
        await it.aclose()
        raise

    async def rest() -> AsyncIterator[Any]:
        try:
            yield first
            async for item in it:
                yield item
        finally:
            await it.aclose()
    return rest()
