"""Fixtures for the registry client tests: real ``docker-registry`` servers on 127.0.0.1.

Every test runs with HOME, XDG_* and DOCKER_CONFIG pointing into its own temporary
directory, so the user's real credentials and registries.conf are never read or written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.registry_server import REGISTRY_BIN, LyingServer, RegistryServer, running_registry


def _need_registry() -> None:
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF", raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryServer]:
    _need_registry()
    with running_registry("anonymous") as r:
        yield r


@pytest.fixture(scope="session")
def basic_registry() -> Iterator[RegistryServer]:
    _need_registry()
    with running_registry("basic") as r:
        yield r


@pytest.fixture(scope="session")
def token_registry() -> Iterator[RegistryServer]:
    _need_registry()
    with running_registry("token") as r:
        yield r


@pytest.fixture
def liar() -> Iterator[LyingServer]:
    s = LyingServer()
    try:
        yield s
    finally:
        s.close()


needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
