"""The userspace network stacks, started against a container's namespaces from the host side.

Both join the container's user namespace first (``setns`` into its network namespace
needs CAP_SYS_ADMIN over the namespace's owner, which the user has only from inside),
configure ``tap0`` (address 10.0.2.100/24, gateway 10.0.2.2, MTU 65520) and forward the
published ports from the host.  ``start`` returns once the namespace is configured;
``stop`` ends the helper (by its PID) and waits for it.

* slirp4netns: sandboxed (``--enable-sandbox --enable-seccomp``), readiness on
  ``--ready-fd``, it exits when ``--exit-fd`` closes; ports via its API socket.
* pasta: run in the foreground with a parent-death signal (this pasta does not quit when
  its target goes away, and a daemonized one would outlive a killed engine); it writes its
  pid file once the namespace is configured, which is the readiness signal.  Ports on its
  command line; ``-T none -U none`` so the host's own loopback services are not reachable
  from the container unless asked (``--no-map-gw`` likewise for the gateway address).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time

from ..errors import SandboxError
from ..sandbox.spawn import read_all, spawn
from . import CONTAINER_IP, GATEWAY_IP, MTU, PREFIX, NetworkSpec

READY_TIMEOUT = 10.0
# TCP ports: "stack" (slirp4netns's API, pasta's -t) or "own" (network/tcp_forward.py);
# ROOTLESS_PORT_FORWARDER overrides.  Chosen by measurement (docs/networks.md): slirp4netns's
# own forwarding is as fast as ours and needs no process of its own; pasta's (Debian 12's passt)
# drops about 10 MB at the end of a fast transfer that the client half-closes.
DEFAULT_TCP_FORWARDER = {"slirp4netns": "stack", "pasta": "own"}


class Helper:
    def __init__(self, name: str, pid: int, exit_fd: int | None = None):
        self.name, self.pid, self.exit_fd = name, pid, exit_fd

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; reaps it."""
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None
        if self.pid <= 0:
            return
        from ..sandbox.spawn import stop
        stop(self.pid, ((signal.SIGTERM, 5.0), (signal.SIGKILL, 30.0)))


def start(spec: NetworkSpec, pid: int, run_dir: str) -> list[Helper]:
    """The stack for the container whose PID 1 is ``pid``, and a UDP forwarder if UDP ports are published."""
    from . import tcp_forward, udp_forward
    udp = [m for m in spec.ports if m.proto == "udp"]
    tcp = [m for m in spec.ports if m.proto == "tcp"]
    own_tcp = os.environ.get("ROOTLESS_PORT_FORWARDER", DEFAULT_TCP_FORWARDER.get(spec.mode, "stack")) == "own"
    bound = udp_forward.bind_host_sockets(udp) if udp else []
    bound_tcp = tcp_forward.bind_host_sockets(tcp) if tcp and own_tcp else []
    stack_spec = NetworkSpec(spec.mode, [] if own_tcp else tcp, spec.allow_host_loopback)
    helpers = [_slirp4netns(stack_spec, pid, run_dir) if spec.mode == "slirp4netns"
               else _pasta(stack_spec, pid, run_dir)]
    if bound:
        helpers.append(Helper("udp-forwarder", udp_forward.start(pid, CONTAINER_IP, bound)))
    if bound_tcp:
        helpers.append(Helper("tcp-forwarder", tcp_forward.start(pid, CONTAINER_IP, bound_tcp)))
    return helpers


