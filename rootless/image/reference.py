"""Image references as the store keys them: Docker's familiar ``NAME:TAG`` form.

One parser serves the store, import, load, pull and push: ``registry.reference`` (Docker's
rules); this module only picks the form tags are stored under, so that ``busybox``,
``busybox:latest``, ``docker.io/library/busybox`` and ``index.docker.io/library/busybox:latest``
all name the same image.
"""

from __future__ import annotations

from ..errors import UsageError
from ..registry.reference import InvalidReference, Reference


UNTAGGED_REPO = "localhost/untagged"   # the names of images loaded or committed without one


def normalize(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``, ``docker.io/library/busybox`` -> ``busybox:latest``,
    ``127.0.0.1:5000/x`` -> ``127.0.0.1:5000/x:latest``; raise ``UsageError`` for a malformed one."""
    try:
        return Reference.parse(ref).familiar
    except InvalidReference as e:
        raise UsageError(f"{e}: use NAME[:TAG] with a lower-case name, e.g. busybox or myimage:1.0") from None
