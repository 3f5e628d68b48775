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

How the engine uses it (``pull``)::

    ref = Reference.parse("busybox")                      # docker.io/library/busybox:latest
    with RegistryClient(ref.registry, insecure=None if tls_verify else True) as c:
        m = c.get_manifest(ref.repository, ref.reference, platform)   # verified, index resolved
        image = parse_image_manifest(m.data)              # config + layer descriptors
        config = c.get_blob(ref.repository, image.config.digest)
        c.fetch_blobs(ref.repository, [(l.digest, tmp_path_for(l), l.size) for l in image.layers
                                       if not already_in_store(l.digest)])
        # store m.data under m.digest (the bytes as received keep the digest), the config,
        # the layers; tag -> m.digest; m.index_digest is Docker's RepoDigest when not None.

``push``: for each layer and the config, skip if ``blob_exists``, else try ``mount_blob``
from a repository of the same registry known to hold it, else ``push_blob``; then
``put_manifest(repo, tag, manifest_bytes, media_type)``.  ``login``: check the credentials
with ``RegistryClient(host, credentials=Credentials(u, p)).check_login()``, then
``save_credentials``; ``logout``: ``remove_credentials``.
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
