"""Reading and writing cgroup interface files; every error names the file."""

from __future__ import annotations

import errno
import os

from .errors import CgroupError


def read(path: str) -> str | None:
    """The file's text without the trailing newline, or None if it does not exist or cannot be read."""
    try:
        with open(path) as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read(path)
    if text is None or text.strip() in ("", "max"):
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def read_keyed(path: str) -> dict[str, str]:
    """A flat keyed file ("key value" lines: cgroup.events, memory.events, cpu.stat) as a dict."""
    out: dict[str, str] = {}
    for line in (read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if key:
            out[key] = value.strip()
    return out


def write(path: str, value: str, why: str = "") -> None:
    """Write ``value`` to ``path``; CgroupError naming the file, the value and the reason."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as e:
        raise CgroupError(f"cannot open {path} for writing: {_reason(e)}{why}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise CgroupError(f"cannot write '{value}' to {path}: {_reason(e)}{why}") from None
    finally:
        os.close(fd)


def writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def _reason(e: OSError) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (this cgroup is not delegated to you)"
    if e.errno == errno.ENOENT:
        return "no such file (the controller is not enabled for this cgroup)"
    return e.strerror or str(e)
