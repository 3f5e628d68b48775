"""Authentication against real registries: htpasswd (Basic) and token (Bearer JWT)."""

from __future__ import annotations

import pytest

from rootless.registry import (AccessDenied, AuthenticationRequired, Credentials, RegistryClient,
                               save_credentials)
from tests.registry_server import PASSWORD, USER

from .images import make_image, push_image

GOOD = Credentials(USER, PASSWORD)
BAD = Credentials(USER, "not-the-password")


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_credentials_push_and_pull(mode, basic_registry, token_registry, tmp_path):
    reg = basic_registry if mode == "basic" else token_registry
    img = make_image(f"auth-{mode}", layers=2)
    with RegistryClient(reg.host, credentials=GOOD, backoff=0.01) as c:
        push_image(c, "private/app", "v1", img, tmp_path)
        m = c.get_manifest("private/app", "v1")
        assert m.digest == img.digest
        c.fetch_blob("private/app", img.layers[0].digest, tmp_path / "l0", img.layers[0].size)
        assert (tmp_path / "l0").read_bytes() == img.layers[0].data
        assert c.list_tags("private/app") == ["v1"]
        assert c.auth.scheme == ("basic" if mode == "basic" else "bearer")


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_missing_credentials_clear_error(mode, basic_registry, token_registry):
    reg = basic_registry if mode == "basic" else token_registry
    with RegistryClient(reg.host, backoff=0.01) as c:           # auth files are empty
        with pytest.raises(AuthenticationRequired) as e:
            c.get_manifest("private/app", "v1")
    msg = str(e.value)
    assert f"authentication required for {reg.host}/private/app:v1" in msg
    assert f"run 'rootless login {reg.host}'" in msg


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_wrong_password(mode, basic_registry, token_registry):
    reg = basic_registry if mode == "basic" else token_registry
    with RegistryClient(reg.host, credentials=BAD, backoff=0.01) as c:
        with pytest.raises((AuthenticationRequired, AccessDenied)) as e:
            c.get_manifest("private/app", "v1")
    assert f"rootless login {reg.host}" in str(e.value)
    assert PASSWORD not in str(e.value) and "not-the-password" not in str(e.value)


def test_credentials_from_auth_file(basic_registry, private_home, tmp_path):
    path = save_credentials(basic_registry.host, USER, PASSWORD)
    assert path == private_home / ".config" / "containers" / "auth.json"
    img = make_image("authfile", layers=1)
    with RegistryClient(basic_registry.host, backoff=0.01) as c:
        assert c.auth.credentials == GOOD
        push_image(c, "fromfile/x", "latest", img, tmp_path)
        assert c.get_manifest("fromfile/x", "latest").digest == img.digest


def test_token_anonymous_pull_of_public_repo(token_registry, tmp_path):
    img = make_image("public", layers=1)
    with RegistryClient(token_registry.host, credentials=GOOD, backoff=0.01) as c:
        push_image(c, "public/app", "latest", img, tmp_path)
    with RegistryClient(token_registry.host, credentials=None, backoff=0.01) as anon:
        m = anon.get_manifest("public/app", "latest")
        assert m.digest == img.digest
        assert anon.get_blob("public/app", img.config.digest) == img.config.data
        # pull-only token: pushing must be refused with the login hint
        (tmp_path / "blob").write_bytes(b"new content")
        from .images import digest_of
        with pytest.raises(AuthenticationRequired) as e:
            anon.push_blob("public/app", digest_of(b"new content"), tmp_path / "blob")
        assert f"rootless login {token_registry.host}" in str(e.value)


def test_tokens_are_cached_per_scope(token_registry, tmp_path):
    img = make_image("cache", layers=3)
    with RegistryClient(token_registry.host, credentials=GOOD, backoff=0.01) as c:
        push_image(c, "cache/x", "latest", img, tmp_path)
    with RegistryClient(token_registry.host, credentials=GOOD, backoff=0.01) as c:
        before = c.auth.token_requests
        # many pulls of one repository: one token (pull scope), not one per request
        c.get_manifest("cache/x", "latest")
        out = tmp_path / "out"
        out.mkdir()
        c.fetch_blobs("cache/x", [(l.digest, out / l.digest[7:], l.size) for l in img.layers])
        c.get_blob("cache/x", img.config.digest)
        assert c.auth.token_requests == before + 1
        # cross-repository mount needs a token for both repositories
        assert c.mount_blob("cache/y", img.layers[0].digest, "cache/x")
    assert any(u == USER and sorted(s) == ["repository:cache/x:pull", "repository:cache/y:pull,push"]
               for u, s in token_registry.token.requests)


def test_expired_token_is_replaced(token_registry, tmp_path):
    img = make_image("expired", layers=1)
    with RegistryClient(token_registry.host, credentials=GOOD, backoff=0.01) as c:
        push_image(c, "expired/x", "latest", img, tmp_path)
    token_registry.token.expire_next = 1
    try:
        with RegistryClient(token_registry.host, credentials=GOOD, backoff=0.01) as c:
            assert c.get_manifest("expired/x", "latest").digest == img.digest
            assert c.auth.token_requests == 2
    finally:
        token_registry.token.expire_next = 0


@pytest.mark.parametrize("mode", ["anonymous", "basic", "token"])
def test_check_login(mode, registry, basic_registry, token_registry):
    reg = {"anonymous": registry, "basic": basic_registry, "token": token_registry}[mode]
    with RegistryClient(reg.host, credentials=GOOD, backoff=0.01) as c:
        c.check_login()
    if mode == "anonymous":
        return
    with RegistryClient(reg.host, credentials=BAD, backoff=0.01) as c:
        with pytest.raises(AuthenticationRequired) as e:
            c.check_login()
        assert "rejected" in str(e.value) and f"rootless login {reg.host}" in str(e.value)
    with RegistryClient(reg.host, credentials=None, backoff=0.01) as c:
        with pytest.raises(AuthenticationRequired):
            c.check_login()
