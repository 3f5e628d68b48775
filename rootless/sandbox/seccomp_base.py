"""What the seccomp loader (``seccomp.py``) and the compiler (``seccomp_compile.py``) share."""

from __future__ import annotations

import os
import sys


class ProfileError(Exception):
    """A profile that cannot be read or compiled; the message names the file and the problem."""


# --- actions and comparisons (libseccomp's values, from seccomp.h) -------------------------


BPF_MAXINSNS = 4096         # the kernel's limit on one filter's length


def _cap_name(c: object) -> str:
    name = str(c).upper()
    return name[4:] if name.startswith("CAP_") else name


def _library_path() -> str | None:
    """Where libseccomp.so.2 is, found without loading it (the cache key names the file)."""
    multiarch = getattr(sys.implementation, "_multiarch", "")
    dirs = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"] if multiarch else []
    dirs += ["/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib"]
    for d in dirs:
        path = os.path.join(d, "libseccomp.so.2")
        if os.path.exists(path):
            return path
    return None
