"""Fuzzing the service with hypothesis: random requests on the routes it serves (random path
parameters, query strings, headers and JSON or non-JSON bodies), then requests broken at the
HTTP level (cut short, chunked bodies with bad sizes, garbage on the socket).

Invariants: every request gets an HTTP answer (garbage may instead be dropped), none is an
internal error (a 5xx other than 501 "not implemented" is accepted only as an engine's own
error, worded for the user, as Docker answers 500 too; those on bad input are reported as
warnings), an error answer carries Docker's ``{"message": ...}``, no traceback lands in the service log, the service still answers
``/_ping`` afterwards, and nothing was created in the store.

Bounded and deterministic for CI: ``derandomize`` (the examples are a function of the test),
no example database, a fixed number of examples.  The requests never do real work: path
parameters never name an existing object (they start with ``zz``, which no id or name of the
session starts with), and routes that would reach the network, stream for ever, build, or
create or prune with any input are left out (``_left_out``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rootless.api import router

pytestmark = pytest.mark.both_modes

SETTINGS = dict(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])

# Routes without a path parameter whose valid (or even empty) input does real work.
_NO_PARAM_ALLOWED = {("POST", "/containers/create"), ("POST", "/images/load"), ("POST", "/commit")}


def _left_out(method: str, template: str) -> str | None:
    """Why a route is not fuzzed, or None."""
    if template.endswith("/prune"):
        return "prunes the session's objects"
    if template in ("/build", "/images/create", "/auth", "/images/search", "/session") \
            or template.endswith("/push"):
        return "reaches a registry or builds"
    if template == "/events":
        return "streams until the client leaves"
    if method not in ("GET", "HEAD") and "{" not in template and (method, template) not in _NO_PARAM_ALLOWED:
        return "creates or changes things with any input"
    return None


def _routes() -> list[tuple[str, str]]:
    router.load_handlers()
    return sorted({(m, t) for m, t in router.routes() if not _left_out(m, t)})


ROUTES = _routes()

# --- strategies -----------------------------------------------------------------------------

NOT_THERE = st.one_of(
    st.text(max_size=40).map(lambda s: "zz" + s),
    st.sampled_from(["zz", "zz-none", "zz..", "zz%00", "zz/../..", "zz:latest", "zz@sha256:" + "0" * 64,
                     "zz" + "x" * 300, "zz\u00e9\u4e2d", "zz;ls", "zz name"]))

VERSION = st.sampled_from(["", "", "/v1.41", "/v1.24", "/v1.30", "/v1.99", "/v0.1", "/v1.", "/vx.y"])

PARAM_NAMES = ["all", "filters", "force", "v", "t", "signal", "size", "limit", "tail", "since", "until",
               "follow", "stdout", "stderr", "timestamps", "name", "fromImage", "fromSrc", "tag", "repo",
               "link", "noprune", "stream", "ps_args", "condition", "h", "w", "detachKeys", "logs", "stdin",
               "path", "noOverwriteDirToFile", "copyUIDGID", "container", "comment", "author", "pause",
               "changes", "quiet", "names", "dangling", "platform", "x"]
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                      max_size=4),
                       max_leaves=12)
PARAM_VALUE = st.one_of(
    st.sampled_from(["", "1", "0", "true", "false", "-1", "99999999999999999999", "abc", "all", "{", "[]",
                     '{"label":["a=b"]}', '{"status":{"running":true}}', '{"x":1}', '{"dangling":["true"]}',
                     '{"before":["zz"]}', "SIGKILL", "NOPE", "not-running", "next-exit", "removed",
                     "1.5", "1e9", "2000-01-01T00:00:00Z"]),
    st.text(max_size=30),
    JSONISH.map(json.dumps))
QUERY = st.lists(st.tuples(st.sampled_from(PARAM_NAMES), PARAM_VALUE), max_size=5)

HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)
HEADERS = st.dictionaries(
    st.sampled_from(["Content-Type", "X-Registry-Auth", "X-Registry-Config", "Upgrade", "Connection",
                     "Accept", "Expect", "X-Fuzz", "Authorization", "User-Agent"]),
    st.one_of(HEADER_VALUE, st.sampled_from(["application/json", "application/x-tar", "text/plain", "tcp",
                                             "Upgrade", "close", "100-continue", "e30=", "!!!not-base64"])),
    max_size=3)


def _create_body(obj):
    """A create body never names an image that exists."""
    if isinstance(obj, dict) and "Image" in obj:
        obj = {**obj, "Image": "zz-no-such-image"}
    return obj


BODY = st.one_of(
    st.just(None),
    JSONISH.map(lambda o: json.dumps(o).encode()),
    st.fixed_dictionaries({}, optional={
        "Image": st.text(max_size=10), "Cmd": JSONISH, "Env": JSONISH, "HostConfig": JSONISH, "Labels": JSONISH,
        "Name": NOT_THERE, "Driver": JSONISH, "Tty": JSONISH, "ExposedPorts": JSONISH,
        "NetworkingConfig": JSONISH, "Entrypoint": JSONISH, "User": JSONISH, "WorkingDir": JSONISH,
    }).map(lambda o: json.dumps(o).encode()),
    st.binary(max_size=200),
    JSONISH.map(lambda o: json.dumps(o).encode()[:-1] if o not in (None, True, False) else b"{"),
    st.sampled_from([b"{", b"[", b'{"Image":', b"null", b"\xff\xfe", b"{}" * 1000, b'"' + b"a" * 10000,
                     b"[" * 5000 + b"]" * 5000]),
)


@st.composite
def requests(draw):
    method, template = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:                     # now and then another method on the path
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
        if _left_out(method, template):
            method = "GET"
    path = template
    for m in re.finditer(r"\{(\w+)(:path)?\}", template):
        value = draw(NOT_THERE)
        path = path.replace(m.group(0), quote(value, safe="/" if m.group(2) else ""), 1)
    query = draw(QUERY)
    if template == "/commit":
        query = [(k, v) for k, v in query if k != "container"] + [("container", draw(NOT_THERE))]
    body = draw(BODY)
    if template == "/containers/create" and body:
        try:
            body = json.dumps(_create_body(json.loads(body))).encode()
        except ValueError:
            pass
    return method, draw(VERSION) + path, query, draw(HEADERS), body


# --- the store must not change --------------------------------------------------------------

def _store_state(api) -> dict:
    from rootless.image.store import Store
    root = api.rl.env["ROOTLESS_ROOT"]
    state = {"tags": Store(root).tags()}
    for sub in ("containers", "volumes", "networks", "blobs/sha256"):
        d = os.path.join(root, sub)
        state[sub] = sorted(os.listdir(d)) if os.path.isdir(d) else []
    return state


@pytest.fixture
def unchanged(api):
    """The store as before, no new traceback in the log, /_ping answered."""
    before = _store_state(api)
    log_start = api.log.stat().st_size
    yield
    with open(api.log, "rb") as f:
        f.seek(log_start)
        new_log = f.read().decode(errors="replace")
    assert "Traceback" not in new_log, new_log[-8000:]
    odd = "\n".join(l for l in new_log.splitlines() if not re.match(r"\S+ (GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) ", l))
    assert api.proc.poll() is None, f"the service exited {api.proc.returncode}:\n{odd[-8000:]}"
    assert api.http(timeout=10).get("/_ping").text == "OK"
    assert _store_state(api) == before


def _acceptable(status: int, message: str, what: str) -> None:
    """No internal error: a 5xx other than 501 only as an engine's own error, worded for the user
    (Docker answers 500 for those too), never an exception the service did not expect.  Engine
    errors on garbage input are reported as warnings: they would better be 400s."""
    if status < 500 or status == 501:
        return
    assert status == 500 and not message.startswith("internal error"), f"{what} -> {status} {message[:500]}"
    kind = (re.sub(r"/v[0-9.]+/", "/", what.split("?")[0].split(" HTTP")[0])[:60], re.sub(r"/\S+", "PATH", message)[:80])
    if kind not in _WARNED:                 # once per route and wording
        _WARNED.add(kind)
        warnings.warn(f"500 on bad input (better a 400): {what[:200]} -> {message[:300]}")


_WARNED: set = set()


def _check_answer(r: httpx.Response, what: str) -> None:
    message = ""
    if r.status_code >= 400 and r.request.method != "HEAD":
        assert r.headers.get("content-type", "").startswith("application/json"), what
        message = r.json().get("message")
        assert isinstance(message, str), f"{what} -> {r.text[:500]}"
    _acceptable(r.status_code, message, what)


def test_the_route_table_is_fuzzed():
    assert ("GET", "/_ping") in ROUTES and ("GET", "/version") in ROUTES


def test_random_requests(api, unchanged):
    with api.http(timeout=30) as client:
        @settings(max_examples=400, **SETTINGS)
        @given(requests())
        def one(req):
            method, path, query, headers, body = req
            what = f"{method} {path}?{urlencode(query)} {headers} body={body[:100] if body else body!r}"
            try:
                r = client.request(method, path, params=query, headers=headers, content=body)
            except httpx.RemoteProtocolError:
                # an Upgrade: tcp on a plain route, answered then closed: only the hijacking
                # routes switch protocols, others answer as usual
                r = httpx.Client(transport=httpx.HTTPTransport(uds=str(api.socket)), base_url="http://docker",
                                 timeout=30).request(method, path, params=query, content=body)
            _check_answer(r, what)
        one()


# --- below HTTP: raw bytes on the socket ----------------------------------------------------

def _exchange(api, data: bytes, timeout: float = 20) -> bytes:
    """Send ``data``, close our side, read the whole answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(api.socket))
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
        return reply
    finally:
        s.close()


