"""Reference parsing (no network at all)."""

from __future__ import annotations

import pytest

from rootless.errors import UsageError
from rootless.registry.reference import InvalidReference, Reference, api_host

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text,registry,repo,tag,digest,canonical", [
    ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "docker.io/library/busybox:1.36"),
    ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:x", "docker.io", "library/busybox", "x", None,
     "docker.io/library/busybox:x"),
    ("127.0.0.1:5000/foo", "127.0.0.1:5000", "foo", "latest", None, "127.0.0.1:5000/foo:latest"),
    ("localhost/x", "localhost", "x", "latest", None, "localhost/x:latest"),
    ("localhost:5000/a/b/c:v2", "localhost:5000", "a/b/c", "v2", None, "localhost:5000/a/b/c:v2"),
    ("quay.io/org/img@" + D, "quay.io", "org/img", None, D, "quay.io/org/img@" + D),
    ("quay.io/org/img:1@" + D, "quay.io", "org/img", "1", D, "quay.io/org/img:1@" + D),
    ("busybox@" + D, "docker.io", "library/busybox", None, D, "docker.io/library/busybox@" + D),
    ("[::1]:5000/x:t", "[::1]:5000", "x", "t", None, "[::1]:5000/x:t"),
    ("Registry/x", "Registry", "x", "latest", None, "Registry/x:latest"),
    ("my.reg-1.example/e", "my.reg-1.example", "e", "latest", None, "my.reg-1.example/e:latest"),
    ("my_ns/my-app", "docker.io", "my_ns/my-app", "latest", None, "docker.io/my_ns/my-app:latest"),
])
def test_parse(text, registry, repo, tag, digest, canonical):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)
    assert str(ref) == canonical
    assert Reference.parse(str(ref)) == ref


def test_api_host_and_forms():
    ref = Reference.parse("busybox")
    assert ref.api_host == "registry-1.docker.io" == api_host("index.docker.io")
    assert ref.familiar == "busybox:latest"
    assert ref.reference == "latest"
    assert Reference.parse("127.0.0.1:5000/foo").api_host == "127.0.0.1:5000"
    assert Reference.parse("x@" + D).reference == D
    assert Reference.parse("x:1").with_digest(D).reference == D


@pytest.mark.parametrize("text,part", [
    ("", "empty"),
    ("Busybox", "'Busybox' must be lower-case"),
    ("busybox:", "tag ''"),
    ("busybox:-x", "tag '-x'"),
    ("busybox:" + "a" * 129, "tag"),
    ("busybox@sha256:abc", "invalid digest 'sha256:abc'"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("busybox@", "nothing after '@'"),
    ("foo..bar/x", "registry 'foo..bar'"),
    ("a_b.c/x", "registry 'a_b.c'"),
    ("ns/a..b", "component 'a..b'"),
    ("host:99x/x", "registry 'host:99x'"),
    ("a/b//c", "component ''"),
    ("x/-y", "component '-y'"),
    ("https://quay.io/x", "not a URL"),
    (" busybox", "spaces"),
    ("localhost:5000/", "empty"),
])
def test_invalid(text, part):
    with pytest.raises(InvalidReference) as e:
        Reference.parse(text)
    assert part in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, UsageError)


from hypothesis import given, strategies as st  # noqa: E402

_comp = st.from_regex(r"\A[a-z0-9]{1,5}(?:[._-][a-z0-9]{1,4}){0,2}\Z")
_host = st.one_of(st.just(""), st.from_regex(r"\A[a-z]{1,6}\.[a-z]{2,4}(?::[0-9]{2,5})?\Z"),
                  st.just("localhost:5000"), st.just("127.0.0.1:5000"))
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")


@given(host=_host, comps=st.lists(_comp, min_size=1, max_size=3), tag=st.one_of(st.none(), _tag),
       digest=st.one_of(st.none(), st.from_regex(r"\A[a-f0-9]{64}\Z")))
def test_round_trip(host, comps, tag, digest):
    from hypothesis import assume
    # Docker's rule: a first component with '.' or ':' names a registry, so without a host
    # the generated name must not start with one (that input is a different reference).
    assume(host or not any(c in comps[0] for c in ".:"))
    text = (host + "/" if host else "") + "/".join(comps)
    text += f":{tag}" if tag else ""
    text += f"@sha256:{digest}" if digest else ""
    ref = Reference.parse(text)
    assert Reference.parse(str(ref)) == ref
    assert Reference.parse(ref.familiar) == ref
    assert ref.tag == (tag or (None if digest else "latest"))
    if host:
        assert ref.registry == host and ref.repository == "/".join(comps)
