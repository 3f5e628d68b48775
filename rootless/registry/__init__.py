"""Registry client: the OCI distribution API (Docker Registry HTTP API v2).

Knows nothing of the image store: it moves bytes and JSON and verifies digests, and the
caller decides where they go.  Modules:

    reference.py        parse ``[registry/]name[:tag][@digest]`` with Docker's defaults
    auth.py             credentials files (read, login/logout writes), WWW-Authenticate, tokens
    client.py           ``RegistryClient``: manifests, blobs, uploads, mounts, tags
    manifest.py         media types, descriptors, platform selection (no I/O)
    registries_conf.py  the insecure/mirror subset of registries.conf
    errors.py           ``RegistryError`` and its subclasses (under ``RootlessError``)

Only 127.0.0.0/8, ::1 and localhost are spoken to in plain HTTP unless told otherwise.
"""

from .auth import (Credentials, default_auth_file, find_credentials, parse_www_authenticate,
                   remove_credentials, save_credentials)
from .client import ManifestResult, RegistryClient, is_loopback
from .errors import (AccessDenied, AuthenticationRequired, BlobUnknown, DigestMismatch,
                     ManifestUnknown, NotFound, RegistryError, RegistryUnreachable,
                     TooManyRequests, UnsupportedManifest)
from .manifest import Descriptor, ImageManifest, InvalidPlatform, Platform, parse_image_manifest
from .reference import InvalidReference, Reference

__all__ = [
    "AccessDenied", "AuthenticationRequired", "BlobUnknown", "Credentials", "Descriptor",
    "DigestMismatch", "ImageManifest", "InvalidPlatform", "InvalidReference", "ManifestResult",
    "ManifestUnknown", "NotFound", "Platform", "Reference", "RegistryClient", "RegistryError",
    "RegistryUnreachable", "TooManyRequests", "UnsupportedManifest", "default_auth_file",
    "find_credentials", "is_loopback", "parse_image_manifest", "parse_www_authenticate",
    "remove_credentials", "save_credentials",
]
