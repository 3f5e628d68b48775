"""A client for one registry (OCI distribution spec / Docker Registry HTTP API v2).

It moves bytes and JSON and verifies digests; where they go is the caller's business.

Transport.  Plain HTTP is allowed for 127.0.0.0/8, ::1 and ``localhost`` (as Docker does),
for registries marked ``insecure`` in registries.conf, or when the caller passes
``insecure=True`` (``--tls-verify=false``); then HTTPS without certificate verification is
tried first and HTTP is used if the TLS handshake fails.  ``insecure=False`` means HTTPS
with verification, always.

Authentication.  The first request pings ``/v2/``; a 401 there tells which scheme the
registry wants.  Credentials come from ``credentials=`` or the auth files (``auth.py``);
Bearer tokens are fetched per scope set and cached.  A 401 we cannot answer raises
``AuthenticationRequired`` naming ``rootless login HOST``.

Retries.  Connection failures, timeouts, 429 and 500/502/503/504 are retried with
exponential backoff (``retries`` times, starting at ``backoff`` seconds, honouring a short
Retry-After).  A blob download interrupted mid-body resumes with ``Range`` when the server
advertised ``Accept-Ranges: bytes`` and restarts otherwise.  Uploads restart from a new
upload session.

Stalls.  A blob download that receives less than ``STALL_BYTES`` (1 KiB) in ``stall_timeout``
seconds (nothing at all, or a trickle) has stalled: it is broken off and retried like a broken
connection, and after the retries ``DownloadStalled`` names the registry and the blob.

Interruption.  ``fetch_blobs`` waits for its worker threads in the calling thread, waking
often, so a KeyboardInterrupt (Ctrl-C) arrives there at once; it then shuts down the sockets of the
downloads in flight (a blocked read returns), the workers remove their partial files, and the
interrupt goes on up within moments, not when the current blob ends.

Errors.  Every failure is a ``RegistryError`` subclass (``errors.py``); httpx exceptions are
translated with ``raise ... from exc`` and never escape.  Downloads write to a temporary file
next to the destination and rename it into place only after size and sha256 match; on any
failure the temporary file is removed and the destination is untouched.

Resources.  One ``httpx.Client`` (a connection pool) per ``RegistryClient``, safe to share
between threads; ``close()`` or ``with RegistryClient(...) as c:`` releases it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import ipaddress
import json
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import httpx

from .auth import Authenticator, Credentials, find_credentials
from .errors import (AccessDenied, AuthenticationRequired, BlobUnknown, DigestMismatch,
                     DownloadStalled, ManifestUnknown, NotFound, RegistryError, RegistryUnreachable,
                     TooManyRequests, UnsupportedManifest)
from .manifest import (ACCEPT, DOCKER_SCHEMA1, IMAGE_MANIFESTS, INDEXES, MAX_MANIFEST_SIZE,
                       Platform, detect_media_type, index_entries, load_json, select_platform,
                       sha256_digest)
from .reference import api_host, normalize_registry, validate_digest, validate_repository, validate_tag

Progress = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) as a transfer advances."""

_RETRY_STATUS = {429, 500, 502, 503, 504}
_CHUNK = 1 << 20
STALL_BYTES = 1024
_AUTO: Any = object()


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (host with or without ``:port``)."""
    h = host
    if h.startswith("["):
        h = h[1:h.find("]")]
    elif h.count(":") == 1:
        h = h.split(":")[0]
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ManifestResult:
    """A fetched manifest.  ``digest`` is sha256 of ``data`` (verified).  When an index was
    resolved to a platform, ``index_digest``/``index_data`` are the index's (Docker's
    "RepoDigest" is the index digest).  Unpacks as ``digest, media_type, data``."""

    digest: str
    media_type: str
    data: bytes
    index_digest: str | None = None
    index_data: bytes | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.digest, self.media_type, self.data))

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


class _Cancelled(Exception):
    pass


class _Stalled(Exception):
    pass


class _Cancel:
    """The stop signal of a set of downloads: ``abort()`` sets it and shuts down the sockets
    of the responses being read (registered with ``reading``), so that a worker blocked in
    a read returns at once instead of when the next byte comes."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._responses: set[httpx.Response] = set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def sleep(self, seconds: float) -> None:
        if self.event.wait(seconds):
            raise _Cancelled()

    def reading(self, resp: httpx.Response | None, on: bool) -> None:
        with self._lock:
            if resp is None:
                return
            if on:
                self._responses.add(resp)
                if self.event.is_set():
                    _shut(resp)
            else:
                self._responses.discard(resp)

    def abort(self) -> None:
        with self._lock:
            self.event.set()
            for resp in self._responses:
                _shut(resp)


