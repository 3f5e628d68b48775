"""registries.conf subset (no network)."""

from __future__ import annotations

import pytest

from rootless.registry import RegistryClient, RegistryError
from rootless.registry import registries_conf

CONF = '''
unqualified-search-registries = ["docker.io", "quay.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "127.0.0.1:5001/hub"
insecure = true
[[registry.mirror]]
location = "mirror.example"

[[registry]]
location = "plain.example:5000"
insecure = true

[[registry]]
prefix = "docker.io/evil"
location = "docker.io/evil"
blocked = true

[[registry]]
prefix = "*.corp.example"
location = "unused.example"
insecure = true
'''


def test_load_and_query(private_home, monkeypatch):
    path = private_home / ".config" / "containers" / "registries.conf"
    path.parent.mkdir(parents=True)
    path.write_text(CONF)
    conf = registries_conf.load()
    assert conf.path == path
    assert conf.unqualified_search_registries == ("docker.io", "quay.io")
    assert conf.is_insecure("plain.example:5000")
    assert conf.is_insecure("127.0.0.1:5001")
    assert conf.is_insecure("a.corp.example")
    assert not conf.is_insecure("docker.io")
    assert not conf.is_insecure("mirror.example")
    srcs = conf.pull_sources("docker.io", "library/busybox")
    assert [(s.registry, s.repository, s.insecure, s.mirror) for s in srcs] == [
        ("127.0.0.1:5001", "hub/library/busybox", True, True),
        ("mirror.example", "library/busybox", False, True),
        ("docker.io", "library/busybox", False, False)]
    assert [s.registry for s in conf.pull_sources("quay.io", "x")] == ["quay.io"]
    with pytest.raises(RegistryError) as e:
        conf.pull_sources("docker.io", "evil/app")
    assert "blocked" in str(e.value) and str(path) in str(e.value)
    # the client consults it (no request is made here: only the transport choice)
    with RegistryClient("plain.example:5000", registries_conf=conf) as c:
        assert c.allow_http
    with RegistryClient("secure.example", registries_conf=conf) as c:
        assert not c.allow_http
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(private_home / "none.conf"))
    assert registries_conf.load().registries == ()


def test_invalid_file(tmp_path):
    p = tmp_path / "r.conf"
    p.write_text("[[registry]\n")
    with pytest.raises(RegistryError) as e:
        registries_conf.load(p)
    assert str(p) in str(e.value)
    p.write_text('[[registry]]\nlocation = "x"\ninsecure = "yes"\n')
    with pytest.raises(RegistryError) as e:
        registries_conf.load(p)
    assert "insecure" in str(e.value)
