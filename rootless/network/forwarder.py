"""The process that a port forwarder of our own runs in (``tcp_forward``, ``udp_forward``).

Forked from the engine after the host sockets are bound: it follows the engine's death
(``PR_SET_PDEATHSIG``), takes default signals, joins the container's user namespace (that
gives the right to join the next) and network namespace, and runs ``loop`` — the host
sockets stay in the host's namespace, every socket it opens from then on is inside.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Callable

from ..sandbox import libc


def fork_into_container_net(pid: int, name: str, bound: list[tuple[socket.socket, object]],
                            loop: Callable[[], object]) -> int:
    """Fork, join the namespaces of the container whose PID 1 is ``pid``, run ``loop()``; the child's pid.

    The engine's copies of the ``bound`` sockets are closed here: the child owns them.
    """
    userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            libc.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            libc.set_process_name(name)
            libc.setns(userns, libc.CLONE_NEWUSER)
            libc.setns(netns, libc.CLONE_NEWNET)
            _only_sockets({s.fileno() for s, _ in bound})
            loop()
        except BaseException as e:  # noqa: BLE001 - report, never unwind into the engine's code
            os.write(2, f"rootless: {name}: {e}\n".encode())
        finally:
            os._exit(1)
    os.close(userns)
    os.close(netns)
    for s, _ in bound:
        s.close()
    return child


def _only_sockets(keep: set[int]) -> None:
    """Keep the bound sockets and stdio, nothing else of the engine's: a copy of the container's
    log pipe held here kept the engine's log pump from seeing the output end (``run --rm -p``
    took 10 s more).  Stdin and stdout go to /dev/null, and stderr too when it is a pipe (the
    log's, in a monitor); on a terminal or in a file it stays, for our own error messages."""
    import stat
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    try:
        if stat.S_ISFIFO(os.fstat(2).st_mode):
            os.dup2(null, 2)
    except OSError:
        os.dup2(null, 2)
    libc.close_fds_except(keep)
