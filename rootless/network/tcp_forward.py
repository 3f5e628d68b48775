"""A TCP port forwarder of our own: accept on the host, connect from inside the container.

Like the UDP forwarder (and Podman's rootlessport): the engine binds the published ports on
the host, then forks this process, which joins the container's user and network namespaces;
for each accepted connection it connects to the container's address from inside and moves
the bytes both ways with ``splice(2)`` through a pipe — they never enter Python — one thread
per direction, half-closing the other side at end of stream.  It dies with the engine
(``PR_SET_PDEATHSIG``) or on SIGTERM.  Selected with ``ROOTLESS_PORT_FORWARDER=own`` (see
scripts/bench for how it compares with the stacks' own forwarding).
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from typing import NoReturn

from .forwarder import fork_into_container_net
from .ports import PortMapping

CHUNK = 1 << 20


def bind_host_sockets(mappings: list[PortMapping]) -> list[tuple[socket.socket, PortMapping]]:
    out = []
    for m in mappings:
        family = socket.AF_INET6 if ":" in m.host_ip else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((m.host_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), m.host_port))
        s.listen(128)
        out.append((s, m))
    return out


def start(pid: int, target_ip: str, bound: list[tuple[socket.socket, PortMapping]]) -> int:
    """Fork the forwarder for the container whose PID 1 is ``pid``; its pid."""
    return fork_into_container_net(pid, "rootless-tcpfwd", bound, lambda: _accept_loop(target_ip, bound))


def _accept_loop(target_ip: str, bound: list[tuple[socket.socket, PortMapping]]) -> NoReturn:
    sel = selectors.DefaultSelector()
    for s, m in bound:
        sel.register(s, selectors.EVENT_READ, m)
    while True:
        for key, _ in sel.select():
            try:
                client, _addr = key.fileobj.accept()
            except OSError:
                continue
            threading.Thread(target=_serve, args=(client, target_ip, key.data.container_port), daemon=True).start()


def _serve(client: socket.socket, target_ip: str, port: int) -> None:
    try:
        inner = socket.create_connection((target_ip, port), timeout=10)
        inner.settimeout(None)
    except OSError:
        client.close()           # nothing listens in the container: the client sees the close
        return
    done = threading.Event()
    t = threading.Thread(target=_pump, args=(inner, client, done), daemon=True)
    t.start()
    _pump(client, inner, None)
    t.join()
    client.close()
    inner.close()


def _pump(src: socket.socket, dst: socket.socket, done: threading.Event | None) -> None:
    """src -> dst through a pipe with splice(2); half-close dst at the end of src."""
    r, w = os.pipe()
    try:
        while True:
            try:
                n = os.splice(src.fileno(), w, CHUNK)
            except OSError:
                n = 0
            if n == 0:
                break
            while n:
                m = os.splice(r, dst.fileno(), n)
                n -= m
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
