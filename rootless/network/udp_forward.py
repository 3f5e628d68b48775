"""A UDP port forwarder of our own: host sockets outside, per-client sockets inside.

slirp4netns drops replies to forwarded UDP datagrams (they are addressed to its host
alias, which ``--disable-host-loopback`` blocks) and this pasta loses them when the
host and container ports differ, so UDP ports are forwarded here for both stacks:

1. the engine binds every published UDP port on the host (so a busy port fails early),
2. forks this forwarder, which joins the container's user namespace (needed for the
   next step) and then its network namespace; the host sockets stay in the host's
   namespace, every socket it opens from then on is inside the container's,
3. relays each client's datagrams through a connected socket of its own inside the
   container (to the container's address), and the replies back to that client.
   Client sockets idle for ``IDLE`` seconds are closed.

It dies with the engine (``PR_SET_PDEATHSIG``) or on SIGTERM.
"""

from __future__ import annotations

import selectors
import socket
import time
from typing import NoReturn

from .forwarder import fork_into_container_net
from .ports import PortMapping

IDLE = 120.0


def bind_host_sockets(mappings: list[PortMapping]) -> list[tuple[socket.socket, PortMapping]]:
    out = []
    for m in mappings:
        family = socket.AF_INET6 if ":" in m.host_ip else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((m.host_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), m.host_port))
        s.setblocking(False)
        out.append((s, m))
    return out


def start(pid: int, target_ip: str, bound: list[tuple[socket.socket, PortMapping]]) -> int:
    """Fork the forwarder for the container whose PID 1 is ``pid``; its pid."""
    return fork_into_container_net(pid, "rootless-udpfwd", bound, lambda: _relay(target_ip, bound))


def _relay(target_ip: str, bound: list[tuple[socket.socket, PortMapping]]) -> NoReturn:
    sel = selectors.DefaultSelector()
    for host_sock, m in bound:
        sel.register(host_sock, selectors.EVENT_READ, ("host", host_sock, m))
    sessions: dict[tuple, tuple[socket.socket, float]] = {}
    while True:
        for key, _ in sel.select(timeout=IDLE / 4):
            role, host_sock, m = key.data[:3]
            if role == "host":
                try:
                    data, client = host_sock.recvfrom(65535)
                except BlockingIOError:
                    continue
                sid = (host_sock.fileno(), client)
                inner = sessions.get(sid, (None, 0.0))[0]
                if inner is None:
                    inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    inner.connect((target_ip, m.container_port))
                    inner.setblocking(False)
                    sel.register(inner, selectors.EVENT_READ, ("inner", host_sock, m, client, sid))
                sessions[sid] = (inner, time.monotonic())
                try:
                    inner.send(data)
                except OSError:
                    pass  # e.g. ECONNREFUSED from an earlier datagram: UDP drops, as on a network
            else:
                client, sid = key.data[3], key.data[4]
                try:
                    data = key.fileobj.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                sessions[sid] = (key.fileobj, time.monotonic())
                try:
                    host_sock.sendto(data, client)
                except OSError:
                    pass
        now = time.monotonic()
        for sid, (inner, last) in list(sessions.items()):
            if now - last > IDLE:
                sel.unregister(inner)
                inner.close()
                del sessions[sid]
