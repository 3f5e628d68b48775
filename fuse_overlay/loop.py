"""pyfuse3's request loop, without trio.

pyfuse3 drives its workers with trio, reached through its module attribute ``pyfuse3.trio``
(``pyfuse3.asyncio`` replaces it the same way).  :func:`install` puts there a module of our
own and :func:`run` runs ``pyfuse3.main`` with it: a small scheduler of coroutines with
exactly what pyfuse3 and fs.py use (tasks started by a nursery, a lock, waiting for the FUSE
fd, a function run in a worker thread, the token signals use).  The daemon never imports
trio: that took 60-70 ms of the ~130 ms a standalone mount took before it could answer.

Waiting for requests: while no request handler is suspended — the usual case, since only a
big copy-up awaits (a worker thread) — and no other task is ready, a worker blocks in
poll(2) on the FUSE fd itself and returns as soon as a request is there.  Otherwise it
parks, and the scheduler polls the FUSE fd and the wake-up pipe of worker threads together.

While requests come fast (a moving average of the waits under 1 ms), the poll first spins
for ``spin_us`` µs (default 100, 0 on a single CPU) before it sleeps: a sleeping daemon
costs every request a wake-up, tens of µs on virtual machines, and the caller waits for it.
Measured here: `tar` of 20000 files 6.3 s -> 3.3 s; a warm `stat` walk 0.104 -> 0.087 s.
An idle or slow-paced mount never spins.

SIGTERM, SIGINT and SIGHUP end the loop (:func:`stop_on_signals`): a signal that arrives
while we block in poll(2) raises out of it; one that arrives while Python code runs is
acted on before the next wait.

``handler_started``/``handler_done`` are called by every request handler (fs.py), and
``about_to_block`` before an await that really waits; see ``_Nursery``.  :func:`Lock` and
:func:`run_sync_in_thread` are what handlers await; outside :func:`run` (handlers called
directly under trio, as unit tests do) they are trio's.

Run pyfuse3 with ``MAIN_ARGS``.
"""
from __future__ import annotations

import collections
import os
import select
import signal
import sys
import threading
import time
import types
from typing import Any, Callable, Coroutine

MAIN_ARGS = {"min_tasks": 0, "max_tasks": 1 << 30}
# Default of fuse-overlay's -o spin_us; never on a single CPU, where the spin would only
# delay the process that is to send the next request.
SPIN_US = 100 if len(os.sched_getaffinity(0)) > 1 else 0
BUSY_GAP_NS = 1_000_000            # spin only while requests come more often than every 1 ms


class ClosedResourceError(Exception):
    """The FUSE fd is being closed (pyfuse3 catches it as ``trio.ClosedResourceError``)."""


class _Woken(Exception):
    """A stop signal arrived while we blocked in poll(2)."""


class _Task:
    __slots__ = ("coro", "name", "nursery")

    def __init__(self, coro: Coroutine, name: str, nursery: "_MiniNursery | None") -> None:
        self.coro, self.name, self.nursery = coro, name, nursery


_NOT_DONE = object()


class _State:
    def __init__(self) -> None:
        self.handlers = 0         # request handlers begun and not finished (suspended, if > 0 here)
        self.stop = False
        self.blocking = False
        self.pending: tuple | None = None   # a worker pyfuse3 asked for, not started (_Nursery)
        self.spin_ns = SPIN_US * 1000
        self.gap_ns = BUSY_GAP_NS * 8   # a moving average of the waits for a request; starts "idle"
        self.poller: select.poll | None = None
        self.fd = -1
        # the scheduler (run)
        self.running = False
        self.current: _Task | None = None
        self.ready: collections.deque = collections.deque()   # (task, value, exception)
        self.fd_waiters: dict[int, list[_Task]] = {}
        self.soon: collections.deque = collections.deque()    # callbacks (run_sync_soon)
        self.threads = 0
        self.done: collections.deque = collections.deque()    # (task, value, exception) from threads
        self.wake_r = self.wake_w = -1
        self.main_result: object = _NOT_DONE     # the main task's exception (None: it returned)


_state = _State()


def handler_started() -> None:
    _state.handlers += 1


def handler_done() -> None:
    _state.handlers -= 1


@types.coroutine
def _park() -> Any:
    """Suspend the current task; whoever registered it resumes it (``_state.ready``)."""
    return (yield)


# ---------------------------------------------------------------- the scheduler

def _step(task: _Task, value: Any, exc: BaseException | None) -> None:
    st = _state
    st.current = task
    try:
        if exc is not None:
            task.coro.throw(exc)
        else:
            task.coro.send(value)
    except StopIteration:
        _finished(task, None)
    except BaseException as e:  # noqa: BLE001 - handed to the nursery (or run's caller)
        _finished(task, e)
    finally:
        st.current = None


