"""Fixtures for the API service's tests: one ``rootless system service`` on the tests' store
(session-wide, stopped by PID at the end), Docker's own ``docker`` CLI pointed at it, and a
plain HTTP client for what no CLI sends.

The service's stderr is kept: a traceback in it (an internal error answered 500) fails the
session, whatever the client printed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOTLESS, Rootless

# Docker's CLI: the one scripts/test unpacked from Debian's docker.io (ROOTLESS_TEST_DOCKER; CI has
# no other), else the first `docker` on PATH, else that unpacked copy where a root run left it.
CI_DOCKER = "/var/tmp/rootless-ci/docker-cli/usr/bin/docker"


def _docker() -> str | None:
    given = os.environ.get("ROOTLESS_TEST_DOCKER")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("docker") or (CI_DOCKER if os.access(CI_DOCKER, os.X_OK) else None)


DOCKER = _docker()
needs_docker = pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed: scripts/test (as root) "
                                                         "unpacks Debian's docker.io client, or set ROOTLESS_TEST_DOCKER")


class Service:
    def __init__(self, rl: Rootless, socket: Path, log: Path):
        self.rl, self.socket, self.log = rl, socket, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([*ROOTLESS, "system", "service", "--socket", str(self.socket), "--timeout", "0"],
                                     env=self.rl.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.http().get("/_ping").text == "OK":
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("the service did not answer /_ping within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def http(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://docker",
                            timeout=timeout)

    def docker(self, *args: str, input: str | bytes | None = None, timeout: float = 120, check: bool = False,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Docker's CLI against the service (its own config dir: no credentials or contexts of ours)."""
        text = not isinstance(input, bytes)
        proc = subprocess.run([DOCKER, *args], input=input, capture_output=True, text=text, timeout=timeout,
                              env={**self.docker_env(), **(env or {})},
                              stdin=subprocess.DEVNULL if input is None else None)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def docker_env(self) -> dict[str, str]:
        config = self.socket.parent / "docker-config"
        config.mkdir(exist_ok=True)
        return {**self.rl.env, "DOCKER_HOST": self.url, "DOCKER_CONFIG": str(config), "DOCKER_BUILDKIT": "0",
                "DOCKER_CLI_HINTS": "false"}

    def tracebacks(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text if "Traceback" in text else ""


@pytest.fixture(scope="session")
def api(rl_session: Rootless, tmp_path_factory) -> Service:
    d = tmp_path_factory.mktemp("api")
    d.chmod(0o700)
    svc = Service(rl_session, d / "docker.sock", d / "service.log")
    svc.start()
    yield svc
    svc.stop()
    bad = svc.tracebacks()
    assert not bad, "the API service logged internal errors (tracebacks):\n" + bad[-8000:]