def _slirp4netns(spec: NetworkSpec, pid: int, run_dir: str) -> Helper:
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    api = os.path.join(run_dir, "slirp4netns.sock")
    args = ["slirp4netns", "--configure", f"--mtu={MTU}", "--enable-sandbox", "--enable-seccomp",
            f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", f"--api-socket={api}",
            f"--userns-path=/proc/{pid}/ns/user", f"--cidr=10.0.2.0/{PREFIX}"]
    if not spec.allow_host_loopback:
        args.append("--disable-host-loopback")
    args += [str(pid), "tap0"]
    try:
        child, err_fd = spawn(args, pass_fds=(ready_w, exit_r))
    finally:
        os.close(ready_w)
        os.close(exit_r)
    helper = Helper("slirp4netns", child, exit_w)
    try:
        ready, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        if not ready or os.read(ready_r, 1) != b"1":
            os.set_blocking(err_fd, False)
            try:
                err = os.read(err_fd, 65536).decode(errors="replace").strip()
            except BlockingIOError:
                err = ""
            raise SandboxError(f"slirp4netns did not start: {err or 'no answer on its ready fd'}")
        for m in spec.ports:
            _slirp_api(api, {"execute": "add_hostfwd", "arguments": {
                "proto": m.proto, "host_addr": m.host_ip or "0.0.0.0", "host_port": m.host_port,
                "guest_addr": CONTAINER_IP, "guest_port": m.container_port}}, str(m))
    except BaseException:
        helper.stop()
        raise
    finally:
        os.close(ready_r)
        os.close(err_fd)
    return helper


def _slirp_api(path: str, request: dict, what: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(READY_TIMEOUT)
        s.connect(path)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        reply = json.loads(s.recv(65536) or b"{}")
    if "error" in reply:
        desc = reply["error"].get("desc", reply["error"])
        raise SandboxError(f"cannot publish {what}: slirp4netns says: {desc}")


def _pasta(spec: NetworkSpec, pid: int, run_dir: str) -> Helper:
    pidfile = os.path.join(run_dir, "pasta.pid")
    ports = []
    for proto, flag in (("tcp", "-t"), ("udp", "-u")):
        specs = _pasta_port_specs([m for m in spec.ports if m.proto == proto])
        ports += [a for s in (specs or ["none"]) for a in (flag, s)]
    args = ["pasta", "--foreground", "--config-net", "--quiet", "-4", "-a", CONTAINER_IP, "-n", str(PREFIX), "-g", GATEWAY_IP,
            "-m", str(MTU), "--dns-forward", spec.dns_server or "169.254.1.1", "-P", pidfile,
            *ports, "-T", "none", "-U", "none",
            "--userns", f"/proc/{pid}/ns/user", "--netns", f"/proc/{pid}/ns/net"]
    if not spec.allow_host_loopback:
        args.append("--no-map-gw")
    child, err_fd = spawn(args, die_with_parent=True)
    helper = Helper("pasta", child)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _read_pidfile(pidfile):
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                helper.pid = -1
                raise SandboxError(f"pasta did not start: {read_all(err_fd) or f'exit status {status}'}")
            if time.monotonic() > deadline:
                raise SandboxError("pasta did not configure the container's network within "
                                   f"{READY_TIMEOUT:.0f} s")
            time.sleep(0.001)
    except BaseException:
        if helper.pid > 0:
            helper.stop()
        raise
    finally:
        if helper.pid != -1:
            os.close(err_fd)
    return helper


def _pasta_port_specs(mappings: list) -> list[str]:
    """pasta's ``[ADDR/]FIRST[-LAST][:FIRST[-LAST]]`` specs, one per run of consecutive ports."""
    runs: list[list] = []
    for m in sorted(mappings, key=lambda m: (m.host_ip, m.host_port)):
        last = runs[-1][-1] if runs else None
        if (last and last.host_ip == m.host_ip and m.host_port == last.host_port + 1
                and m.container_port == last.container_port + 1):
            runs[-1].append(m)
        else:
            runs.append([m])
    specs = []
    for run in runs:
        first, last = run[0], run[-1]
        host = f"{first.host_port}" if len(run) == 1 else f"{first.host_port}-{last.host_port}"
        cont = f"{first.container_port}" if len(run) == 1 else f"{first.container_port}-{last.container_port}"
        specs.append(f"{first.host_ip + '/' if first.host_ip else ''}{host}:{cont}")
    return specs


def _read_pidfile(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""
