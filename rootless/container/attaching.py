"""``attach`` to a container's terminal: the client side of console.py's protocol."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import termios
import tty as _tty

from .console import DETACH_KEYS, ERR, IN, SIZE, Frames, frame
from ..sandbox.tty import winsize


def attach_console(path: str, tty: bool, proxy_pid: int) -> bool:
    """Relay our stdin/stdout to the container's terminal at ``path`` until it ends (False) or
    the user types Ctrl-P Ctrl-Q (True).  Without ``-t``, SIGINT/SIGTERM/SIGHUP go to
    ``proxy_pid`` (0: not forwarded); with it, the terminal is raw and keys are the pty's."""
    conn = connect_console(path)
    stdin, stdout, stderr = sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()
    in_tty = tty and os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if in_tty else None
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    handlers = {signal.SIGWINCH: lambda *_: None}
    if proxy_pid and not tty:
        def forward(signum: int, _frame: object) -> None:
            try:
                os.kill(proxy_pid, signum)
            except ProcessLookupError:
                pass
        handlers.update({s: forward for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)})
    old = {s: signal.signal(s, h) for s, h in handlers.items()}
    frames, previous = Frames(), b""
    try:
        if in_tty:
            _tty.setraw(stdin, termios.TCSANOW)   # no flush: what was typed already must reach the container
        if tty and winsize(stdin):
            conn.sendall(frame(SIZE, winsize(stdin)))
        readers = [conn, stdin, wake_r]
        while True:
            ready, _, _ = select.select(readers, [], [])
            if wake_r in ready:
                if signal.SIGWINCH in os.read(wake_r, 64) and tty and winsize(stdin):
                    conn.sendall(frame(SIZE, winsize(stdin)))
            if conn in ready:
                data = conn.recv(65536)
                if not data:
                    return False                      # the container ended
                for kind, payload in frames.feed(data):
                    _write_all(stderr if kind == ERR else stdout, payload)
            if stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    readers.remove(stdin)             # our input ended; keep following the output
                    continue
                keys = previous + data
                if DETACH_KEYS in keys:
                    before = keys[:keys.index(DETACH_KEYS)][len(previous):]
                    if before:
                        conn.sendall(frame(IN, before))
                    return True
                if data.endswith(DETACH_KEYS[:1]):    # maybe the first of the two keys
                    previous = DETACH_KEYS[:1]
                    data = data[:-1]
                elif previous:
                    data, previous = previous + data, b""
                if data:
                    conn.sendall(frame(IN, data))
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            if tty:
                _write_all(stdout, b"\r\n")
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        conn.close()


def connect_console(path: str) -> socket.socket:
    """A connection to the container's terminal at ``path`` (console.py's protocol)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.connect(path)
    except OSError as e:
        conn.close()
        from ..errors import RootlessError
        raise RootlessError(f"the container's terminal at {path} does not answer ({e.strerror}): its monitor "
                            "has ended; 'rootless ps -a' shows the container's state") from None
    return conn


def send_console(path: str, kind: bytes, data: bytes) -> None:
    """One frame to the container's terminal (a new window size, say)."""
    with connect_console(path) as conn:
        conn.sendall(frame(kind, data))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
