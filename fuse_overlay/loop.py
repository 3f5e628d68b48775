"""pyfuse3's request loop without a trip through trio's scheduler per request.

pyfuse3 waits for every request with ``trio.lowlevel.wait_readable(fuse fd)``: the task
parks, trio's run loop goes round (epoll_ctl, epoll_wait, reschedule) and the task wakes.
That costs about 13 µs on our machines, a third of what a whole request costs.

pyfuse3 reaches trio through its module attribute ``pyfuse3.trio`` (``pyfuse3.asyncio``
replaces it the same way).  :func:`install` puts there a module that is trio except for
``wait_readable``: while no request handler is suspended — the usual case, since only a
big copy-up awaits (a worker thread) — nothing else in the trio run has anything to do,
so it blocks in poll(2) on the FUSE fd itself and returns as soon as a request is there.
While a handler is suspended it waits through trio as before, so the copy-up's thread can
hand its result back.  Tasks pyfuse3 spawns get a checkpoint to start.

While requests come fast (a moving average of the waits under 1 ms), the poll first spins
for ``spin_us`` µs (default 100, 0 on a single CPU) before it sleeps: a sleeping daemon
costs every request a wake-up, tens of µs on virtual machines, and the caller waits for it.
Measured here: `tar` of 20000 files 6.3 s -> 3.3 s; a warm `stat` walk 0.104 -> 0.087 s.
An idle or slow-paced mount never spins.

SIGTERM, SIGINT and SIGHUP end the loop either way (:func:`stop_on_signals`): a signal
that arrives during the poll raises out of it; one that arrives while trio waits asks
trio to terminate the session (``TrioToken.run_sync_soon`` is safe in signal handlers).

``handler_started``/``handler_done`` are called by every request handler (fs.py), and
``about_to_block`` before an await that really waits; see ``_Nursery``.

Run pyfuse3 with ``MAIN_ARGS``.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import types
from typing import Any, AsyncIterator

import trio

_CHECKPOINT_EVERY = 1024
MAIN_ARGS = {"min_tasks": 0, "max_tasks": 1 << 30}
# Default of fuse-overlay's -o spin_us; never on a single CPU, where the spin would only
# delay the process that is to send the next request.
SPIN_US = 100 if len(os.sched_getaffinity(0)) > 1 else 0
BUSY_GAP_NS = 1_000_000            # spin only while requests come more often than every 1 ms


class _Woken(Exception):
    """A stop signal arrived while we blocked in poll(2)."""


class _State:
    def __init__(self) -> None:
        self.handlers = 0         # request handlers begun and not finished (suspended, if > 0 here)
        self.stop = False
        self.blocking = False
        self.spawned = False      # pyfuse3 started a worker task that has not run yet
        self.pending: tuple | None = None   # a worker pyfuse3 asked for, not started (_Nursery)
        self.count = 0
        self.spin_ns = SPIN_US * 1000
        self.gap_ns = BUSY_GAP_NS * 8   # a moving average of the waits for a request; starts "idle"
        self.token: trio.lowlevel.TrioToken | None = None
        self.poller: select.poll | None = None
        self.fd = -1


_state = _State()


def handler_started() -> None:
    _state.handlers += 1


def handler_done() -> None:
    _state.handlers -= 1


async def _wait_readable(fd: int) -> None:
    st = _state
    if st.stop:
        _terminate()
        raise trio.ClosedResourceError
    if st.handlers or st.spawned or st.count % _CHECKPOINT_EVERY == 0:
        st.spawned = False
        st.count += 1
        await trio.lowlevel.wait_readable(fd)
        return
    st.count += 1
    if st.fd != fd:
        st.poller, st.fd = select.poll(), fd
        st.poller.register(fd, select.POLLIN)
    try:
        st.blocking = True
        if st.stop:
            raise _Woken
        now = time.perf_counter_ns
        start = now()
        if st.spin_ns and st.gap_ns < BUSY_GAP_NS:
            # Requests are coming fast: wait for the next one awake for a few µs
            # (a sleeping daemon costs the caller a wake-up per request, which on
            # VMs takes tens of µs; see docs/fuse-overlay.md, "Performance").
            poll, deadline = st.poller.poll, start + st.spin_ns  # type: ignore[union-attr]
            while not poll(0):
                if now() > deadline:
                    st.poller.poll()      # type: ignore[union-attr]
                    break
        else:
            st.poller.poll()      # type: ignore[union-attr]
        st.gap_ns = (st.gap_ns * 7 + now() - start) >> 3
    except _Woken:
        st.blocking = False
        _terminate()
        raise trio.ClosedResourceError from None
    finally:
        st.blocking = False


def _terminate() -> None:
    import pyfuse3
    pyfuse3.terminate()


class _Nursery:
    """trio's nursery, but pyfuse3's extra workers start only when a handler is about to block.

    pyfuse3 starts another worker after every request that found no other worker waiting,
    i.e. after each request when one worker serves them all; two workers then hand the read
    lock to each other, a trip through trio's scheduler per request.  The first worker
    (from ``pyfuse3.main``) starts at once; later ones are kept in ``_state.pending`` until
    :func:`about_to_block`.  (pyfuse3 counts them as started: hence ``max_tasks`` is huge,
    and ``min_tasks=0`` lets an extra worker end as soon as another one waits.)"""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._first = True

    def start_soon(self, *args: Any, **kwargs: Any) -> None:
        if self._first:
            self._first = False
            _state.spawned = True
            self._nursery.start_soon(*args, **kwargs)
        else:
            _state.pending = (self._nursery, args, kwargs)


def about_to_block() -> None:
    """A handler is about to wait for something that takes time (a worker thread, a lock
    another handler holds): start a worker so that requests are read meanwhile."""
    if _state.pending is not None:
        nursery, args, kwargs = _state.pending
        _state.pending = None
        _state.spawned = True
        nursery.start_soon(*args, **kwargs)


@contextlib.asynccontextmanager
async def _open_nursery() -> AsyncIterator[_Nursery]:
    async with trio.open_nursery() as nursery:
        yield _Nursery(nursery)


def _on_signal(signum: int, frame: object) -> None:
    _state.stop = True
    if _state.blocking:
        _state.blocking = False   # raise once: a second signal must not land elsewhere
        raise _Woken
    if _state.token is not None:
        _state.token.run_sync_soon(_terminate)


def install(spin_us: int = SPIN_US) -> None:
    """Make pyfuse3 use this loop; call before ``pyfuse3.main``.  ``spin_us``: how long to
    wait awake for the next request while requests come fast (0: never)."""
    import pyfuse3
    _state.spin_ns = spin_us * 1000
    lowlevel = types.SimpleNamespace(**{k: getattr(trio.lowlevel, k) for k in dir(trio.lowlevel)
                                        if not k.startswith("_")})
    lowlevel.wait_readable = _wait_readable
    shim = types.SimpleNamespace(**{k: getattr(trio, k) for k in dir(trio) if not k.startswith("_")})
    shim.lowlevel = lowlevel
    shim.open_nursery = _open_nursery
    pyfuse3.trio = shim  # type: ignore[attr-defined]


def stop_on_signals() -> None:
    """Inside ``trio.run``: SIGTERM/SIGINT/SIGHUP end the FUSE loop."""
    _state.token = trio.lowlevel.current_trio_token()
    _state.stop = False
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
