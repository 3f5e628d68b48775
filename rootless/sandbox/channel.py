"""A one-way-at-a-time message protocol between the processes that build a container.

Messages are small JSON objects over a ``SOCK_SEQPACKET`` socketpair (one message
per packet, so no framing).  Each has a ``kind``.  ``expect()`` names what it waited
for; an ``error`` message from the other side becomes a ``ChildError`` carrying the
child's own words and exit code, so the user sees the real reason rather than
"child exited 1".  A closed socket reads as ``eof`` — which is how the parent
learns that the container's command was executed (the socket is close-on-exec).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

MAX_PACKET = 65536


class ChildError(Exception):
    def __init__(self, message: str, exit_code: int = 125, kind: str = "sandbox"):
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind


class ProtocolError(Exception):
    pass


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
    data = json.dumps({"kind": kind, **fields}).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def send_error(sock: socket.socket, message: str, exit_code: int = 125, kind: str = "sandbox") -> None:
    try:
        send(sock, "error", message=message, exit_code=exit_code, error_kind=kind)
    except OSError:
        pass  # the parent is gone; nobody is left to tell


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The next message and any file descriptors that came with it; ``{"kind": "eof"}`` at the end."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 4)
    except ConnectionResetError:
        # The peer ended without reading what we sent it (e.g. "network-ready" to a child
        # whose mount failed).  The kernel reports that once, ahead of what the peer sent
        # before it ended (its error): read on.
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        return {"kind": "eof"}, []
    msg = json.loads(data)
    if msg.get("kind") == "error":
        raise ChildError(msg.get("message", "unknown error"), msg.get("exit_code", 125),
                         msg.get("error_kind", "sandbox"))
    return msg, list(fds)


def expect(sock: socket.socket, kind: str) -> tuple[dict[str, Any], list[int]]:
    msg, fds = receive(sock)
    if msg["kind"] != kind:
        got = "the other side closed the channel" if msg["kind"] == "eof" else f"'{msg['kind']}'"
        raise ProtocolError(f"expected '{kind}', got {got}")
    return msg, fds


__all__ = ["ChildError", "ProtocolError", "pair", "send", "send_error", "receive", "expect"]
