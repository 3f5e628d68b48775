"""Image references: ``NAME[:TAG]`` with Docker's default tag."""

from __future__ import annotations

import re

from .errors import UsageError

_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def normalize(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``; raise ``UsageError`` for a malformed reference."""
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    if not _NAME.match(name) or not _TAG.match(tag):
        raise UsageError(f"invalid image reference '{ref}': use NAME[:TAG] with a lower-case name, "
                         "e.g. busybox or myimage:1.0")
    return f"{name}:{tag}"
