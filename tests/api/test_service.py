"""The service itself: the socket, who may connect, versions, errors, malformed requests."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOTLESS, needs_range
from tests.api.conftest import needs_docker

pytestmark = pytest.mark.both_modes


def test_ping_and_headers(api):
    r = api.http().get("/_ping")
    assert r.status_code == 200 and r.text == "OK"
    assert r.headers["api-version"] == "1.41"
    assert r.headers["ostype"] == "linux"
    assert api.http().head("/_ping").status_code == 200


def test_socket_is_private(api):
    st = os.stat(api.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_versions_are_negotiated(api):
    c = api.http()
    assert c.get("/v1.41/version").json()["ApiVersion"] == "1.41"
    assert c.get("/v1.24/version").json()["MinAPIVersion"] == "1.24"
    r = c.get("/v1.50/version")
    assert r.status_code == 400 and "too new" in r.json()["message"]
    r = c.get("/v1.12/version")
    assert r.status_code == 400 and "too old" in r.json()["message"]


def test_unknown_path_is_a_json_404(api):
    r = api.http().get("/v1.41/no/such/thing")
    assert r.status_code == 404 and "not part of the API" in r.json()["message"]


def test_malformed_requests_get_400_and_the_service_lives(api):
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
                b"GET /_ping HTTP/1.1\r\n" + b"X-Long: " + b"a" * (200 << 10) + b"\r\n\r\n"):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(str(api.socket))
        try:
            s.sendall(raw)
        except BrokenPipeError:
            pass
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        assert reply.startswith(b"HTTP/1.1 4"), reply[:200]
    assert api.http().get("/_ping").text == "OK"


def test_a_second_service_on_the_same_socket_is_refused(api):
    proc = subprocess.run([*ROOTLESS, "system", "service", "--socket", str(api.socket)], env=api.rl.env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 125 and "already listening" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_idle_timeout_ends_the_service_and_removes_its_socket(rl, tmp_path):
    sock = tmp_path / "s.sock"
    started = time.monotonic()
    proc = subprocess.run([*ROOTLESS, "system", "service", "--socket", str(sock), "--timeout", "1"],
                          env=rl.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "idle for 1 s" in proc.stderr
    assert not sock.exists()
    assert time.monotonic() - started < 50


@needs_range
def test_other_uids_are_refused_even_on_an_open_socket(api, rl):
    """A process of another uid (here a sub-id, through the user namespace) is refused by
    SO_PEERCRED even where the socket's mode and directory were left open to it."""
    import sys
    import tempfile
    open_dir = Path(tempfile.mkdtemp(prefix="rl-peercred-", dir="/tmp"))
    link = open_dir / "docker.sock"
    try:
        os.link(api.socket, link)
        os.chmod(link, 0o666)
        open_dir.chmod(0o711)
        probe = ("import os, socket\nos.setgid(1000); os.setuid(1000)\ns = socket.socket(socket.AF_UNIX)\n"
                 f"s.connect({str(link)!r})\ns.settimeout(10)\n"
                 "try:\n    s.sendall(b'GET /_ping HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n    print(repr(s.recv(100)))\n"
                 "except (BrokenPipeError, ConnectionResetError):\n    print(repr(b''))\n")
        proc = subprocess.run([*ROOTLESS, "unshare", sys.executable, "-c", probe], env=rl.env,
                              capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == "b''", proc.stdout + proc.stderr
    finally:
        os.chmod(api.socket, 0o600)         # the same inode
        link.unlink(missing_ok=True)
        open_dir.rmdir()
    assert "refused a connection from uid" in api.log.read_text()


@needs_docker
def test_docker_version_and_info(api):
    out = api.docker("version", "--format", "{{.Server.APIVersion}} {{.Client.APIVersion}}", check=True).stdout
    assert out.split() == ["1.41", "1.41"]
    info = api.docker("info", "--format", "{{json .}}", check=True).stdout
    assert '"OSType":"linux"' in info


def test_socket_activation_serves_the_socket_systemd_passed(rl, tmp_path):
    """As systemd's socket unit starts it: the listening socket is fd 3, LISTEN_PID is the
    service's pid and LISTEN_FDS 1; --socket is not needed, and the socket is not removed."""
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)

    def as_fd_3() -> None:
        os.dup2(listener.fileno(), 3)
    proc = subprocess.Popen(["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh",
                             *ROOTLESS, "system", "service", "--timeout", "0"],
                            env=rl.env, preexec_fn=as_fd_3, pass_fds=(3,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    listener.close()
    try:
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(30)
        c.connect(str(path))
        c.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        reply = b""
        while b"OK" not in reply:
            chunk = c.recv(4096)
            if not chunk:
                break
            reply += chunk
        c.close()
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"OK"), reply
    finally:
        proc.send_signal(__import__("signal").SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "the socket systemd passed" in err and "Traceback" not in err
    assert path.exists()            # systemd's, not ours to remove


def test_listen_fds_without_a_socket_is_a_sentence(rl):
    proc = subprocess.run(["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@" 3</dev/null', "sh",
                           *ROOTLESS, "system", "service"], env=rl.env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 125 and "fd 3 is not one" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
