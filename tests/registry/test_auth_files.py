"""Credential files and WWW-Authenticate parsing (no network)."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from rootless.registry import RegistryError
from rootless.registry.auth import (Credentials, auth_files, default_auth_file, find_credentials,
                                    parse_www_authenticate, remove_credentials, save_credentials)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def write(path, auths):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": auths}))


def test_search_order(private_home, monkeypatch):
    run = private_home / "run" / "containers" / "auth.json"
    user = private_home / ".config" / "containers" / "auth.json"
    docker = private_home / ".docker" / "config.json"
    assert auth_files() == [run, user, docker]
    write(docker, {"https://index.docker.io/v1/": {"auth": b64("hub:docker")},
                   "127.0.0.1:5000": {"auth": b64("d:1")}})
    assert find_credentials("docker.io") == Credentials("hub", "docker")
    assert find_credentials("index.docker.io") == Credentials("hub", "docker")
    assert find_credentials("127.0.0.1:5000") == Credentials("d", "1")
    write(user, {"127.0.0.1:5000": {"auth": b64("u:2")}})
    assert find_credentials("127.0.0.1:5000") == Credentials("u", "2")
    write(run, {"http://127.0.0.1:5000/v2/": {"auth": b64("r:pass:with:colons")}})
    assert find_credentials("127.0.0.1:5000") == Credentials("r", "pass:with:colons")
    assert find_credentials("127.0.0.1:5001") is None
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(private_home / "explicit.json"))
    assert auth_files()[0] == private_home / "explicit.json"
    assert default_auth_file() == private_home / "explicit.json"


def test_repository_scoped_entries(private_home):
    user = private_home / ".config" / "containers" / "auth.json"
    write(user, {"reg.example:5000": {"auth": b64("all:1")},
                 "reg.example:5000/team": {"auth": b64("team:2")},
                 "reg.example:5000/team/app": {"auth": b64("app:3")}})
    assert find_credentials("reg.example:5000", "team/app").username == "app"
    assert find_credentials("reg.example:5000", "team/other").username == "team"
    assert find_credentials("reg.example:5000", "teamx/y").username == "all"
    assert find_credentials("reg.example:5000").username == "all"


def test_save_and_remove(private_home):
    path = save_credentials("127.0.0.1:5000", "alice", "s3cret")
    assert path == private_home / ".config" / "containers" / "auth.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    save_credentials("docker.io", "bob", "pw")
    data = json.loads(path.read_text())
    assert data["auths"]["127.0.0.1:5000"]["auth"] == b64("alice:s3cret")
    assert data["auths"]["docker.io"]["auth"] == b64("bob:pw")
    assert find_credentials("127.0.0.1:5000") == Credentials("alice", "s3cret")
    # replace, keeping other keys and unknown top-level fields
    data["credHelpers"] = {"x": "y"}
    path.write_text(json.dumps(data))
    save_credentials("127.0.0.1:5000", "alice", "new")
    data = json.loads(path.read_text())
    assert data["credHelpers"] == {"x": "y"} and len(data["auths"]) == 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert remove_credentials("127.0.0.1:5000") is True
    assert remove_credentials("127.0.0.1:5000") is False
    assert find_credentials("127.0.0.1:5000") is None
    assert find_credentials("docker.io") == Credentials("bob", "pw")
    assert [p.name for p in path.parent.iterdir()] == ["auth.json"]   # no temp files left


def test_remove_docker_url_key(private_home):
    path = private_home / ".config" / "containers" / "auth.json"
    write(path, {"https://index.docker.io/v1/": {"auth": b64("a:b")}})
    assert remove_credentials("docker.io") is True
    assert json.loads(path.read_text())["auths"] == {}


def test_broken_files_name_the_file(private_home):
    path = private_home / ".config" / "containers" / "auth.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(RegistryError) as e:
        find_credentials("x.example")
    assert str(path) in str(e.value)
    write(path, {"x.example": {"auth": b64("no-colon")}})
    with pytest.raises(RegistryError) as e:
        find_credentials("x.example")
    assert "rootless login x.example" in str(e.value)


def test_credentials_repr_hides_password():
    assert "s3cret" not in repr(Credentials("alice", "s3cret"))


def test_parse_challenges():
    [c] = parse_www_authenticate('Bearer realm="https://auth.example/token",service="registry.example",'
                                 'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "registry.example",
                        "scope": "repository:a/b:pull,push"}
    [c] = parse_www_authenticate('Basic realm="Registry Realm"')
    assert (c.scheme, c.realm) == ("basic", "Registry Realm")
    cs = parse_www_authenticate('Basic realm="a, b", charset=UTF-8, Bearer realm="http://x/t",'
                                'error="insufficient_scope"')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].params == {"realm": "a, b", "charset": "UTF-8"}
    assert cs[1].params["error"] == "insufficient_scope"
    [c] = parse_www_authenticate('Bearer realm="q\\"uote"')
    assert c.realm == 'q"uote'
    assert parse_www_authenticate("") == []