def _status(reply: bytes) -> int:
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert m, reply[:300]
    return int(m.group(1))


def _check_reply(reply: bytes, what: bytes) -> None:
    """A whole raw answer: an HTTP status, and no internal error."""
    status = _status(reply)
    message = ""
    if status >= 500:
        head, _, body = reply.partition(b"\r\n\r\n")
        try:
            message = json.loads(body.split(b"\r\n")[-2] if b"chunked" in head.lower() else body)["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            message = "internal error: no JSON message: " + body[:200].decode(errors="replace")
    _acceptable(status, message, repr(what[:300]))


VALID = [
    b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n",
    b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\nUser-Agent: fuzz\r\n\r\n",
    b'POST /v1.41/containers/create?name=zz-cut HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n'
    b'Content-Length: 40\r\n\r\n{"Image":"zz-no-such-image","Cmd":["x"]}',
    b"GET /containers/zz-none/json HTTP/1.1\r\nHost: d\r\n\r\n",
]


@settings(max_examples=150, **SETTINGS)
@given(st.sampled_from(VALID), st.data())
def test_requests_cut_short_are_answered(api, unchanged, request_bytes, data):
    cut = data.draw(st.integers(1, len(request_bytes)))
    reply = _exchange(api, request_bytes[:cut])
    if cut < request_bytes.index(b"\r\n\r\n") + 4:
        assert 400 <= _status(reply) < 500, reply[:300]
    else:
        _check_reply(reply, request_bytes[:cut])


CHUNK_SIZE = st.one_of(st.integers(0, 1 << 40).map(lambda n: f"{n:x}".encode()),
                       st.sampled_from([b"", b"-1", b"zz", b"0x10", b" 5", b"5;ext=1", b"f" * 40, b"10\x00"]))


@settings(max_examples=150, **SETTINGS)
@given(st.sampled_from([b"POST /containers/create", b"GET /_ping", b"POST /images/load",
                        b"POST /containers/zz-none/wait"]),
       st.lists(st.tuples(CHUNK_SIZE, st.binary(max_size=64)), min_size=1, max_size=4),
       st.booleans())
def test_chunked_bodies_with_bad_sizes_are_answered(api, unchanged, head, chunks, terminate):
    body = b"".join(size + b"\r\n" + payload + b"\r\n" for size, payload in chunks)
    if terminate:
        body += b"0\r\n\r\n"
    request = head + b" HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    _check_reply(_exchange(api, request + body), request + body)


@settings(max_examples=150, **SETTINGS)
@given(st.one_of(st.binary(min_size=1, max_size=2000),
                 st.lists(st.sampled_from([b"GET ", b"POST ", b"/", b"_ping", b" HTTP/1.1", b"HTTP/1.0", b"\r\n",
                                           b"\n", b"Host: d", b"Content-Length: ", b"99", b"-5", b"Transfer-Encoding: ",
                                           b"chunked", b":", b" ", b"\x00", b"\xff", b"%", b"?", b"=", b"&"]),
                          min_size=1, max_size=30).map(b"".join)))
def test_garbage_on_the_socket(api, unchanged, data):
    reply = _exchange(api, data)
    if reply:
        _check_reply(reply, data)


def test_a_body_over_the_limit_is_413(api, unchanged):
    from rootless.api.http import MAX_JSON_BODY
    big = b'{"Image":"zz-no-such-image","Cmd":["' + b"a" * MAX_JSON_BODY + b'"]}'
    r = api.http().post("/containers/create", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:300]


def test_head_with_a_refused_version_is_answered_without_a_body(api, unchanged):
    """Found by the fuzzing: a HEAD refused before its handler was found (a version too new)
    got its error body sent, which HTTP forbids for HEAD: the connection's task failed and took
    the whole service down."""
    for path in ("/v1.99/_ping", "/v1.12/version", "/no/such/path"):
        reply = _exchange(api, b"HEAD " + path.encode() + b" HTTP/1.1\r\nHost: d\r\n\r\n")
        assert re.match(rb"HTTP/1\.1 40[04] ", reply), reply[:300]
        assert reply.endswith(b"\r\n\r\n"), reply       # the head alone


def test_a_body_cut_short_or_badly_chunked_is_400(api, unchanged):
    """Found by the fuzzing: h11's protocol error while a handler read the body, and JSON nested
    deeper than Python's recursion limit, were answered 500 with a traceback."""
    head = b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
    deep = b"[" * 100000 + b"]" * 100000
    for raw in (head + b"Content-Length: %d\r\n\r\n" % len(deep) + deep,
                head + b"Content-Length: 40\r\n\r\n{\"Ima",
                head + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"Image\"\r\n0\r\n\r\n",
                head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"):
        reply = _exchange(api, raw)
        assert _status(reply) == 400 and (b"malformed request body" in reply or b"nested too deeply" in reply), \
            reply[:400]
