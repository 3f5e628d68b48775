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


def test_mirror_then_primary(registry, tmp_path):
    """What the engine's pull does with registries.conf: try each source in order."""
    from tests.registry_server import running_registry

    from rootless.registry import ManifestUnknown

    from .images import make_image, push_image

    conf_path = tmp_path / "registries.conf"
    with running_registry("anonymous") as mirror:
        conf_path.write_text(f'[[registry]]\nlocation = "{registry.host}"\n'
                             f'[[registry.mirror]]\nlocation = "{mirror.host}/cache"\n')
        conf = registries_conf.load(conf_path)
        in_mirror = make_image("in-mirror", layers=1)
        only_primary = make_image("only-primary", layers=1)
        with RegistryClient(mirror.host) as c:
            push_image(c, "cache/app/one", "latest", in_mirror, tmp_path)
        with RegistryClient(registry.host) as c:
            push_image(c, "app/two", "latest", only_primary, tmp_path)

        def pull(repo):
            for src in conf.pull_sources(registry.host, repo):
                with RegistryClient(src.registry, insecure=src.insecure or None, registries_conf=conf) as c:
                    try:
                        return src, c.get_manifest(src.repository, "latest")
                    except ManifestUnknown:
                        continue
            raise AssertionError("not found anywhere")

        src, m = pull("app/one")
        assert (src.registry, src.repository, src.mirror) == (mirror.host, "cache/app/one", True)
        assert m.digest == in_mirror.digest
        src, m = pull("app/two")
        assert (src.registry, src.repository, src.mirror) == (registry.host, "app/two", False)
        assert m.digest == only_primary.digest
