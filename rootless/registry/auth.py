"""Registry credentials and authentication challenges.

Credentials are read from the first file that has an entry for the registry, in the order
podman and Docker use:

    $REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json
    $XDG_CONFIG_HOME/containers/auth.json   (~/.config/containers/auth.json)
    $DOCKER_CONFIG/config.json              (~/.docker/config.json)

Each holds ``{"auths": {"KEY": {"auth": base64("user:password")}}}``; KEY is a host[:port],
a URL (``https://index.docker.io/v1/``) or a host/namespace/repository prefix (the longest
matching prefix wins).  ``credHelpers``/``credsStore`` and identity tokens are not supported.

``save_credentials``/``remove_credentials`` edit ``$REGISTRY_AUTH_FILE`` or
``~/.config/containers/auth.json``: the file is rewritten through a temporary file in the
same directory (mode 0600, fsync, rename), so a crash leaves the old or the new file, and
other keys in it are preserved.  Unreadable or malformed files raise ``RegistryError``
naming the file.

``Authenticator`` answers ``WWW-Authenticate`` challenges for one registry: Bearer tokens
fetched from the realm (anonymously, or with the basic credentials) and cached per scope set
until shortly before they expire, or Basic credentials sent directly.  It is thread-safe
(one lock; a token is fetched once even when many threads need it).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import httpx

from .. import atomic
from .errors import AuthenticationRequired, RegistryError, RegistryUnreachable
from .reference import normalize_registry


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


# --------------------------------------------------------------------------------------
# Auth files
# --------------------------------------------------------------------------------------

def _home() -> Path:
    return Path(os.environ.get("HOME") or os.path.expanduser("~"))


def default_auth_file() -> Path:
    """Where ``login`` writes: ``$REGISTRY_AUTH_FILE`` or ``$XDG_CONFIG_HOME/containers/auth.json``."""
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    config = os.environ.get("XDG_CONFIG_HOME") or str(_home() / ".config")
    return Path(config) / "containers" / "auth.json"


def auth_files() -> list[Path]:
    """The files searched for credentials, first match wins."""
    paths: list[Path] = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    elif os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config = os.environ.get("XDG_CONFIG_HOME") or str(_home() / ".config")
    paths.append(Path(config) / "containers" / "auth.json")
    docker = os.environ.get("DOCKER_CONFIG") or str(_home() / ".docker")
    paths.append(Path(docker) / "config.json")
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _read_auth_file(path: Path) -> dict[str, Any] | None:
    """The parsed file, or None when it does not exist; RegistryError when unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RegistryError(f"cannot read the credentials file {path}: {e.strerror}. Fix its "
                            "permissions or remove it") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RegistryError(f"the credentials file {path} is not valid JSON ({e}): fix or remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise RegistryError(f"the credentials file {path} has no valid \"auths\" object: fix or remove it")
    return data


