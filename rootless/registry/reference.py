"""Image references with Docker's defaults, parsed without touching the network.

    busybox                        -> docker.io/library/busybox:latest
    user/app:1.0                   -> docker.io/user/app:1.0
    127.0.0.1:5000/x@sha256:...    -> 127.0.0.1:5000/x@sha256:...
    localhost/x                    -> localhost/x:latest

The first path component names a registry when it contains ``.`` or ``:``, is
``localhost``, or has upper-case letters (Docker's rule); otherwise the registry is
``docker.io``, whose API lives at ``registry-1.docker.io``.  Malformed references raise
``InvalidReference`` (a ``ValueError`` and a ``UsageError``) naming the bad part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

DEFAULT_REGISTRY = "docker.io"
DOCKER_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"
_DOCKER_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
                     r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
                     r"|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


class InvalidReference(UsageError, ValueError):
    """A malformed image reference; the message names the part that is wrong."""


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:`` and 64 lower-case hex digits, else raise
    ``InvalidReference`` (other algorithms are refused: they cannot be verified here)."""
    if _DIGEST.match(digest):
        return digest
    if _ANY_DIGEST.match(digest) and not digest.startswith("sha256:"):
        raise InvalidReference(f"unsupported digest algorithm in '{digest}': only sha256 is supported")
    raise InvalidReference(f"invalid digest '{digest}': expected sha256: and 64 lower-case hex digits")


def validate_tag(tag: str) -> str:
    """Return ``tag`` if valid (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``), else raise."""
    if not _TAG.match(tag):
        raise InvalidReference(f"invalid tag '{tag}': use A-Z a-z 0-9 _ . - (not first), at most 128 "
                               "characters")
    return tag


def validate_repository(repository: str) -> str:
    """Return ``repository`` (path components only, e.g. ``library/busybox``) or raise."""
    if not repository:
        raise InvalidReference("invalid repository name '': it is empty")
    for comp in repository.split("/"):
        if not _COMPONENT.match(comp):
            if comp.lower() != comp and _COMPONENT.match(comp.lower()):
                raise InvalidReference(f"invalid repository name '{repository}': '{comp}' must be "
                                       "lower-case")
            raise InvalidReference(f"invalid repository name '{repository}': component '{comp}' may "
                                   "contain only a-z, 0-9 and single separators . _ __ -")
    if len(repository) > 255:
        raise InvalidReference(f"invalid repository name '{repository[:40]}...': longer than 255 "
                               "characters")
    return repository


def normalize_registry(host: str) -> str:
    """``index.docker.io`` and friends -> ``docker.io``; others unchanged (host[:port])."""
    return DEFAULT_REGISTRY if host.lower() in _DOCKER_ALIASES else host


def api_host(registry: str) -> str:
    """The host[:port] serving the API of ``registry``: ``docker.io`` -> registry-1.docker.io."""
    return DOCKER_API_HOST if normalize_registry(registry) == DEFAULT_REGISTRY else registry


@dataclass(frozen=True)
class Reference:
    """A parsed reference.  ``tag`` is None only when a digest was given without a tag.
    ``str()`` is the canonical form ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        """Parse ``[registry/]name[:tag][@sha256:hex]``; raise ``InvalidReference``."""
        if not text or text != text.strip():
            raise InvalidReference(f"invalid reference '{text}': it is empty or has spaces")
        if "://" in text:
            raise InvalidReference(f"invalid reference '{text}': give host/name[:tag], not a URL")
        rest, digest = text, None
        if "@" in text:
            rest, _, digest = text.partition("@")
            if not digest:
                raise InvalidReference(f"invalid reference '{text}': nothing after '@'")
            validate_digest(digest)
        tag = None
        slash, colon = rest.rfind("/"), rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1:]
            if not _TAG.match(tag):
                raise InvalidReference(f"invalid reference '{text}': tag '{tag}' may contain only "
                                       "A-Z a-z 0-9 _ . - (not first), at most 128 characters")
        if not rest:
            raise InvalidReference(f"invalid reference '{text}': the name is empty")
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
            if not _DOMAIN.match(first):
                raise InvalidReference(f"invalid reference '{text}': registry '{first}' is not a valid "
                                       "host[:port]")
            registry, repository = normalize_registry(first), remainder
        else:
            registry, repository = DEFAULT_REGISTRY, rest
        if registry == DEFAULT_REGISTRY and "/" not in repository:
            repository = "library/" + repository
        try:
            validate_repository(repository)
        except InvalidReference as e:
            raise InvalidReference(f"invalid reference '{text}': {e}") from None
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry, repository, tag, digest)

    @property
    def api_host(self) -> str:
        return api_host(self.registry)

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """Docker's short form: ``busybox:latest``, ``user/app:1``, ``127.0.0.1:5000/x:1``."""
        name = self.name
        if self.registry == DEFAULT_REGISTRY:
            name = self.repository.removeprefix("library/")
        return name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, self.tag, validate_digest(digest))

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse(text: str) -> Reference:
    """Shorthand for ``Reference.parse``."""
    return Reference.parse(text)
