"""docker-compose 1.29 (Debian's ``docker-compose``) end to end against the service: a web
server serving a file from a named volume on a port published on 127.0.0.1, and a client
that reaches it by its service name on the project's network.

Compose drives most of the API: images (inspect), volumes and networks (create, inspect,
list, remove), containers (create with NetworkingConfig, list by label, inspect, start,
stop, remove), network disconnect/connect of created containers (it sets each container's
aliases that way), logs and events-free waiting.  Nothing leaves the machine: the client
talks to the web server inside the project's network, the test to 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

from tests.api.conftest import needs_docker

pytestmark = pytest.mark.both_modes

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (Debian: docker-compose)")

PROJECT = "tcompose"

COMPOSE_FILE = """\
version: "3.7"
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo hello-from-the-volume > /www/index.html && exec httpd -f -p 8080 -h /www"]
    volumes:
      - site:/www
    ports:
      - "127.0.0.1:{port}:8080"
  client:
    image: busybox
    depends_on: [web]
    command:
      - sh
      - -c
      - |
        for i in $$(seq 60); do
          if printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web 8080 > /tmp/reply 2>/dev/null \\
             && grep -q hello /tmp/reply; then
            echo "client got: $$(grep hello /tmp/reply)"; exit 0
          fi
          sleep 0.5
        done
        echo "client: web never answered"; exit 1
volumes:
  site:
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@needs_docker
@needs_compose
def test_compose_up_ps_logs_down(api, tmp_path):
    port = _free_port()
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE.format(port=port))
    env = {**api.docker_env(), "COMPOSE_PROJECT_NAME": PROJECT, "COMPOSE_INTERACTIVE_NO_CLI": "1"}

    def compose(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        proc = subprocess.run([COMPOSE, "--ansi", "never", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    try:
        compose("up", "-d")
        # the host reaches the web server through its published port
        deadline = time.monotonic() + 60
        reply = b""
        while time.monotonic() < deadline:
            try:
                reply = _get(port)
                if b"hello-from-the-volume" in reply:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert b"hello-from-the-volume" in reply
        # the client reached it by its service name, on the project's network
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = compose("logs", "--no-color", "client").stdout
            if "client got" in logs or "never answered" in logs:
                break
            time.sleep(0.5)
        assert "client got: hello-from-the-volume" in logs, logs
        ps = compose("ps").stdout
        assert f"{PROJECT}_web_1" in ps and "Up" in ps and f"127.0.0.1:{port}->8080/tcp" in ps, ps
        assert f"{PROJECT}_client_1" in ps and "Exit 0" in ps, ps
        nets = json.loads(api.docker("network", "inspect", f"{PROJECT}_default", check=True).stdout)[0]
        assert nets["Labels"]["com.docker.compose.project"] == PROJECT
        vol = json.loads(api.docker("volume", "inspect", f"{PROJECT}_site", check=True).stdout)[0]
        assert vol["Labels"]["com.docker.compose.project"] == PROJECT
        compose("down", "-v")
        assert api.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
                          check=True).stdout.strip() == ""
        assert api.docker("network", "inspect", f"{PROJECT}_default").returncode != 0
        assert api.docker("volume", "inspect", f"{PROJECT}_site").returncode != 0
    finally:
        compose("down", "-v", "-t", "1", check=False)
        for name in (f"{PROJECT}_web_1", f"{PROJECT}_client_1"):
            api.rl("rm", "-f", name)
        api.rl("network", "rm", f"{PROJECT}_default")
        api.rl("volume", "rm", f"{PROJECT}_site")
