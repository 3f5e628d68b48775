"""``rootless unshare``: a command in the user namespace rootless uses, as its root."""

from __future__ import annotations

import os
import signal
import socket
from typing import NoReturn

from . import idmap
from .container import FORWARDED_SIGNALS
from .userns import fork_into_userns, wait


def unshare(command: list[str]) -> int:
    maps = idmap.detect()

    def child(sock: socket.socket) -> NoReturn:
        os.environ["ROOTLESS_UNSHARE"] = "1"
        sock.close()
        try:
            os.execvp(command[0], command)
        except OSError as e:
            os.write(2, f"rootless: exec {command[0]}: {e.strerror}\n".encode())
            os._exit(127 if e.errno == 2 else 126)

    pid, sock = fork_into_userns(maps, child, name="rootless-unshare")
    sock.close()
    old = {s: signal.signal(s, lambda n, _f: os.kill(pid, n)) for s in FORWARDED_SIGNALS
           if s != signal.SIGINT}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal sends it to both
    try:
        return wait(pid)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


__all__ = ["unshare"]
