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
