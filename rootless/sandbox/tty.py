"""Relaying the user's terminal to the container's pty (``-t``).

The user's terminal is put in raw mode (when stdin is one and ``-i`` was given) so
that keys such as Ctrl-C reach the container's line discipline, as with Docker; its
window size is copied to the pty at start and on every SIGWINCH.  The relay ends when
the pty's last user closes it (reads give EIO) and always restores the terminal.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import sys
import termios
import tty as _tty


def winsize(fd: int) -> bytes | None:
    """The window size of terminal ``fd`` (a struct winsize), or None when it is not a terminal."""
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def _copy_winsize(src: int, dst: int) -> None:
    size = winsize(src)
    if size:
        try:
            fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
        except OSError:
            pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def relay(master: int, forward_input: bool, tee=None) -> None:
    """Copy between the user's terminal and ``master`` until the container closes its pty; closes ``master``.
    ``tee``: also given each chunk of the container's output (its log), and None at the end."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    in_tty = forward_input and os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if in_tty else None
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: None)
    try:
        if in_tty:
            _tty.setraw(stdin, termios.TCSANOW)   # no flush: what was typed already must reach the container
        if os.isatty(stdin):
            _copy_winsize(stdin, master)
        readers = [master, wake_r] + ([stdin] if forward_input else [])
        while True:
            ready, _, _ = select.select(readers, [], [])
            if wake_r in ready:
                if signal.SIGWINCH in os.read(wake_r, 64) and os.isatty(stdin):
                    _copy_winsize(stdin, master)
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    break
                if tee is not None:
                    tee(data)
                _write_all(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 65536)
                if data:
                    _write_all(master, data)
                else:
                    readers.remove(stdin)  # stdin closed: send EOF as the terminal would
                    _write_all(master, b"\x04")
    finally:
        if tee is not None:
            tee(None)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        os.close(master)