def _finished(task: _Task, error: BaseException | None) -> None:
    n = task.nursery
    if n is None:            # the main task
        _state.main_result = error
        return
    n.children.discard(task)
    if error is not None and n.error is None:
        n.error = error
    if n.waiter is not None and (not n.children or n.error is not None):
        waiter, n.waiter = n.waiter, None
        _state.ready.append((waiter, None, None))


class _MiniNursery:
    def __init__(self) -> None:
        self.children: set[_Task] = set()
        self.error: BaseException | None = None
        self.waiter: _Task | None = None

    def start_soon(self, fn: Callable[..., Coroutine], *args: Any, name: str | None = None) -> None:
        task = _Task(fn(*args), name or getattr(fn, "__name__", "task"), self)
        self.children.add(task)
        _state.ready.append((task, None, None))


class _OpenNursery:
    async def __aenter__(self) -> _MiniNursery:
        self.nursery = _MiniNursery()
        return self.nursery

    async def __aexit__(self, *exc: Any) -> bool:
        n = self.nursery
        while n.children and n.error is None:
            n.waiter = _state.current
            await _park()
        if n.error is not None:
            for task in list(n.children):
                task.coro.close()
            raise n.error
        return False


class _MiniLock:
    """trio.Lock's use here: ``async with``, ``locked()``; handed to waiters in order."""

    def __init__(self) -> None:
        self._held = False
        self._waiters: collections.deque = collections.deque()

    def locked(self) -> bool:
        return self._held

    async def acquire(self) -> None:
        if not self._held:
            self._held = True
            return
        self._waiters.append(_state.current)
        await _park()          # release() handed the lock over to us

    def release(self) -> None:
        if self._waiters:
            _state.ready.append((self._waiters.popleft(), None, None))
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: Any) -> None:
        self.release()


class _Token:
    @staticmethod
    def run_sync_soon(fn: Callable[[], Any]) -> None:
        _state.soon.append(fn)      # deque.append: safe in a signal handler


class _CurrentTask:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _current_task() -> _CurrentTask:
    task = _state.current
    return _CurrentTask(task.name if task is not None else "main")


def _current_token() -> _Token:
    return _Token()


async def _sched_wait_readable(fd: int) -> None:
    _state.fd_waiters.setdefault(fd, []).append(_state.current)  # type: ignore[arg-type]
    await _park()


def _notify_closing(fd: int) -> None:
    for task in _state.fd_waiters.pop(fd, []):
        _state.ready.append((task, None, ClosedResourceError()))
    if _state.fd == fd:
        _state.poller, _state.fd = None, -1


def Lock() -> Any:  # noqa: N802 - a factory named like the class it makes
    """A lock for handlers: ours inside :func:`run`, trio's outside it."""
    if _state.running:
        return _MiniLock()
    import trio
    return trio.Lock()


