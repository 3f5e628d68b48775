"""The registry client's errors, all under ``rootless.errors.RootlessError``.

    RootlessError
     └── RegistryError               anything a registry or the way to it did wrong
          ├── RegistryUnreachable    connection refused, DNS, TLS, timeouts after retries
          │    └── DownloadStalled   a download that (nearly) stopped moving, after retries
          ├── AuthenticationRequired no (or rejected) credentials: the fix is ``rootless login``
          ├── AccessDenied           authenticated, but not allowed (403, or a token without the scope)
          ├── NotFound
          │    ├── ManifestUnknown   no such repository, tag or manifest
          │    └── BlobUnknown
          ├── DigestMismatch         content does not hash to the digest it was asked or announced for
          ├── UnsupportedManifest    schema 1, unknown media types, no manifest for the platform
          └── TooManyRequests        429 after retries

Each message names the registry, the repository when there is one, and the fix.  httpx's
exceptions never escape: they are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from ..errors import RootlessError


class RegistryError(RootlessError):
    """A registry operation failed.  ``status`` is the HTTP status when there was one and
    ``code`` the registry's error code (e.g. ``MANIFEST_UNKNOWN``) when it sent one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class RegistryUnreachable(RegistryError):
    pass


class DownloadStalled(RegistryUnreachable):
    pass


class AuthenticationRequired(RegistryError):
    pass


class AccessDenied(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class ManifestUnknown(NotFound):
    pass


class BlobUnknown(NotFound):
    pass


class DigestMismatch(RegistryError):
    pass


class UnsupportedManifest(RegistryError):
    pass


class TooManyRequests(RegistryError):
    pass