def _shut(resp: httpx.Response) -> None:
    """Shut down the socket under ``resp`` (a read blocked on it returns)."""
    import socket
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Window:
    """Tells a stall: less than ``STALL_BYTES`` received in ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        self.got = 0

    def add(self, n: int) -> None:
        self.got += n
        now = time.monotonic()
        if now - self.start >= self.seconds:
            if self.got < STALL_BYTES:
                raise _Stalled()
            self.start, self.got = now, 0


class RegistryClient:
    """Operations on one registry, e.g. ``RegistryClient("127.0.0.1:5000")`` or
    ``RegistryClient("docker.io")`` (talks to registry-1.docker.io).

    ``credentials``: a ``Credentials``, None for anonymous, or (default) looked up in the
    auth files.  ``registries_conf``: a ``RegistriesConf`` consulted for ``insecure`` when
    ``insecure`` is None.  Repository names are ``library/busybox``, not references."""

    def __init__(self, registry: str, *, insecure: bool | None = None,
                 credentials: Credentials | None = _AUTO, registries_conf: Any = None,
                 timeout: float = 30.0, retries: int = 4, backoff: float = 0.5,
                 stall_timeout: float = 30.0, user_agent: str = "rootless/0.1"):
        self.registry = normalize_registry(registry)
        self.host = api_host(self.registry)
        if insecure is None and registries_conf is not None:
            insecure = True if registries_conf.is_insecure(self.registry) else None
        self.insecure = insecure
        self.allow_http = insecure is True or (insecure is None and is_loopback(self.host))
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        # no byte for stall_timeout seconds is a stall too (a trickle is told by _Window)
        self._http = httpx.Client(verify=not self.allow_http, follow_redirects=True,
                                  timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0),
                                                        read=stall_timeout),
                                  headers={"User-Agent": user_agent},
                                  limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
        if credentials is _AUTO:
            credentials = find_credentials(self.registry)
        self.auth = Authenticator(self.registry, credentials, self._http, allow_http_realm=self.allow_http,
                                  timeout=timeout)
        self._base: str | None = None
        self._base_lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- plumbing
    def _what(self, repo: str | None, ref: str | None = None) -> str:
        s = self.registry + (f"/{repo}" if repo else "")
        if ref:
            s += ("@" if ":" in ref else ":") + ref
        return s

    def _login_hint(self) -> str:
        return f"run 'rootless login {self.registry}'"

    def _sleep(self, attempt: int, response: httpx.Response | None = None,
               cancel: _Cancel | None = None) -> None:
        delay = min(self.backoff * (2 ** attempt), 10.0) * (0.75 + random.random() / 2)
        if response is not None:
            ra = response.headers.get("Retry-After", "")
            if ra.isdigit():
                delay = min(max(delay, float(ra)), 30.0)
        if cancel is not None:
            cancel.sleep(delay)
        else:
            time.sleep(delay)

    def _stalled(self, what: str, times: int) -> DownloadStalled:
        return DownloadStalled(f"{what}: the download stalled (less than {STALL_BYTES // 1024} KiB in "
                               f"{self.stall_timeout:g} s, {times} time(s) in a row); check the network "
                               f"and the registry")

    def base_url(self) -> str:
        """``https://host`` or ``http://host``, found by pinging ``/v2/`` once (thread-safe)."""
        with self._base_lock:
            if self._base is None:
                self._base = self._ping()
            return self._base

    def ping(self) -> None:
        """Check that the registry answers (and learn its auth scheme)."""
        self.base_url()

    def _ping(self) -> str:
        schemes = ["https", "http"] if self.allow_http else ["https"]
        last: Exception | None = None
        for i, scheme in enumerate(schemes):
            base = f"{scheme}://{self.host}"
            for attempt in range(self.retries + 1):
                try:
                    r = self._http.get(f"{base}/v2/", timeout=min(self.timeout, 10.0))
                except httpx.TransportError as exc:
                    last = exc
                    unresolved = _name_error(exc)
                    if unresolved is not None:     # no scheme or retry makes a name resolve
                        raise RegistryUnreachable(
                            f"the registry's host name {self.host.rsplit(':', 1)[0]} does not resolve "
                            f"({unresolved}): check its spelling, or this machine's DNS") from exc
                    if i + 1 < len(schemes):
                        break          # TLS refused, not spoken or stuck: try plain HTTP
                    if not isinstance(exc, httpx.RemoteProtocolError) and attempt < self.retries:
                        self._sleep(attempt)
                        continue
                    break
                if r.status_code in _RETRY_STATUS and attempt < self.retries:
                    self._sleep(attempt, r)
                    continue
                if r.status_code == 401:
                    self.auth.challenge(r, (), self.registry)
                elif r.status_code == 404:
                    raise RegistryError(f"{self.registry} does not speak the registry API v2 "
                                        f"({base}/v2/ answered 404)", status=404)
                return base
        hint = ("" if self.allow_http else
                "; if it serves plain HTTP or a self-signed certificate, use --tls-verify=false")
        where = self.registry if self.host == self.registry else f"{self.registry} ({self.host})"
        raise RegistryUnreachable(f"cannot reach registry {where}: {last or 'no answer'}; check the address "
                                  f"and that it is running{hint}") from last

    def check_login(self) -> None:
        """Verify the client's credentials (for ``rootless login``): for Basic, ``/v2/`` must
        accept them; for Bearer, the token server must issue a token for them and ``/v2/``
        accept it.  Raises ``AuthenticationRequired`` if they are rejected (or missing when
        the registry wants some); returns quietly for a registry without authentication."""
        self.ping()
        if self.auth.scheme is None:
            return
        if self.auth.credentials is None:
            raise AuthenticationRequired(f"{self.registry} wants credentials: give a user name and "
                                         "password", status=401)
        resp = self._request("GET", "/v2/", repo=None, scopes=(), what=self.registry)
        resp.close()
        if resp.status_code == 200:
            return
        raise self._fail(resp, self.registry, "log in to")

    def _request(self, method: str, url: str, *, repo: str | None, scopes: Iterable[str],
                 what: str, params: Any = None, headers: dict[str, str] | None = None,
                 content: Callable[[], Any] | bytes | None = None, stream: bool = False,
                 retry: bool = True) -> httpx.Response:
        """Send with auth, retrying transport failures and 5xx/429 when ``retry``.  ``url`` is a
        path below the base URL or absolute.  ``content`` may be a factory called per attempt.
        Returns the response (open if ``stream``); the caller checks its status."""
        scopes = tuple(scopes)
        if not url.startswith(("http://", "https://")):
            url = self.base_url() + url
        else:
            self.base_url()
        same_host = httpx.URL(url).netloc.decode() == self.host
        auth_retried = False
        attempt = 0
        while True:
            hdrs = dict(self.auth.headers(scopes)) if same_host else {}
            hdrs.update(headers or {})
            body = content() if callable(content) else content
            try:
                req = self._http.build_request(method, url, params=params, headers=hdrs, content=body)
                resp = self._http.send(req, stream=stream)
            except httpx.TransportError as exc:
                if retry and attempt < self.retries:
                    self._sleep(attempt)
                    attempt += 1
                    continue
                raise RegistryUnreachable(f"{method} {what}: {self.registry} did not answer: "
                                          f"{exc or type(exc).__name__}") from exc
            except httpx.HTTPError as exc:
                raise RegistryError(f"{method} {what}: {exc}") from exc
            if resp.status_code == 401 and same_host and not auth_retried:
                resp.close()
                if self.auth.challenge(resp, scopes, what):
                    auth_retried = True
                    continue
            if retry and resp.status_code in _RETRY_STATUS and attempt < self.retries:
                resp.close()
                self._sleep(attempt, resp)
                attempt += 1
                continue
            return resp

    def _fail(self, resp: httpx.Response, what: str, action: str, *, kind: str = "") -> RegistryError:
        """The exception for an unexpected response (the body is read here, bounded)."""
        try:
            raw = resp.content
        except httpx.ResponseNotRead:
            raw = b""
            if not resp.is_closed:
                try:
                    for chunk in resp.iter_bytes():
                        raw += chunk
                        if len(raw) >= 65536:
                            break
                except (httpx.HTTPError, httpx.StreamError):
                    pass
        resp.close()
        code = message = None
        missing: list[str] = []
        try:
            errs = json.loads(raw[:65536]).get("errors") or []
            if errs:
                code, message = errs[0].get("code"), errs[0].get("message")
            for e in errs:                  # detail is a digest string, or {"digest": ...}
                d = e.get("detail")
                d = d.get("digest") if isinstance(d, dict) else d
                if isinstance(d, str) and d.startswith("sha256:") and d not in missing:
                    missing.append(d)
        except (ValueError, AttributeError, TypeError):
            pass
        status = resp.status_code
        detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status == 401 or code == "UNAUTHORIZED":
            if self.auth.credentials is not None and self.auth.scheme == "basic":
                return AuthenticationRequired(f"the credentials of '{self.auth.credentials.username}' for "
                                              f"{self.registry} were rejected: {self._login_hint()} again",
                                              status=status, code=code)
            if self.auth.credentials is None:
                return AuthenticationRequired(f"authentication required for {what} (or it does not exist): "
                                              f"{self._login_hint()}", status=status, code=code)
            return AccessDenied(f"{action} {what}: access denied for user '{self.auth.credentials.username}' "
                                f"({detail}); check the name and your permissions, or "
                                f"{self._login_hint()} again", status=status, code=code)
        if status == 403 or code == "DENIED":
            return AccessDenied(f"{action} {what}: access denied ({detail}); check the name and "
                                "your permissions", status=status, code=code)
        if code in ("DIGEST_INVALID", "SIZE_INVALID"):
            return DigestMismatch(f"{action} {what}: the registry refused the content ({detail})",
                                  status=status, code=code)
        if code == "MANIFEST_BLOB_UNKNOWN" or (code == "MANIFEST_UNKNOWN" and action == "put manifest"):
            return BlobUnknown(f"{action} {what}: the registry lacks "
                               f"{', '.join(missing) or 'a blob or manifest it refers to'}; push that first",
                               status=status, code=code)
        if status == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
            if kind == "blob":
                return BlobUnknown(f"{what}: blob not found ({detail})", status=status, code=code)
            if kind == "manifest":
                return ManifestUnknown(f"{what}: not found ({detail}); check the repository name and tag",
                                       status=status, code=code)
            return NotFound(f"{action} {what}: not found ({detail})", status=status, code=code)
        if status == 429:
            return TooManyRequests(f"{action} {what}: too many requests, the registry is rate-limiting "
                                   "us; wait and try again, or log in", status=status, code=code)
        return RegistryError(f"{action} {what} failed: {detail}", status=status, code=code)

    @staticmethod
    def _pull(repo: str) -> tuple[str]:
        return (f"repository:{repo}:pull",)

    @staticmethod
    def _push(repo: str) -> tuple[str]:
        return (f"repository:{repo}:pull,push",)

    # ---------------------------------------------------------------- manifests
    def get_manifest(self, repo: str, reference: str, platform: Platform | str | None = None,
                     *, resolve: bool = True) -> ManifestResult:
        """Fetch the manifest ``reference`` (a tag or ``sha256:`` digest) of ``repo``.

        Docker schema 2 and OCI manifests are returned as they are; a manifest list or OCI
        index is resolved (unless ``resolve=False``) to the entry for ``platform`` (default:
        this host, e.g. linux/amd64), fetched by digest and checked against the entry's size.
        The digest is always sha256 of the bytes; it must equal the digest asked for and the
        registry's Docker-Content-Digest, else ``DigestMismatch``.  Raises ``ManifestUnknown``,
        ``UnsupportedManifest`` (schema 1, no entry for the platform), auth errors."""
        validate_repository(repo)
        data, media_type, digest = self._fetch_manifest(repo, reference)
        if media_type in INDEXES and resolve:
            want = Platform.parse(platform) if isinstance(platform, str) else (platform or Platform.host())
            where = self._what(repo, reference)
            entry = select_platform(index_entries(data, where), want, where)
            child, child_type, child_digest = self._fetch_manifest(repo, entry.digest)
            if len(child) != entry.size:
                raise DigestMismatch(f"{self._what(repo, entry.digest)}: the manifest is {len(child)} bytes, "
                                     f"the index says {entry.size}")
            if child_type not in IMAGE_MANIFESTS:
                raise UnsupportedManifest(f"{self._what(repo, entry.digest)}: the index entry for {want} "
                                          f"is a '{child_type}', not an image manifest")
            return ManifestResult(child_digest, child_type, child, digest, data)
        return ManifestResult(digest, media_type, data)

    def _fetch_manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        by_digest = ":" in reference
        validate_digest(reference) if by_digest else validate_tag(reference)
        what = self._what(repo, reference)
        resp = self._request("GET", f"/v2/{repo}/manifests/{reference}", repo=repo, scopes=self._pull(repo),
                             what=what, headers={"Accept": ACCEPT}, stream=True)
        try:
            if resp.status_code != 200:
                raise self._fail(resp, what, "get manifest", kind="manifest")
            buf = bytearray()
            try:
                for chunk in resp.iter_bytes():
                    buf += chunk
                    if len(buf) > MAX_MANIFEST_SIZE:
                        raise UnsupportedManifest(f"{what}: the manifest is larger than "
                                                  f"{MAX_MANIFEST_SIZE} bytes; refusing it")
            except httpx.HTTPError as exc:
                raise RegistryUnreachable(f"{what}: the connection broke while reading the manifest: "
                                          f"{exc}") from exc
            data = bytes(buf)
            content_type = resp.headers.get("Content-Type")
            header_digest = resp.headers.get("Docker-Content-Digest")
        finally:
            resp.close()
        digest = sha256_digest(data)
        if by_digest and digest != reference:
            raise DigestMismatch(f"{what}: the registry sent a manifest whose digest is {digest}; "
                                 "refusing it")
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatch(f"{what}: the registry says the manifest is {header_digest} but its "
                                 f"content hashes to {digest}; refusing it")
        doc = load_json(data, what)
        media_type = detect_media_type(doc, content_type)
        if media_type in DOCKER_SCHEMA1:
            raise UnsupportedManifest(f"{what} is a Docker schema 1 image, which is not supported: push "
                                      "it again with a current Docker or skopeo")
        if media_type not in IMAGE_MANIFESTS + INDEXES:
            raise UnsupportedManifest(f"{what}: unsupported manifest type '{media_type}' (not an image)")
        return data, media_type, digest

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """Upload a manifest under ``reference`` (tag, or its own digest); return its digest.
        Blobs (and, for an index, manifests) it refers to must be in ``repo`` first: the
        registry checks, and ``BlobUnknown`` names the missing one otherwise."""
        validate_repository(repo)
        digest = sha256_digest(data)
        if ":" not in reference:
            validate_tag(reference)
        elif reference != digest:
            raise DigestMismatch(f"put manifest {self._what(repo, reference)}: the manifest's digest is "
                                 f"{digest}, not {reference}")
        what = self._what(repo, reference)
        resp = self._request("PUT", f"/v2/{repo}/manifests/{reference}", repo=repo, scopes=self._push(repo),
                             what=what, headers={"Content-Type": media_type}, content=data)
        if resp.status_code not in (200, 201, 202):
            raise self._fail(resp, what, "put manifest")
        resp.close()
        got = resp.headers.get("Docker-Content-Digest")
        if got and got.startswith("sha256:") and got != digest:
            raise DigestMismatch(f"put manifest {what}: the registry stored {got}, we sent {digest}")
        return digest

    def list_tags(self, repo: str) -> list[str]:
        """All tags of ``repo``, following ``Link: <...>; rel="next"`` pages."""
        validate_repository(repo)
        what = self._what(repo)
        url: str | None = f"/v2/{repo}/tags/list"
        tags: list[str] = []
        seen = set()
        while url and url not in seen:
            seen.add(url)
            resp = self._request("GET", url, repo=repo, scopes=self._pull(repo), what=what)
            if resp.status_code != 200:
                raise self._fail(resp, what, "list tags of", kind="manifest")
            try:
                tags += resp.json().get("tags") or []
            except (ValueError, AttributeError) as exc:
                raise RegistryError(f"list tags of {what}: the registry sent no valid JSON") from exc
            nxt = resp.links.get("next", {}).get("url")
            url = str(resp.url.join(nxt)) if nxt else None
        return tags

    # ---------------------------------------------------------------- blobs: read
    def blob_exists(self, repo: str, digest: str) -> bool:
        """True if the registry has ``digest`` in ``repo`` (HEAD)."""
        validate_digest(digest)
        what = self._what(repo, digest)
        resp = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo, scopes=self._pull(repo), what=what)
        resp.close()
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, what, "check blob")

    def get_blob(self, repo: str, digest: str, max_size: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (an image config) in memory, verified.  Larger than ``max_size`` is
        refused (``RegistryError``)."""
        validate_digest(digest)
        what = self._what(repo, digest)
        for attempt in range(self.retries + 1):
            resp = self._request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo, scopes=self._pull(repo),
                                 what=what, stream=True)
            try:
                if resp.status_code != 200:
                    raise self._fail(resp, what, "get blob", kind="blob")
                buf = bytearray()
                window = _Window(self.stall_timeout)
                for chunk in resp.iter_bytes():
                    buf += chunk
                    window.add(len(chunk))
                    if len(buf) > max_size:
                        raise RegistryError(f"{what}: the blob is larger than {max_size} bytes")
                break
            except (httpx.ReadTimeout, _Stalled):
                if attempt >= self.retries:
                    raise self._stalled(what, attempt + 1) from None
                self._sleep(attempt)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise RegistryUnreachable(f"{what}: the connection broke while reading: {exc}") from exc
                self._sleep(attempt)
            finally:
                resp.close()
        data = bytes(buf)
        if sha256_digest(data) != digest:
            raise DigestMismatch(f"{what}: the registry sent content whose digest is {sha256_digest(data)}; "
                                 "refusing it")
        return data

    def fetch_blob(self, repo: str, digest: str, dest_path: str | os.PathLike[str],
                   expected_size: int | None = None, progress: Progress | None = None,
                   *, fsync: bool = True, watch: Callable[[str, int], None] | None = None,
                   _cancel: _Cancel | None = None) -> int:
        """Download blob ``digest`` of ``repo`` to ``dest_path``; return its size.

        Streams into a temporary file in ``dest_path``'s directory, then checks the size
        (``expected_size``, when given; more bytes than that abort at once) and the sha256,
        and renames it to ``dest_path`` (replacing any file there).  A broken connection or a
        stall is resumed with ``Range`` if the server supports it, else restarted, up to
        ``retries`` times.  Raises ``DigestMismatch``, ``BlobUnknown``, ``RegistryUnreachable``,
        ``DownloadStalled``...; on any
        error nothing is left at ``dest_path`` by this call and the temporary file is gone.

        ``watch(temporary path, bytes)`` hears, in the downloading thread, how much of the blob is
        in the temporary file so far (written out, readable by another descriptor), and ``-1``
        when the download starts over from its first byte (a server that cannot resume): so
        that a reader may follow the download (unpack it as it comes)."""
        validate_digest(digest)
        dest = Path(dest_path)
        what = self._what(repo, digest)
        try:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        except OSError as e:
            raise RegistryError(f"cannot create a temporary file in {dest.parent} for {what}: "
                                f"{e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                size = self._download(repo, digest, what, f, expected_size, progress, _cancel,
                                      (lambda done: watch(tmp, done)) if watch else None)
                if fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, dest)
            tmp = ""
            return size
        except OSError as e:
            raise RegistryError(f"cannot write {what} to {dest}: {e.strerror}") from None
        finally:
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _download(self, repo: str, digest: str, what: str, f: Any, expected_size: int | None,
                  progress: Progress | None, cancel: _Cancel | None,
                  watch: Callable[[int], None] | None = None) -> int:
        h = hashlib.sha256()
        done = 0
        resumable = False
        failures = 0
        stalls = 0
        while True:
            headers = {"Range": f"bytes={done}-"} if done and resumable else {}
            resp = self._request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo, scopes=self._pull(repo),
                                 what=what, headers=headers, stream=True)
            if cancel is not None:
                cancel.reading(resp, True)
            try:
                if resp.status_code == 206 and headers:
                    cr = resp.headers.get("Content-Range", "")
                    if not cr.startswith(f"bytes {done}-"):
                        raise RegistryError(f"{what}: the registry resumed at the wrong place ({cr!r})")
                elif resp.status_code == 200:
                    if done:                    # no resume: start over
                        f.seek(0)
                        f.truncate()
                        h = hashlib.sha256()
                        done = 0
                        if watch:
                            watch(-1)
                    resumable = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
                else:
                    raise self._fail(resp, what, "get blob", kind="blob")
                total = expected_size
                if total is None and resp.headers.get("Content-Length", "").isdigit():
                    total = done + int(resp.headers["Content-Length"])
                if progress:
                    progress(done, total)
                window = _Window(self.stall_timeout)
                for chunk in resp.iter_bytes():
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled()
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    window.add(len(chunk))
                    if expected_size is not None and done > expected_size:
                        raise DigestMismatch(f"{what}: the registry sent more than the expected "
                                             f"{expected_size} bytes; refusing it")
                    if progress:
                        progress(done, total)
                    if watch:
                        f.flush()
                        watch(done)
                break
            except (httpx.TransportError, _Stalled) as exc:
                if cancel is not None and cancel.is_set():
                    raise _Cancelled() from None       # our own abort() broke the connection
                failures += 1
                stalls = stalls + 1 if isinstance(exc, (_Stalled, httpx.ReadTimeout)) else 0
                if failures > self.retries:
                    if stalls:
                        raise self._stalled(what, stalls) from None
                    raise RegistryUnreachable(f"{what}: the connection broke {failures} times during the "
                                              f"download ({exc or type(exc).__name__}); try again") from exc
                f.flush()
                self._sleep(failures - 1, cancel=cancel)
            finally:
                if cancel is not None:
                    cancel.reading(resp, False)
                resp.close()
        if expected_size is not None and done != expected_size:
            raise DigestMismatch(f"{what}: the registry sent {done} bytes, expected {expected_size}; "
                                 "refusing it")
        got = "sha256:" + h.hexdigest()
        if got != digest:
            raise DigestMismatch(f"{what}: the registry sent content whose digest is {got}; refusing it")
        return done

    def fetch_blobs(self, repo: str, blobs: Iterable[tuple[str, str | os.PathLike[str], int | None]],
                    *, max_workers: int = 4,
                    progress: Callable[[str, int, int | None], None] | None = None,
                    on_done: Callable[[str], None] | None = None,
                    watch: Callable[[str, str, int], None] | None = None, fsync: bool = True) -> None:
        """Download several blobs in parallel: ``blobs`` is (digest, dest_path, size or None).
        ``progress`` gets (digest, done, total) from the worker threads; ``on_done(digest)`` is
        called in the calling thread as each blob is complete (verified, at its dest_path),
        while the others go on downloading (an exception from it stops them).  On the first error
        the other downloads are stopped and the error is raised; completed blobs stay.  An
        exception in the calling thread meanwhile (KeyboardInterrupt) stops them too, at once
        (their sockets are shut down), and goes on up once the workers have cleaned up.
        ``watch(digest, temporary path, bytes)`` and ``fsync``: as ``fetch_blob``'s."""
        items = list(blobs)
        cancel = _Cancel()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_workers),
                                                   thread_name_prefix="blob") as pool:
            futures = []
            for digest, dest, size in items:
                cb = (lambda done, total, d=digest: progress(d, done, total)) if progress else None
                wcb = (lambda path, done, d=digest: watch(d, path, done)) if watch else None
                futures.append(pool.submit(self.fetch_blob, repo, digest, dest, size, cb, watch=wcb,
                                           fsync=fsync, _cancel=cancel))
            first: BaseException | None = None
            try:
                for fut in self._as_completed(futures):
                    exc = fut.exception()
                    if exc is not None and not isinstance(exc, _Cancelled) and first is None:
                        first = exc
                        cancel.abort()
                        for other in futures:
                            other.cancel()
                    elif exc is None and on_done is not None and first is None:
                        on_done(items[futures.index(fut)][0])
            except BaseException:
                cancel.abort()
                for other in futures:
                    other.cancel()
                raise
        if first is not None:
            raise first

    @staticmethod
    def _as_completed(futures: list[concurrent.futures.Future]) -> Iterator[concurrent.futures.Future]:
        """``as_completed``, waking every 0.2 s: a signal the kernel gave to a worker thread
        only runs its Python handler (KeyboardInterrupt) once this thread is back in the
        interpreter, and an untimed wait would keep it out until a download ends."""
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.2,
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            yield from done

    # ---------------------------------------------------------------- blobs: write
    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Ask the registry to link ``digest`` from ``from_repo`` into ``repo`` without
        uploading.  True if it did (201); False if it cannot (the upload session it opened
        instead is cancelled), and the caller should push the blob."""
        validate_digest(digest)
        validate_repository(from_repo)
        what = self._what(repo, digest)
        resp = self._request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo,
                             scopes=self._push(repo) + self._pull(from_repo), what=what,
                             params={"mount": digest, "from": from_repo})
        resp.close()
        if resp.status_code == 201:
            return True
        if resp.status_code == 202:
            loc = resp.headers.get("Location")
            if loc:
                try:
                    self._request("DELETE", str(resp.url.join(loc)), repo=repo, scopes=self._push(repo),
                                  what=what, retry=False).close()
                except RegistryError:
                    pass
            return False
        raise self._fail(resp, what, "mount blob")

    def ensure_blob(self, repo: str, digest: str, path: str | os.PathLike[str], *,
                    mount_from: Iterable[str] = (), progress: Progress | None = None) -> str:
        """Make ``digest`` present in ``repo`` the cheapest way: ``"exists"`` if it already
        is, ``"mounted"`` if a repository of ``mount_from`` (same registry) lent it, else
        ``"pushed"`` after uploading ``path``."""
        if self.blob_exists(repo, digest):
            return "exists"
        for other in mount_from:
            if other != repo and self.mount_blob(repo, digest, other):
                return "mounted"
        self.push_blob(repo, digest, path, progress)
        return "pushed"

    def push_blob(self, repo: str, digest: str, path: str | os.PathLike[str],
                  progress: Progress | None = None, *, chunk_size: int | None = None) -> None:
        """Upload the file ``path`` as blob ``digest`` of ``repo``: POST an upload session,
        then one PUT with the whole body (default) or PATCHes of ``chunk_size`` bytes and a
        closing PUT.  The registry verifies the digest (``DigestMismatch`` if the file does
        not hash to it).  Failures restart the upload up to ``retries`` times.  It does not
        check first whether the blob exists: call ``blob_exists``/``mount_blob`` for that."""
        validate_digest(digest)
        validate_repository(repo)
        path = Path(path)
        what = self._what(repo, digest)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise RegistryError(f"cannot read {path} to push {what}: {e.strerror}") from None
        for attempt in range(self.retries + 1):
            try:
                self._upload_once(repo, digest, path, size, what, progress, chunk_size)
                return
            except (RegistryUnreachable, _Retryable) as exc:
                if attempt >= self.retries:
                    if isinstance(exc, _Retryable):
                        raise exc.error from None
                    raise
                self._sleep(attempt)

    def _upload_once(self, repo: str, digest: str, path: Path, size: int, what: str,
                     progress: Progress | None, chunk_size: int | None) -> None:
        scopes = self._push(repo)
        resp = self._request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo, scopes=scopes, what=what)
        resp.close()
        if resp.status_code != 202 or not resp.headers.get("Location"):
            raise self._fail(resp, what, "start upload of")
        location = resp.url.join(resp.headers["Location"])

        def body(start: int, length: int) -> Iterator[bytes]:
            with open(path, "rb") as f:
                f.seek(start)
                left = length
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        raise RegistryError(f"{path} became shorter while pushing {what}")
                    left -= len(chunk)
                    yield chunk
                    if progress:
                        progress(start + length - left, size)

        def check(resp: httpx.Response, ok: tuple[int, ...], action: str) -> None:
            if resp.status_code in ok:
                resp.close()
                return
            err = self._fail(resp, what, action)
            if resp.status_code in _RETRY_STATUS:
                raise _Retryable(err)
            raise err

        if progress:
            progress(0, size)
        if chunk_size is None or size <= chunk_size:
            url = location.copy_merge_params({"digest": digest})
            resp = self._request("PUT", str(url), repo=repo, scopes=scopes, what=what, retry=False,
                                 headers={"Content-Type": "application/octet-stream",
                                          "Content-Length": str(size)},
                                 content=lambda: body(0, size))
            check(resp, (201, 204), "upload")
        else:
            start = 0
            while start < size:
                n = min(chunk_size, size - start)
                resp = self._request("PATCH", str(location), repo=repo, scopes=scopes, what=what, retry=False,
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Length": str(n),
                                              "Content-Range": f"{start}-{start + n - 1}"},
                                     content=lambda s=start, n=n: body(s, n))
                check(resp, (202, 204), "upload a chunk of")
                if resp.headers.get("Location"):
                    location = resp.url.join(resp.headers["Location"])
                start += n
            url = location.copy_merge_params({"digest": digest})
            resp = self._request("PUT", str(url), repo=repo, scopes=scopes, what=what, retry=False,
                                 headers={"Content-Length": "0"}, content=b"")
            check(resp, (201, 204), "finish upload of")
        got = resp.headers.get("Docker-Content-Digest")
        if got and got.startswith("sha256:") and got != digest:
            raise DigestMismatch(f"upload {what}: the registry stored {got}")


class _Retryable(Exception):
    def __init__(self, error: RegistryError):
        super().__init__(str(error))
        self.error = error


def _name_error(exc: BaseException) -> str | None:
    """The resolver's words when ``exc`` comes from a host name that did not resolve."""
    import socket
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return e.strerror or str(e)
        e = e.__cause__ or e.__context__
    text = str(exc)
    for marker in ("Name or service not known", "Temporary failure in name resolution",
                   "No address associated with hostname", "nodename nor servname"):
        if marker in text:
            return marker
    return None