async def run_sync_in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread; other requests are served meanwhile."""
    st = _state
    if not st.running:
        import trio
        return await trio.to_thread.run_sync(fn, *args)
    task = st.current

    def work() -> None:
        try:
            item = (task, fn(*args), None)
        except BaseException as e:  # noqa: BLE001 - re-raised in the task
            item = (task, None, e)
        st.done.append(item)
        try:
            os.write(st.wake_w, b"x")
        except OSError:
            pass

    st.threads += 1
    threading.Thread(target=work, name="fuse-overlay-copy", daemon=True).start()
    return await _park()


def _collect_threads() -> None:
    st = _state
    try:
        while os.read(st.wake_r, 4096):
            pass
    except BlockingIOError:
        pass
    while st.done:
        st.threads -= 1
        st.ready.append(st.done.popleft())


def run(async_fn: Callable[[], Coroutine]) -> None:
    """Run ``async_fn()`` (pyfuse3's main) to its end with this module's scheduler."""
    st = _state
    st.wake_r, st.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    st.running = True
    st.main_result = _NOT_DONE
    main = _Task(async_fn(), "main", None)
    st.ready.append((main, None, None))
    try:
        while st.main_result is _NOT_DONE:
            if st.soon:
                st.soon.popleft()()
                continue
            if st.ready:
                _step(*st.ready.popleft())
                continue
            if st.stop and st.fd_waiters:
                _terminate()
                continue
            fds = [fd for fd, waiters in st.fd_waiters.items() if waiters]
            if not fds and not st.threads:
                raise RuntimeError("fuse-overlay: every task waits and nothing can wake one")
            poller = select.poll()
            poller.register(st.wake_r, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                st.blocking = True
                events = poller.poll()
                st.blocking = False      # inside the try: a signal just before raises here
            except _Woken:
                events = []
            st.blocking = False
            for fd, _ev in events:
                if fd == st.wake_r:
                    _collect_threads()
                else:
                    for task in st.fd_waiters.pop(fd, []):
                        st.ready.append((task, None, None))
        if isinstance(st.main_result, BaseException):
            raise st.main_result
    finally:
        st.running = False
        st.ready.clear()
        st.fd_waiters.clear()
        os.close(st.wake_r)
        os.close(st.wake_w)


# ------------------------------------------------------- waiting for requests

async def _wait_readable(fd: int) -> None:
    st = _state
    if st.stop:
        _terminate()
        raise ClosedResourceError
    if st.handlers or st.ready or st.soon or st.threads or not st.running:
        await _sched_wait_readable(fd)
        return
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
        st.blocking = False      # inside the try: a signal just before raises here
        st.gap_ns = (st.gap_ns * 7 + now() - start) >> 3
    except _Woken:
        st.blocking = False
        _terminate()
        raise ClosedResourceError from None
    finally:
        st.blocking = False      # (already False unless poll(2) itself failed)


def _terminate() -> None:
    import pyfuse3
    pyfuse3.terminate()


class _Nursery:
    """A nursery whose extra workers start only when a handler is about to block.

    pyfuse3 starts another worker after every request that found no other worker waiting,
    i.e. after each request when one worker serves them all; two workers then hand the read
    lock to each other, a trip through the scheduler per request.  The first worker (from
    ``pyfuse3.main``) starts at once; later ones are kept in ``_state.pending`` until
    :func:`about_to_block`.  (pyfuse3 counts them as started: hence ``max_tasks`` is huge,
    and ``min_tasks=0`` lets an extra worker end as soon as another one waits.)"""

    def __init__(self, nursery: _MiniNursery) -> None:
        self._nursery = nursery
        self._first = True

    def start_soon(self, *args: Any, **kwargs: Any) -> None:
        if self._first:
            self._first = False
            self._nursery.start_soon(*args, **kwargs)
        else:
            _state.pending = (self._nursery, args, kwargs)


def about_to_block() -> None:
    """A handler is about to wait for something that takes time (a worker thread, a lock
    another handler holds): start a worker so that requests are read meanwhile."""
    if _state.pending is not None:
        nursery, args, kwargs = _state.pending
        _state.pending = None
        nursery.start_soon(*args, **kwargs)


class _WrappedOpenNursery(_OpenNursery):
    async def __aenter__(self) -> _Nursery:  # type: ignore[override]
        return _Nursery(await super().__aenter__())


def _on_signal(signum: int, frame: object) -> None:
    _state.stop = True
    if _state.blocking:
        _state.blocking = False   # raise once: a second signal must not land elsewhere
        raise _Woken
    _state.soon.append(_terminate)


def install(spin_us: int = SPIN_US) -> None:
    """Make pyfuse3 use this loop; call before :func:`run` of ``pyfuse3.main``.  ``spin_us``:
    how long to wait awake for the next request while requests come fast (0: never)."""
    import pyfuse3
    _state.spin_ns = spin_us * 1000
    lowlevel = types.SimpleNamespace(
        wait_readable=_wait_readable, notify_closing=_notify_closing,
        current_task=_current_task, current_trio_token=_current_token)
    shim = types.SimpleNamespace(
        lowlevel=lowlevel, open_nursery=_WrappedOpenNursery, Lock=_MiniLock,
        ClosedResourceError=ClosedResourceError)
    pyfuse3.trio = shim  # type: ignore[attr-defined]


def stop_on_signals() -> None:
    """Inside :func:`run`: SIGTERM/SIGINT/SIGHUP end the FUSE loop."""
    _state.stop = False
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)


def import_pyfuse3() -> Any:
    """``import pyfuse3`` without importing trio (pyfuse3 imports it at its top but uses it
    only through ``pyfuse3.trio``, which :func:`install` replaces), nor importlib.metadata
    (imported only for ``pyfuse3.__version__``; with pathlib, email, zipfile... 10-25 ms):
    placeholders stand in for both while pyfuse3 loads, then leave ``sys.modules``."""
    if "pyfuse3" in sys.modules or "trio" in sys.modules:
        import pyfuse3
        return pyfuse3
    stubs = {"trio": types.ModuleType("trio")}
    if "importlib.metadata" not in sys.modules:
        meta = types.ModuleType("importlib.metadata")
        meta.PackageNotFoundError = type("PackageNotFoundError", (ModuleNotFoundError,), {})  # type: ignore[attr-defined]
        meta.version = _dist_version  # type: ignore[attr-defined]
        stubs["importlib.metadata"] = meta
    sys.modules.update(stubs)
    try:
        import pyfuse3
    finally:
        for name in stubs:
            del sys.modules[name]
    return pyfuse3


def _dist_version(name: str) -> str:
    """The version in the name of ``NAME-VERSION.dist-info`` on sys.path (what
    importlib.metadata.version reads, for the one use above)."""
    prefix = name.replace("-", "_").lower() + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            if n.lower().startswith(prefix) and n.endswith(".dist-info"):
                return n[len(prefix):-len(".dist-info")]
    raise sys.modules["importlib.metadata"].PackageNotFoundError(name)
