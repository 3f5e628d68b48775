"""Error paths against a lying HTTP server on 127.0.0.1: wrong content, 5xx, dropped connections."""

from __future__ import annotations

import json
import re

import pytest

from rootless.registry import (AuthenticationRequired, DigestMismatch, DownloadStalled, RegistryClient, RegistryError,
                               RegistryUnreachable, UnsupportedManifest)
from rootless.registry import manifest as mt
from tests.registry_server import LyingServer, free_port, send

from .images import digest_of, make_image, make_index, tree

BLOB = bytes(range(256)) * 4000          # 1 MB
DIGEST = digest_of(BLOB)
PATH = f"/v2/x/blobs/{DIGEST}"


def client_for(liar: LyingServer, **kw) -> RegistryClient:
    return RegistryClient(liar.host, backoff=0.01, retries=kw.pop("retries", 3), **kw)


def serve_range(h, data: bytes) -> None:
    m = re.match(r"bytes=(\d+)-$", h.headers.get("Range", ""))
    if not m:
        send(h, 200, data, {"Accept-Ranges": "bytes"})
        return
    start = int(m.group(1))
    send(h, 206, data[start:], {"Accept-Ranges": "bytes",
                                 "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})


def test_wrong_blob_refused_and_nothing_left(liar, tmp_path):
    liar.routes[("GET", PATH)] = lambda h: send(h, 200, BLOB[:-1] + b"X")
    dest = tmp_path / "blob"
    with client_for(liar) as c, pytest.raises(DigestMismatch) as e:
        c.fetch_blob("x", DIGEST, dest, len(BLOB))
    assert f"{liar.host}/x@{DIGEST}" in str(e.value)
    assert tree(tmp_path) == []
    # also for small blobs read into memory, and without an expected size
    with client_for(liar) as c:
        with pytest.raises(DigestMismatch):
            c.get_blob("x", DIGEST, max_size=2 << 20)
        with pytest.raises(DigestMismatch):
            c.fetch_blob("x", DIGEST, dest)
    assert tree(tmp_path) == []


def test_oversized_blob_aborted(liar, tmp_path):
    liar.routes[("GET", PATH)] = lambda h: send(h, 200, BLOB + BLOB)
    with client_for(liar) as c, pytest.raises(DigestMismatch) as e:
        c.fetch_blob("x", DIGEST, tmp_path / "blob", len(BLOB))
    assert "more than" in str(e.value)
    assert tree(tmp_path) == []


def test_5xx_then_success_is_retried(liar, tmp_path):
    answers = iter([503, 502, 200])

    def route(h):
        status = next(answers)
        send(h, status, BLOB if status == 200 else b"busy")
    liar.routes[("GET", PATH)] = route
    with client_for(liar) as c:
        assert c.fetch_blob("x", DIGEST, tmp_path / "blob", len(BLOB)) == len(BLOB)
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert len(liar.requests("GET", PATH)) == 3


def test_5xx_forever_gives_up(liar, tmp_path):
    liar.routes[("GET", PATH)] = lambda h: send(h, 500, b'{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}')
    with client_for(liar, retries=2) as c, pytest.raises(RegistryError) as e:
        c.fetch_blob("x", DIGEST, tmp_path / "blob")
    assert e.value.status == 500 and "disk on fire" in str(e.value)
    assert len(liar.requests("GET", PATH)) == 3
    assert tree(tmp_path) == []


def test_dropped_connection_resumes_with_range(liar, tmp_path):
    calls = []

    def route(h):
        calls.append(h.headers.get("Range"))
        if len(calls) == 1:
            send(h, 200, BLOB, {"Accept-Ranges": "bytes"}, truncate_at=300_000)
        elif len(calls) == 2:
            # resumed at 300000, dropped again
            start = int(h.headers["Range"][6:-1])
            send(h, 206, BLOB[start:], {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"},
                 truncate_at=100_000)
        else:
            serve_range(h, BLOB)
    liar.routes[("GET", PATH)] = route
    seen = []
    with client_for(liar) as c:
        c.fetch_blob("x", DIGEST, tmp_path / "blob", len(BLOB), progress=lambda d, t: seen.append(d))
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert calls[0] is None
    assert calls[1] is not None and calls[1].startswith("bytes=") and int(calls[1][6:-1]) > 0
    assert int(calls[2][6:-1]) > int(calls[1][6:-1])
    assert seen[-1] == len(BLOB)


def test_dropped_connection_restarts_without_range_support(liar, tmp_path):
    calls = []

    def route(h):
        calls.append(h.headers.get("Range"))
        send(h, 200, BLOB, truncate_at=500_000 if len(calls) == 1 else None)
    liar.routes[("GET", PATH)] = route
    with client_for(liar) as c:
        c.fetch_blob("x", DIGEST, tmp_path / "blob", len(BLOB))
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert calls == [None, None]


def test_server_ignoring_range_restarts_cleanly(liar, tmp_path):
    calls = []

    def route(h):
        calls.append(h.headers.get("Range"))
        # claims range support, then answers the Range request with the whole blob (200)
        send(h, 200, BLOB, {"Accept-Ranges": "bytes"}, truncate_at=400_000 if len(calls) == 1 else None)
    liar.routes[("GET", PATH)] = route
    with client_for(liar) as c:
        c.fetch_blob("x", DIGEST, tmp_path / "blob", len(BLOB))
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert len(calls) == 2 and calls[1] is not None


def test_a_trickle_is_a_stall_resumed_then_refused(liar, tmp_path):
    import threading
    stop = threading.Event()
    calls = []

    def route(h):        # a byte every 0.2 s: never silent, never getting anywhere
        calls.append(h.headers.get("Range"))
        h.send_response(200)
        h.send_header("Content-Length", str(len(BLOB)))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        try:
            for i in range(len(BLOB)):
                h.wfile.write(BLOB[i:i + 1])
                h.wfile.flush()
                if stop.wait(0.2):
                    return
        except OSError:
            h.close_connection = True
    liar.routes[("GET", PATH)] = route
    try:
        with client_for(liar, retries=1, stall_timeout=1) as c, pytest.raises(DownloadStalled) as e:
            c.fetch_blob("x", DIGEST, tmp_path / "blob", len(BLOB))
    finally:
        stop.set()
    assert f"{liar.host}/x@{DIGEST}" in str(e.value) and "stalled" in str(e.value)
    assert len(calls) == 2 and calls[1] is not None     # the retry resumed where it was
    assert tree(tmp_path) == []


def test_manifest_by_digest_must_match(liar):
    img = make_image("liar", layers=1)
    other = make_image("other", layers=1)
    liar.routes[("GET", f"/v2/x/manifests/{img.digest}")] = lambda h: send(
        h, 200, other.manifest, {"Content-Type": other.media_type})
    with client_for(liar) as c, pytest.raises(DigestMismatch) as e:
        c.get_manifest("x", img.digest)
    assert other.digest in str(e.value)


def test_manifest_announced_digest_must_match(liar):
    img = make_image("liar2", layers=1)
    liar.routes[("GET", "/v2/x/manifests/latest")] = lambda h: send(
        h, 200, img.manifest, {"Content-Type": img.media_type, "Docker-Content-Digest": digest_of(b"x")})
    with client_for(liar) as c, pytest.raises(DigestMismatch):
        c.get_manifest("x", "latest")


def test_index_entry_size_must_match(liar):
    img = make_image("sized", layers=1)
    index, media_type = make_index([img])
    doc = json.loads(index)
    doc["manifests"][0]["size"] += 1
    index = json.dumps(doc).encode()
    liar.routes[("GET", "/v2/x/manifests/latest")] = lambda h: send(h, 200, index, {"Content-Type": media_type})
    liar.routes[("GET", f"/v2/x/manifests/{img.digest}")] = lambda h: send(
        h, 200, img.manifest, {"Content-Type": img.media_type})
    with client_for(liar) as c, pytest.raises(DigestMismatch):
        c.get_manifest("x", "latest", platform="linux/amd64")


def test_schema1_refused(liar):
    body = json.dumps({"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}).encode()
    liar.routes[("GET", "/v2/x/manifests/latest")] = lambda h: send(
        h, 200, body, {"Content-Type": mt.DOCKER_SCHEMA1[1]})
    with client_for(liar) as c, pytest.raises(UnsupportedManifest) as e:
        c.get_manifest("x", "latest")
    assert "schema 1" in str(e.value)


def test_401_without_challenge(liar):
    liar.routes[("GET", "/v2/x/manifests/latest")] = lambda h: send(h, 401, b"")
    with client_for(liar) as c, pytest.raises(AuthenticationRequired) as e:
        c.get_manifest("x", "latest")
    assert f"rootless login {liar.host}" in str(e.value) or "no supported scheme" in str(e.value)


def test_upload_retried_after_5xx(liar, tmp_path):
    puts = []

    def post(h):
        send(h, 202, b"", {"Location": f"/v2/x/blobs/uploads/u{len(liar.requests('POST', '/v2/x/blobs/uploads/'))}"})

    def put(h):
        body = h.rfile.read(int(h.headers["Content-Length"]))
        puts.append((h.path, body))
        if len(puts) == 1:
            send(h, 503, b"try later")
        else:
            send(h, 201, b"", {"Docker-Content-Digest": digest_of(body)})
    liar.routes[("POST", "/v2/x/blobs/uploads/")] = post
    liar.routes[("PUT", "/v2/x/blobs/uploads/u1")] = put
    liar.routes[("PUT", "/v2/x/blobs/uploads/u2")] = put
    path = tmp_path / "blob"
    path.write_bytes(BLOB)
    with client_for(liar) as c:
        c.push_blob("x", DIGEST, path)
    assert len(puts) == 2 and puts[1][1] == BLOB
    assert f"digest={DIGEST.replace(':', '%3A')}" in puts[1][0] or f"digest={DIGEST}" in puts[1][0]


def test_connection_refused():
    port = free_port()
    with RegistryClient(f"127.0.0.1:{port}", backoff=0.01, retries=1) as c, \
            pytest.raises(RegistryUnreachable) as e:
        c.get_manifest("x", "latest")
    assert f"127.0.0.1:{port}" in str(e.value)


def test_tls_required_when_insecure_false(liar):
    # insecure=False: HTTPS only, even on loopback; the plain-HTTP server cannot answer it
    with RegistryClient(liar.host, insecure=False, backoff=0.01, retries=0) as c, \
            pytest.raises(RegistryUnreachable) as e:
        c.ping()
    assert "--tls-verify=false" in str(e.value)
    assert liar.log == []


def test_redirect_to_other_host_drops_credentials(liar, tmp_path):
    """Blob storage behind a redirect (S3, a CDN) must not receive the registry credentials."""
    storage = LyingServer()
    try:
        storage.routes[("GET", "/bucket/blob")] = lambda h: send(h, 200, BLOB)

        def blob(h):
            if not h.headers.get("Authorization"):
                send(h, 401, b"", {"WWW-Authenticate": 'Basic realm="liar"'})
            else:
                send(h, 307, b"", {"Location": f"http://{storage.host}/bucket/blob"})
        liar.routes[("GET", PATH)] = blob
        from rootless.registry import Credentials
        with client_for(liar, credentials=Credentials("u", "p")) as c:
            c.fetch_blob("x", DIGEST, tmp_path / "blob", len(BLOB))
        assert (tmp_path / "blob").read_bytes() == BLOB
        [headers] = storage.requests("GET", "/bucket/blob")
        assert "Authorization" not in headers and "authorization" not in {k.lower() for k in headers}
        assert any(h.get("Authorization", "").startswith("Basic ") for h in liar.requests("GET", PATH))
    finally:
        storage.close()
