"""The terminal of a detached container started with ``-i`` and/or ``-t``, and ``attach`` to it.

The monitor holds the container's input end — the pty master with ``-t``, else the write end
of the pipe that is the container's stdin (``-i``) — and listens on ``RUNTIME/ID16/attach.sock``.
Output goes to the log as always and, from the moment they attach, to every client.

Protocol (SOCK_STREAM, both ways): frames of a 1-byte kind, a 4-byte big-endian length and
the data.  Client to monitor: ``IN`` (input bytes), ``SIZE`` (a struct winsize: the pty is
resized, which signals SIGWINCH to the container), ``EOF`` (the input has ended: without
``-t`` the container's stdin is closed, as Docker's ``StdinOnce``), ``REPLAY`` (send the output
written before this client connected: the API's attach made before the container started).
Monitor to client: ``OUT``/``ERR`` (output as it came), ``REPLAY`` (the answer: the output from
the container's start until the client connected, as much as ``BACKLOG`` holds).  When the
container ends the monitor closes the connections; the client then reads the exit status from
the record.  The client detaches on Ctrl-P Ctrl-Q, as Docker's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import termios
import threading

IN, SIZE, OUT, ERR, EOF, REPLAY = b"i", b"w", b"o", b"e", b"c", b"r"
BACKLOG = 64 << 10                 # the start of the output kept for a client that asks (REPLAY)
DETACH_KEYS = b"\x10\x11"          # Ctrl-P Ctrl-Q
DEFAULT_WINSIZE = struct.pack("HHHH", 24, 80, 0, 0)


def socket_path(run_dir: str) -> str:
    return os.path.join(run_dir, "attach.sock")


def frame(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack(">I", len(data)) + data


class Frames:
    """Reassembles frames from a stream socket."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 5:
            size = struct.unpack(">I", self.buf[1:5])[0]
            if len(self.buf) < 5 + size:
                break
            out.append((self.buf[:1], self.buf[5:5 + size]))
            self.buf = self.buf[5 + size:]
        return out


class Console:
    """The monitor's side (see the module's docstring)."""

    def __init__(self, run_dir: str, tty: bool):
        self.tty = tty
        self.input = -1                   # the pty master, or the write end of stdin's pipe
        self.clients: dict[socket.socket, Frames] = {}
        self.offsets: dict[socket.socket, int] = {}     # output bytes sent before each client came
        self.total = 0
        self.backlog = bytearray()        # the first BACKLOG bytes of output, until a REPLAY asked for them
        self.keep_backlog = True
        self.lock = threading.Lock()
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self.path = socket_path(run_dir)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC)
        self.thread: threading.Thread | None = None

    def stdin_pipe(self) -> None:
        """``-i`` without ``-t``: make our fd 0 a pipe's read end for the container to inherit."""
        r, w = os.pipe2(os.O_CLOEXEC)
        os.dup2(r, 0)                     # dup2 clears close-on-exec on fd 0
        os.close(r)
        self.input = w

    def started(self, master: int | None) -> None:
        """The container runs; ``master`` is its pty master with ``-t``."""
        if master is not None:
            self.input = master
        else:                             # fd 0 back to /dev/null: the container holds the pipe
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        from ..sandbox.spawn import quiet_thread
        self.thread = quiet_thread(self._serve)

    def broadcast(self, stream: str, data: bytes) -> None:
        """``stream``'s output (``stdout``/``stderr``) to every attached client."""
        kind = ERR if stream == "stderr" else OUT
        with self.lock:
            self.total += len(data)
            if self.keep_backlog and kind == OUT:
                self.backlog += data[:BACKLOG - len(self.backlog)]
            for c in list(self.clients):
                try:
                    c.sendall(frame(kind, data))
                except OSError:
                    self._drop(c)

    def _drop(self, c: socket.socket) -> None:
        self.clients.pop(c, None)
        self.offsets.pop(c, None)
        c.close()

    def _serve(self) -> None:
        while True:
            with self.lock:
                watched = [self.listener, self.wake_r, *self.clients]
            ready, _, _ = select.select(watched, [], [])
            if self.wake_r in ready:
                return
            for r in ready:
                if r is self.listener:
                    c, _ = self.listener.accept()
                    with self.lock:
                        self.clients[c] = Frames()
                        self.offsets[c] = self.total
                    continue
                try:
                    data = r.recv(65536)
                except OSError:
                    data = b""
                with self.lock:
                    if not data:
                        self._drop(r)
                        continue
                    frames = self.clients[r].feed(data)
                for kind, payload in frames:
                    if kind == REPLAY:
                        self._replay(r)
                    else:
                        self._input(kind, payload)

    def _replay(self, c: socket.socket) -> None:
        """What was written before ``c`` connected (from the start, as far as the backlog goes);
        what came after has been sent to it already, and the client puts this first."""
        with self.lock:
            if c not in self.clients:
                return
            data = bytes(self.backlog[:self.offsets.get(c, 0)])
            self.backlog, self.keep_backlog = bytearray(), False   # one attach waits for the start
            try:
                c.sendall(frame(REPLAY, data))
            except OSError:
                self._drop(c)

    def _input(self, kind: bytes, payload: bytes) -> None:
        try:
            if kind == EOF and not self.tty and self.input >= 0:
                os.close(self.input)      # the container reads EOF
                self.input = -1
            elif kind == IN and self.input >= 0:
                while payload:
                    payload = payload[os.write(self.input, payload):]
            elif kind == SIZE and self.tty and len(payload) == 8:
                fcntl.ioctl(self.input, termios.TIOCSWINSZ, payload)
        except OSError as e:
            if e.errno not in (errno.EIO, errno.EPIPE, errno.EBADF):
                raise

    def close(self) -> None:
        """The container has ended: clients see EOF."""
        os.write(self.wake_w, b"x")
        if self.thread is not None:
            self.thread.join(5)
        with self.lock:
            for c in list(self.clients):
                self._drop(c)
        self.listener.close()
        for fd in (self.wake_r, self.wake_w, self.input):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        try:
            os.unlink(self.path)
        except OSError:
            pass

