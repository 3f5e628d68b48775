"""``-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`` and its checks before a container starts."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

from ..errors import RootlessError, UsageError


@dataclass(frozen=True)
class PortMapping:
    host_ip: str          # "" for every address
    host_port: int
    container_port: int
    proto: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}->{self.container_port}/{self.proto}"


def _range(text: str, what: str, spec: str) -> list[int]:
    lo, sep, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise UsageError(f"invalid {what} '{text}' in -p {spec}: use a number or a range like 8000-8010") from None
    if not (0 < first <= last <= 65535):
        raise UsageError(f"invalid {what} '{text}' in -p {spec}: ports go from 1 to 65535")
    return list(range(first, last + 1))


def parse_port(spec: str) -> list[PortMapping]:
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise UsageError(f"invalid protocol '{proto}' in -p {spec}: use tcp or udp")
    host_ip = ""
    if body.startswith("["):                      # [::1]:8080:80
        end = body.find("]")
        host_ip, body = body[1:end], body[end + 2:]
    else:
        parts = body.split(":")
        if len(parts) == 3:
            host_ip, body = parts[0], ":".join(parts[1:])
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise UsageError(f"invalid host address '{host_ip}' in -p {spec}") from None
    host_part, sep, container_part = body.rpartition(":")
    if not sep:
        raise UsageError(f"invalid -p {spec}: use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]")
    container_ports = _range(container_part, "container port", spec)
    host_ports = _range(host_part, "host port", spec) if host_part else container_ports
    if len(host_ports) != len(container_ports):
        raise UsageError(f"invalid -p {spec}: the host and container port ranges differ in length")
    return [PortMapping(host_ip, h, c, proto) for h, c in zip(host_ports, container_ports)]


def unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def check_available(mappings: list[PortMapping]) -> None:
    """Refuse, before the container starts, a port that is privileged or already in use."""
    start = unprivileged_port_start()
    for m in mappings:
        if m.host_port < start:
            raise RootlessError(
                f"cannot publish port {m.host_port}: ports below {start} need privileges "
                f"(net.ipv4.ip_unprivileged_port_start={start}). Use a port of {start} or above, "
                f"e.g. -p {m.host_port + 8000 if m.host_port + 8000 < 65536 else start}:{m.container_port}, "
                f"or ask an administrator to lower the sysctl")
        family = socket.AF_INET6 if ":" in m.host_ip else socket.AF_INET
        kind = socket.SOCK_STREAM if m.proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, kind) as s:
            if kind == socket.SOCK_STREAM:
                # As a server binds: connections of an earlier container in TIME_WAIT don't count.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((m.host_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), m.host_port))
                if kind == socket.SOCK_STREAM:
                    s.listen()
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise RootlessError(f"cannot publish {m}: port {m.host_port}/{m.proto} is already in use "
                                        "on the host; choose another host port") from None
                if e.errno == errno.EADDRNOTAVAIL:
                    raise RootlessError(f"cannot publish {m}: {m.host_ip} is not an address of this host") from None
                raise
