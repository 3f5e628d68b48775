"""Processes named in container records, signalled through pidfds.

A record keeps a pid and the process's start time (``/proc/PID/stat`` field 22, in clock
ticks since boot).  ``open_pid`` opens a pidfd and then checks the start time: the pidfd pins
the process it was opened on, so if the start time matches, every signal sent through it
reaches that process and never one that reused the pid since.
"""

from __future__ import annotations

import os
import select
import signal
import time

from ..errors import UsageError


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def boot_id() -> str:
    """This machine's current boot (``/proc/sys/kernel/random/boot_id``): a pid and its start
    time name a process only on the machine, and in the boot, that recorded them (a store on
    a shared filesystem holds records of other nodes' containers)."""
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot_id = f.read().strip()
        except OSError:
            _boot_id = ""
    return _boot_id


_boot_id: str | None = None


def node() -> str:
    """This machine's name (``uname -n``): with ``boot_id``, whose pids a record names."""
    return os.uname().nodename


def start_time(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot); 0 if there is no such process."""
    fields = _stat(pid) if pid > 0 else None
    return int(fields[19]) if fields else 0


def is_ancestor(pid: int, start: int = 0) -> bool:
    """Whether ``pid`` (started at ``start``, when given) is our parent, or its parent, ...:
    a process waiting for us, which must not be stopped or killed by us."""
    cur = os.getppid()
    while cur > 1:
        fields = _stat(cur)
        if not fields:
            return False
        if cur == pid and (not start or int(fields[19]) == start):
            return True
        cur = int(fields[1])
    return False


def open_pid(pid: int, start: int = 0) -> int | None:
    """A pidfd for ``pid`` if it runs (not a zombie) and, when ``start`` is given, started then."""
    if pid <= 0:
        return None
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    fields = _stat(pid)
    if not fields or fields[0] == "Z" or (start and int(fields[19]) != start):
        os.close(fd)
        return None
    return fd


def alive(pid: int, start: int = 0) -> bool:
    fd = open_pid(pid, start)
    if fd is None:
        return False
    os.close(fd)
    return True


def send(fd: int, sig: int) -> bool:
    """Signal the process of pidfd ``fd``; False if it has ended."""
    try:
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False


def signal_pid(pid: int, start: int, sig: int) -> bool:
    """Signal ``pid`` if it is still the process that started at ``start``; False if it is gone."""
    fd = open_pid(pid, start)
    if fd is None:
        return False
    try:
        return send(fd, sig)
    finally:
        os.close(fd)


def wait_fd(fd: int, timeout: float) -> bool:
    """Wait until the process of pidfd ``fd`` has ended (a pidfd polls readable then)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(max(0, int(timeout * 1000))))


def wait_gone(pid: int, start: int, timeout: float) -> bool:
    fd = open_pid(pid, start)
    if fd is None:
        return True
    try:
        return wait_fd(fd, timeout)
    finally:
        os.close(fd)


def _children_of(parents: set[int]) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[1]) in parents and fields[0] != "Z":
                out.append(int(entry))
    return out


def kill_tree(pid: int, start: int, timeout: float = 10.0) -> bool:
    """SIGKILL ``pid`` and all its descendants; True once all have ended.

    Top-down, each descendant stopped (SIGSTOP) as soon as it is found: one killed before its
    children would have them reparented away from the tree (to a subreaper or init), out of
    sight, and a stopped one forks no more.  ``pid`` itself is not stopped (its parent, a shell
    or su, would see it stop); a child it forks after the last look dies with it
    (PR_SET_PDEATHSIG: everything rootless forks carries it).  Every process is held by a pidfd
    from the moment it is found, so no signal reaches a process that reused a pid."""
    root = open_pid(pid, start)
    if root is None:
        return True
    fds = {pid: root}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            new = [c for c in _children_of(set(fds)) if c not in fds]
            for c in new:
                if c == os.getpid():        # a remover forked by the owner itself: never stop us
                    continue
                fd = open_pid(c)
                if fd is None:
                    continue
                fields = _stat(c)
                if not fields or int(fields[1]) not in fds:   # the pid was reused meanwhile
                    os.close(fd)
                    continue
                fds[c] = fd
                send(fd, signal.SIGSTOP)
            if not new and all((_stat(p) or ["X"])[0] in "TtZX" for p in fds if p != pid):
                break       # all stopped (or gone), and none has a child we do not hold
            time.sleep(0.002)
        for fd in fds.values():
            send(fd, signal.SIGKILL)
        return all(wait_fd(fd, max(0.0, deadline - time.monotonic())) for fd in fds.values())
    finally:
        for fd in fds.values():
            os.close(fd)


def parse_signal(raw: str) -> int:
    """A signal named as Docker's flags name it: TERM, SIGTERM, term or 15."""
    name = raw.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"invalid signal '{raw}': use a name such as TERM, KILL, HUP or a number") from None
