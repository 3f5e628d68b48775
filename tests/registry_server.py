"""A real registry for the registry tests: Debian's ``docker-registry`` (Distribution 2.8).

Three modes, each a ``RegistryServer`` bound to 127.0.0.1 on a free port with its own
storage root in a temporary directory:

- ``anonymous``: no authentication;
- ``basic``: htpasswd (bcrypt, made with ``htpasswd -Bbn``), user ``alice``/``wonderland``;
- ``token``: Bearer tokens from ``TokenServer``, a thread in the test process serving
  ``GET /token`` on 127.0.0.1 and issuing RS256 JWTs signed with a key whose self-signed
  certificate is the registry's ``rootcertbundle``.  The JWT header carries ``kid`` in
  libtrust's key-id format, which is how Distribution 2.8 finds the verifying key.

The servers are stopped by PID (terminate, wait, kill).  Nothing here contacts any host
but 127.0.0.1.  ``LyingServer`` is a tiny HTTP server whose answers the test scripts
(wrong blobs, 5xx, dropped connections) to exercise the client's error paths; ``GatedProxy``
holds a download half-way until the test lets it go on, ``TricklingProxy`` sends chosen blobs
one byte a second.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HTPASSWD_BIN = shutil.which("htpasswd") or "/usr/bin/htpasswd"
SKOPEO_BIN = shutil.which("skopeo") or "/usr/bin/skopeo"

USER = "alice"
PASSWORD = "wonderland"
SERVICE = "test-registry"
ISSUER = "test-issuer"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """Wait until ``url`` answers with any HTTP status (401 counts), or fail."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s: {last}")


# --------------------------------------------------------------------------------------
# Token server
# --------------------------------------------------------------------------------------

def libtrust_key_id(public_key: Any) -> str:
    """libtrust's key id: base32 of the first 240 bits of sha256(DER SubjectPublicKeyInfo),
    in 12 groups of 4 separated by ':' (what Distribution 2.8 matches ``kid`` against)."""
    from cryptography.hazmat.primitives import serialization
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


@dataclass
class TokenServer:
    """Issues registry tokens.  ``users`` maps name -> password; ``alice`` may do anything;
    anonymous callers get ``pull`` on repositories under ``public/`` only.  Every request is
    recorded in ``requests`` as (username or None, [scope, ...])."""

    workdir: Path
    users: dict[str, str] = field(default_factory=lambda: {USER: PASSWORD})
    requests: list[tuple[str | None, list[str]]] = field(default_factory=list)
    expire_next: int = 0          # issue this many tokens already expired (beyond the leeway)
    cert_path: Path = field(init=False)
    port: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rootless test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self.cert_path = self.workdir / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.kid = libtrust_key_id(self._key.public_key())
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def granted(self, user: str | None, scope: str) -> dict[str, Any] | None:
        parts = scope.split(":")
        if len(parts) < 3:
            return None
        typ, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
        if user is not None:
            allowed = actions
        elif typ == "repository" and name.startswith("public/"):
            allowed = [a for a in actions if a == "pull"]
        else:
            allowed = []
        return {"type": typ, "name": name, "actions": allowed}

    def issue(self, user: str | None, scopes: list[str]) -> str:
        import jwt
        now = int(time.time())
        with self._lock:
            if self.expire_next > 0:
                self.expire_next -= 1
                now -= 3600
        access = [g for g in (self.granted(user, s) for s in scopes) if g is not None]
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def start(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/token":
                    self.send_error(404)
                    return
                query = urllib.parse.parse_qs(url.query)
                scopes = [s for v in query.get("scope", []) for s in v.split(" ") if s]
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    try:
                        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    except Exception:
                        user, password = "", ""
                    if server.users.get(user) != password:
                        with server._lock:
                            server.requests.append((user, scopes))
                        body = b'{"details":"invalid username or password"}'
                        self.send_response(401)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                with server._lock:
                    server.requests.append((user, scopes))
                token = server.issue(user, scopes)
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300,
                                   "issued_at": datetime.datetime.now(datetime.timezone.utc)
                                   .isoformat()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="token-server", daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------

class RegistryServer:
    """``docker-registry serve`` on 127.0.0.1:PORT with storage under ``workdir``."""

    def __init__(self, workdir: Path, mode: str = "anonymous", token: TokenServer | None = None):
        assert mode in ("anonymous", "basic", "token")
        self.workdir = workdir
        self.mode = mode
        self.token = token
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "registry.log"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> str:
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {uuid.uuid4().hex}",
        ]
        if self.mode == "basic":
            htpasswd = self.workdir / "htpasswd"
            out = subprocess.run([HTPASSWD_BIN, "-Bbn", USER, PASSWORD], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            htpasswd.write_text(out)
            lines += ["auth:", "  htpasswd:", "    realm: test-realm", f"    path: {htpasswd}"]
        elif self.mode == "token":
            assert self.token is not None
            lines += ["auth:", "  token:", f"    realm: {self.token.realm}", f"    service: {SERVICE}",
                      f"    issuer: {ISSUER}", f"    rootcertbundle: {self.token.cert_path}"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        last: Exception | None = None
        for _ in range(3):  # the port may be taken between free_port() and the bind
            self.port = free_port()
            config = self.workdir / "config.yml"
            config.write_text(self._config())
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
            finally:
                log.close()
            try:
                _wait_http(f"{self.url}/v2/", self.proc, timeout=20)
                return
            except (RuntimeError, TimeoutError) as e:
                last = e
                self.stop()
        raise RuntimeError(f"docker-registry did not start: {last}\n{self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_registry(mode: str = "anonymous") -> Iterator[RegistryServer]:
    """Start a registry (and, for ``token``, its token server); stop both afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"rootless-registry-{mode}-"))
    token = None
    server = None
    try:
        if mode == "token":
            token = TokenServer(workdir)
            token.start()
        server = RegistryServer(workdir, mode, token)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        if token is not None:
            token.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# A scriptable liar
# --------------------------------------------------------------------------------------

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class LyingServer:
    """HTTP on 127.0.0.1:PORT answering from ``routes``: {(METHOD, path): handler}.

    ``/v2/`` answers 200 unless routed otherwise.  Each request is appended to ``log`` as
    (method, path, headers dict)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.log: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _dispatch(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                server.log.append((self.command, path, dict(self.headers.items())))
                route = server.routes.get((self.command, path))
                if route is not None:
                    route(self)
                elif path == "/v2/":
                    send(self, 200, b"{}", {"Content-Type": "application/json"})
                else:
                    send(self, 404, b'{"errors":[{"code":"NOT_FOUND","message":"not here"}]}',
                         {"Content-Type": "application/json"})

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="lying-server", daemon=True).start()

    def requests(self, method: str, path: str) -> list[dict[str, str]]:
        return [h for m, p, h in self.log if m == method and p == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
         headers: dict[str, str] | None = None, *, truncate_at: int | None = None) -> None:
    """Answer with ``status`` and ``body``; with ``truncate_at``, announce the whole body but
    send only that many bytes and drop the connection."""
    handler.send_response(status)
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(body)))
    if truncate_at is not None:
        handler.send_header("Connection", "close")
    handler.end_headers()
    if handler.command == "HEAD":
        return
    if truncate_at is not None:
        handler.wfile.write(body[:truncate_at])
        handler.wfile.flush()
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)
        return
    handler.wfile.write(body)


