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

# The names below are imported from their modules on first use (PEP 562): the reference
# parser is on every container's start path (the store keys images by it), and must not pay
# for httpx, which only the modules that talk to a registry need.
_WHERE = {
    "auth": ("Credentials", "default_auth_file", "find_credentials", "parse_www_authenticate",
             "remove_credentials", "save_credentials"),
    "client": ("ManifestResult", "RegistryClient", "is_loopback"),
    "errors": ("AccessDenied", "AuthenticationRequired", "BlobUnknown", "DigestMismatch", "DownloadStalled",
               "ManifestUnknown",
               "NotFound", "RegistryError", "RegistryUnreachable", "TooManyRequests", "UnsupportedManifest"),
    "manifest": ("Descriptor", "ImageManifest", "InvalidPlatform", "Platform", "parse_image_manifest"),
    "reference": ("InvalidReference", "Reference"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
