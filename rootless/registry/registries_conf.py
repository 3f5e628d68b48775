"""A small subset of containers-registries.conf(5), version 2.

Read from ``$CONTAINERS_REGISTRIES_CONF`` or ``$XDG_CONFIG_HOME/containers/registries.conf``
(``~/.config/containers/registries.conf``); the system-wide ``/etc/containers`` file is not
read (the engine resolves short names the Docker way, to docker.io).  Understood::

    unqualified-search-registries = ["docker.io"]
    [[registry]]
    prefix = "docker.io"                 # optional, defaults to location; "*.example.com" works
    location = "mirror.local:5000/hub"
    insecure = true                      # plain HTTP / no TLS verification
    blocked = false
    [[registry.mirror]]
    location = "127.0.0.1:5001/hub"
    insecure = true

Other keys are ignored.  A file that is not valid TOML or has wrong types raises
``RegistryError`` naming the file.  No I/O beyond reading the one file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RegistryError
from .reference import normalize_registry


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False


@dataclass(frozen=True)
class RegistryEntry:
    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()

    def matches(self, name: str) -> bool:
        """Does ``name`` (``host[/path]``) fall under this entry's prefix?"""
        if self.prefix.startswith("*."):
            host = name.split("/", 1)[0]
            return host.endswith(self.prefix[1:])
        return name == self.prefix or name.startswith(self.prefix + "/")

    def rewrite(self, name: str, location: str) -> str:
        if self.prefix.startswith("*."):
            return name
        return location + name[len(self.prefix):]


@dataclass(frozen=True)
class Source:
    """Where to try pulling ``registry/repository`` from, in order."""
    registry: str
    repository: str
    insecure: bool
    mirror: bool


@dataclass(frozen=True)
class RegistriesConf:
    unqualified_search_registries: tuple[str, ...] = ()
    registries: tuple[RegistryEntry, ...] = ()
    path: Path | None = None

    def find(self, name: str) -> RegistryEntry | None:
        """The entry with the longest prefix matching ``name`` (host or host/repository)."""
        best = None
        for e in self.registries:
            if e.matches(name) and (best is None or len(e.prefix) > len(best.prefix)):
                best = e
        return best

    def is_insecure(self, host: str) -> bool:
        """True if ``host`` (a registry or mirror location's host) is marked insecure."""
        host = normalize_registry(host)
        for e in self.registries:
            if e.insecure and (e.location.split("/", 1)[0] == host or e.matches(host)):
                return True
            for m in e.mirrors:
                if m.insecure and m.location.split("/", 1)[0] == host:
                    return True
        return False

    def pull_sources(self, registry: str, repository: str) -> list[Source]:
        """Mirrors first, then the (possibly relocated) registry itself.  Raises
        ``RegistryError`` if the registry is blocked."""
        registry = normalize_registry(registry)
        name = f"{registry}/{repository}"
        e = self.find(name)
        if e is None:
            return [Source(registry, repository, False, False)]
        if e.blocked:
            raise RegistryError(f"pulling from {name} is blocked by {self.path or 'registries.conf'}")
        out = []
        for m in e.mirrors:
            host, _, repo = e.rewrite(name, m.location).partition("/")
            out.append(Source(host, repo, m.insecure, True))
        host, _, repo = e.rewrite(name, e.location).partition("/")
        out.append(Source(host, repo, e.insecure, False))
        return out


def default_path() -> Path:
    if os.environ.get("CONTAINERS_REGISTRIES_CONF"):
        return Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "containers" / "registries.conf"


def _str(v: Any, path: Path, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise RegistryError(f"{path}: '{key}' must be a non-empty string")
    return v.rstrip("/")


def _bool(v: Any, path: Path, key: str) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise RegistryError(f"{path}: '{key}' must be true or false")
    return v


def load(path: str | os.PathLike[str] | None = None) -> RegistriesConf:
    """Parse the file (default: ``default_path()``); an absent file gives an empty config."""
    p = Path(path) if path is not None else default_path()
    try:
        with open(p, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return RegistriesConf(path=p)
    except OSError as e:
        raise RegistryError(f"cannot read {p}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{p} is not valid TOML ({e}): fix it or remove it") from None
    search = doc.get("unqualified-search-registries", [])
    if not isinstance(search, list) or not all(isinstance(s, str) for s in search):
        raise RegistryError(f"{p}: 'unqualified-search-registries' must be a list of strings")
    entries = []
    regs = doc.get("registry", [])
    if not isinstance(regs, list):
        raise RegistryError(f"{p}: use [[registry]] tables")
    for r in regs:
        if not isinstance(r, dict):
            raise RegistryError(f"{p}: use [[registry]] tables")
        location = _str(r.get("location") or r.get("prefix"), p, "registry.location")
        prefix = _str(r.get("prefix") or location, p, "registry.prefix")
        mirrors = []
        for m in r.get("mirror", []) or []:
            if not isinstance(m, dict):
                raise RegistryError(f"{p}: use [[registry.mirror]] tables")
            mirrors.append(Mirror(_str(m.get("location"), p, "registry.mirror.location"),
                                  _bool(m.get("insecure"), p, "registry.mirror.insecure")))
        entries.append(RegistryEntry(normalize_prefix(prefix), normalize_prefix(location),
                                     _bool(r.get("insecure"), p, "registry.insecure"),
                                     _bool(r.get("blocked"), p, "registry.blocked"), tuple(mirrors)))
    return RegistriesConf(tuple(search), tuple(entries), p)


def normalize_prefix(name: str) -> str:
    host, sep, rest = name.partition("/")
    return normalize_registry(host) + sep + rest