# --------------------------------------------------------------------------------------
# A gate in front of a registry (slow pulls without sleeping)
# --------------------------------------------------------------------------------------

class _Proxy:
    """HTTP on 127.0.0.1:PORT passing GET and HEAD requests on to ``upstream`` (``host:port``);
    ``send_body(handler, path, body)`` sends each answer's body (subclasses hold or slow it)."""

    def __init__(self, upstream: str, name: str) -> None:
        self.upstream = upstream
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                import http.client
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if "/blobs/" in self.path and resp.status in (200, 206) and len(body) > 1:
                    try:
                        proxy.send_body(self, self.path, body)
                    except OSError:         # the client hung up
                        self.close_connection = True
                    return
                self.wfile.write(body)

            do_GET = do_HEAD = _forward

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=name, daemon=True).start()

    def send_body(self, handler: http.server.BaseHTTPRequestHandler, path: str, body: bytes) -> None:
        handler.wfile.write(body)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class GatedProxy(_Proxy):
    """A proxy to ``upstream`` with a gate.

    While the gate is closed (``close_gate``), a blob download sends its headers and the first
    half of the blob, says so (``held`` is set), and waits for ``open_gate`` before the rest:
    a pull that stays in the middle of its download for as long as the test needs, with no
    timing involved.  ``only``: the digests of the blobs held (default: every blob, the
    image config included)."""

    def __init__(self, upstream: str, only: set[str] | None = None) -> None:
        self.only = only
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()
        super().__init__(upstream, "gated-proxy")

    def send_body(self, handler: http.server.BaseHTTPRequestHandler, path: str, body: bytes) -> None:
        if not self.gate.is_set() and (self.only is None or path.rsplit("/", 1)[-1] in self.only):
            half = len(body) // 2
            handler.wfile.write(body[:half])
            handler.wfile.flush()
            self.held.set()
            self.gate.wait(300)
            body = body[half:]
        handler.wfile.write(body)

    def close_gate(self) -> None:
        self.held.clear()
        self.gate.clear()

    def open_gate(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        super().close()


class TricklingProxy(_Proxy):
    """A proxy to ``upstream`` that sends the blobs named in ``trickle`` (digests) one byte per
    ``interval`` seconds: a registry that never quite stops and never gets anywhere.  Every
    request for them is counted in ``requests``."""

    def __init__(self, upstream: str, trickle: set[str], interval: float = 1.0) -> None:
        self.trickle = set(trickle)
        self.interval = interval
        self.requests = 0
        self._closing = threading.Event()
        super().__init__(upstream, "trickling-proxy")

    def send_body(self, handler: http.server.BaseHTTPRequestHandler, path: str, body: bytes) -> None:
        if path.rsplit("/", 1)[-1] not in self.trickle:
            handler.wfile.write(body)
            return
        self.requests += 1
        for i in range(len(body)):
            handler.wfile.write(body[i:i + 1])
            handler.wfile.flush()
            if self._closing.wait(self.interval):
                raise OSError("the proxy is closing")

    def close(self) -> None:
        self._closing.set()
        super().close()


# --------------------------------------------------------------------------------------
# skopeo
# --------------------------------------------------------------------------------------

def skopeo(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run skopeo with HOME in a temporary directory and no signature policy."""
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "XDG_RUNTIME_DIR": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf")}
    (home / "registries.conf").touch()
    return subprocess.run([SKOPEO_BIN, "--insecure-policy", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
