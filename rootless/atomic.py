"""Crash-safe file changes, shared by every writer (the image store, ``save -o``, auth.json).

A file is written under a temporary name in the same filesystem, flushed to disk (fsync),
then renamed over its final name, and the directory is flushed so that the rename itself
survives a crash: a reader sees the old file or the new one, never a part.

Temporary names carry their writer (``KIND-wPID-START-RANDOM``: the pid and its start time,
so a reused pid is not taken for the writer): ``stale`` tells a leftover of a killed writer
from a file still being written, and only leftovers are ever removed.

``step`` is a test hook: with ``ROOTLESS_TEST_CRASH_AFTER=N`` in the environment the process
kills itself (SIGKILL) at its N-th step, so the tests can stop a command between any two of
its changes to the store.  Without that variable it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from typing import BinaryIO, Iterator

_steps = 0
_NAME = re.compile(r"-w(\d+)-(\d+)-[0-9a-f]+")


def step(what: str = "") -> None:
    """A point between two changes of the store (the test hook above; otherwise nothing)."""
    global _steps
    crash = os.environ.get("ROOTLESS_TEST_CRASH_AFTER")   # read now: a command handed to the fork
    if not crash:                                          # server (cli/served.py) has its caller's
        return
    _steps += 1
    if _steps == int(crash):
        log = os.environ.get("ROOTLESS_TEST_CRASH_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{_steps} {what}\n")
        os.kill(os.getpid(), signal.SIGKILL)


def start_time(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot); 0 if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat.rsplit(b")", 1)[1].split()
    return int(fields[19]) if fields[0] != b"Z" else 0


_me: tuple[int, int] | None = None


def temp_name(kind: str) -> str:
    """A fresh temporary name that says who is writing it."""
    global _me
    if _me is None or _me[0] != os.getpid():
        _me = (os.getpid(), start_time(os.getpid()))
    return f"{kind}-w{_me[0]}-{_me[1]}-{os.urandom(6).hex()}"


def stale(name: str) -> bool:
    """Whether temporary file ``name`` (made by ``temp_name``) was left by a writer that is gone.
    A name not made by ``temp_name`` is never stale: it is not ours to judge."""
    m = _NAME.search(name)
    if not m:
        return False
    pid, start = int(m.group(1)), int(m.group(2))
    return start_time(pid) != start


def has_writer(name: str) -> bool:
    """Whether ``name`` was made by ``temp_name`` (it names its writer)."""
    return _NAME.search(name) is not None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: str, path: str) -> None:
    """Rename the complete file or directory ``tmp`` to ``path`` and make the rename durable."""
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
    step(f"rename {os.path.basename(path)}")


@contextlib.contextmanager
def writing(path: str, tmpdir: str | None = None, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A file to write that becomes ``path`` when the block ends without error (and is removed
    when it fails).  ``tmpdir``: where the temporary file is made (default: beside ``path``;
    it must be on the same filesystem)."""
    tmp = os.path.join(tmpdir or os.path.dirname(path) or ".",
                       temp_name("." + os.path.basename(path) if tmpdir is None else "file"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            step(f"create {os.path.basename(path)}")
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file(path: str, data: bytes, tmpdir: str | None = None, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with writing(path, tmpdir, mode) as f:
        f.write(data)


__all__ = ["step", "temp_name", "stale", "has_writer", "publish", "writing", "write_file", "fsync_dir", "start_time"]