def _normalize_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``Host:5000/ns/`` -> ``Host:5000/ns``."""
    key = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", key).rstrip("/")
    key = re.sub(r"/v[12]$", "", key)
    host, sep, path = key.partition("/")
    return normalize_registry(host) + (sep + path if path else "")


def _decode_entry(path: Path, key: str, entry: Any) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            raw = base64.b64decode(entry["auth"], validate=False).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise RegistryError(f"the credentials for '{key}' in {path} are not base64 of "
                                f"user:password: run 'rootless login {key}' again") from None
        user, sep, password = raw.partition(":")
        if not sep or not user:
            raise RegistryError(f"the credentials for '{key}' in {path} are not user:password: "
                                f"run 'rootless login {key}' again")
        return Credentials(user, password)
    if entry.get("username") and "password" in entry:
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def find_credentials(registry: str, repository: str | None = None,
                     files: Iterable[Path] | None = None) -> Credentials | None:
    """Credentials for ``registry`` (and ``repository``, for repository-scoped entries), or
    None.  Raises ``RegistryError`` for a file that exists but cannot be used."""
    registry = normalize_registry(registry)
    target = registry + ("/" + repository if repository else "")
    for path in (auth_files() if files is None else files):
        data = _read_auth_file(Path(path))
        if not data:
            continue
        best: tuple[int, Credentials] | None = None
        for key, entry in data.get("auths", {}).items():
            norm = _normalize_key(key)
            if norm == target or target.startswith(norm + "/"):
                creds = _decode_entry(Path(path), key, entry)
                if creds is not None and (best is None or len(norm) > best[0]):
                    best = (len(norm), creds)
        if best is not None:
            return best[1]
    return None


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic.writing(str(path)) as f:
        os.fchmod(f.fileno(), 0o600)
        f.write((json.dumps(data, indent=2) + "\n").encode())


def _key_for(registry: str) -> str:
    return normalize_registry(registry)


def save_credentials(registry: str, username: str, password: str, path: Path | None = None) -> Path:
    """Store ``username``/``password`` for ``registry`` (host[:port], or host/namespace);
    return the file written.  Raises ``RegistryError`` when the file cannot be written."""
    path = Path(path) if path is not None else default_auth_file()
    if ":" in username:
        raise RegistryError(f"the user name '{username}' contains ':', which the auth file cannot hold")
    data = _read_auth_file(path) or {}
    auths = data.setdefault("auths", {})
    key = _key_for(registry)
    for k in [k for k in auths if _normalize_key(k) == key and k != key]:
        del auths[k]
    auths[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    try:
        _write_atomic(path, data)
    except OSError as e:
        raise RegistryError(f"cannot write the credentials file {path}: {e.strerror}. Set "
                            "REGISTRY_AUTH_FILE to a writable file") from None
    return path


def remove_credentials(registry: str, path: Path | None = None) -> bool:
    """Remove the entries for ``registry``; True if there was one.  Other entries stay."""
    path = Path(path) if path is not None else default_auth_file()
    data = _read_auth_file(path)
    if not data or not data.get("auths"):
        return False
    key = _key_for(registry)
    gone = [k for k in data["auths"] if _normalize_key(k) == key]
    if not gone:
        return False
    for k in gone:
        del data["auths"][k]
    try:
        _write_atomic(path, data)
    except OSError as e:
        raise RegistryError(f"cannot write the credentials file {path}: {e.strerror}") from None
    return True


# --------------------------------------------------------------------------------------
# Challenges
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    scheme: str                      # lower-case: "bearer", "basic"
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges, e.g.
    ``Bearer realm="https://auth/token",service="reg",scope="repository:a:pull,push"``.
    Quoted values may contain commas and backslash escapes.  Unparseable tails are ignored."""
    challenges: list[tuple[str, dict[str, str]]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        m = _TOKEN.match(value, i)
        if not m:
            break
        word, i = m.group(0), m.end()
        j = i
        while j < n and value[j] in " \t":
            j += 1
        if j < n and value[j] == "=" and challenges:
            i = j + 1
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == '"':
                i += 1
                buf = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    buf.append(value[i])
                    i += 1
                i += 1
                val = "".join(buf)
            else:
                m = _TOKEN.match(value, i)
                val = m.group(0) if m else ""
                i = m.end() if m else i
                while i < n and value[i] == "=":   # token68 padding
                    val += "="
                    i += 1
            challenges[-1][1][word.lower()] = val
        else:
            challenges.append((word.lower(), {}))
            i = j
    return [Challenge(s, p) for s, p in challenges]


@dataclass
class _Token:
    value: str
    expires: float


class Authenticator:
    """Authentication state for one registry, shared by the client's threads.

    ``headers(scopes)`` gives the Authorization header to send for an operation needing
    ``scopes`` (e.g. ``["repository:x:pull"]``), fetching a token first when the registry is
    known to want Bearer.  ``challenge(response, scopes)`` is called on a 401: it records the
    challenge and returns True when a retry with new headers may succeed.  Failures raise
    ``AuthenticationRequired`` (no or rejected credentials) or ``RegistryError``."""

    def __init__(self, registry: str, credentials: Credentials | None, http: httpx.Client, *,
                 allow_http_realm: bool = False, timeout: float = 30.0):
        self.registry = registry
        self.credentials = credentials
        self._http = http
        self._allow_http_realm = allow_http_realm
        self._timeout = timeout
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self.token_requests = 0      # how many tokens were fetched (for tests and --debug)

    @property
    def scheme(self) -> str | None:
        return self._challenge.scheme if self._challenge else None

    def headers(self, scopes: Iterable[str]) -> dict[str, str]:
        with self._lock:
            ch = self._challenge
            if ch is None:
                return {}
            if ch.scheme == "basic":
                return {"Authorization": self.credentials.basic_header()} if self.credentials else {}
            if ch.scheme == "bearer":
                key = tuple(sorted(set(scopes)))
                tok = self._tokens.get(key)
                if tok is None or tok.expires <= time.monotonic():
                    tok = self._fetch_token(ch, key)
                    self._tokens[key] = tok
                return {"Authorization": f"Bearer {tok.value}"}
            return {}

    def challenge(self, response: httpx.Response, scopes: Iterable[str], what: str) -> bool:
        """Handle a 401 for ``what`` (``host/repository``); True if worth retrying."""
        parsed = parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
        usable = [c for c in parsed if c.scheme in ("bearer", "basic")]
        if not usable:
            raise AuthenticationRequired(
                f"authentication required for {what}, but the registry offers no supported scheme "
                f"({response.headers.get('WWW-Authenticate') or 'no WWW-Authenticate header'})",
                status=401)
        new = next((c for c in usable if c.scheme == "bearer"), usable[0])
        with self._lock:
            old, self._challenge = self._challenge, new
            if new.scheme == "basic":
                # Retrying helps only if we had not sent the credentials already.
                return self.credentials is not None and (old is None or old.scheme != "basic")
            key = tuple(sorted(set(scopes)))
            extra = new.params.get("scope")
            had = self._tokens.pop(key, None)
            if old is None or old.scheme != "bearer" or had is None:
                return True
            # We sent a token and were refused.  If the registry asks for a scope we did not
            # request, ask for it too; if it says the token is bad (expired, clock skew), get a
            # new one; if the scope was simply not granted, the answer will not change.
            if extra and any(s not in key for s in extra.split(" ")):
                self._tokens[key] = self._fetch_token(new, tuple(sorted(set(key) | set(extra.split(" ")))))
                return True
            return new.params.get("error") != "insufficient_scope"

    def _fetch_token(self, ch: Challenge, scopes: tuple[str, ...]) -> _Token:
        realm = ch.realm
        if not realm:
            raise RegistryError(f"{self.registry} asked for a Bearer token without a realm")
        url = httpx.URL(realm)
        loopback = url.host in ("localhost", "::1") or url.host.startswith("127.")
        if url.scheme == "http" and not (self._allow_http_realm or loopback):
            raise RegistryError(f"{self.registry} sends us for tokens to {realm}, which is not HTTPS; "
                                "refusing to send credentials there")
        if url.scheme not in ("http", "https"):
            raise RegistryError(f"{self.registry} gave an unusable token realm '{realm}'")
        params: list[tuple[str, str]] = []
        if ch.params.get("service"):
            params.append(("service", ch.params["service"]))
        for s in scopes:
            params.append(("scope", s))
        headers = {}
        if self.credentials:
            params.append(("account", self.credentials.username))
            headers["Authorization"] = self.credentials.basic_header()
        self.token_requests += 1
        try:
            r = self._http.get(url, params=params, headers=headers, timeout=self._timeout,
                               follow_redirects=True)
        except httpx.HTTPError as exc:
            raise RegistryUnreachable(f"cannot get a token for {self.registry} from {realm}: {exc}. "
                                      "Check the network") from exc
        if r.status_code in (401, 403):
            if self.credentials:
                raise AuthenticationRequired(
                    f"the credentials of '{self.credentials.username}' for {self.registry} were "
                    f"rejected: run 'rootless login {self.registry}' again", status=r.status_code)
            raise AuthenticationRequired(f"authentication required for {self.registry}: run "
                                         f"'rootless login {self.registry}'", status=r.status_code)
        if r.status_code != 200:
            raise RegistryError(f"the token server {realm} of {self.registry} answered HTTP "
                                f"{r.status_code}", status=r.status_code)
        try:
            body = r.json()
            token = body.get("token") or body.get("access_token")
            expires_in = int(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token, expires_in = None, 0
        if not token or not isinstance(token, str):
            raise RegistryError(f"the token server {realm} of {self.registry} sent no token")
        # Keep a margin so that a token does not expire between our check and its use.
        return _Token(token, time.monotonic() + max(expires_in - 10, expires_in / 2))

