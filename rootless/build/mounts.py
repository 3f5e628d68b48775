"""RUN's ``--mount=`` and ``--network=`` flags, parsed and checked (the executor mounts them)."""

from __future__ import annotations

import csv
import posixpath
from dataclasses import dataclass

TYPES = ("bind", "cache", "secret", "ssh", "tmpfs")
NETWORKS = ("default", "none", "host")


class MountError(ValueError):
    """A wrong --mount; the caller adds the file and line."""


@dataclass(frozen=True)
class Mount:
    type: str                       # bind | cache | secret | ssh | tmpfs
    target: str                     # absolute, in the container
    source: str | None = None       # bind/cache: a path in `from` (default its root)
    from_: str | None = None        # bind/cache: a stage name or index, or an image; None: the context (bind)
    id: str | None = None           # cache: default the target; secret: default the target's base name
    sharing: str = "shared"         # cache: shared | private | locked
    mode: int | None = None         # cache 0o755, secret 0o400 by default
    uid: int | None = None
    gid: int | None = None
    readonly: bool = False          # bind: True unless rw
    required: bool = False          # secret/ssh: fail when the secret was not given
    size: int | None = None         # tmpfs: bytes

    @property
    def cache_material(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _bool(key: str, value: str | None) -> bool:
    if value is None or value.lower() in ("true", "1", ""):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise MountError(f"{key}={value} is not a boolean")


def _int(key: str, value: str | None, base: int = 10) -> int:
    try:
        return int(value or "", base)
    except ValueError:
        raise MountError(f"{key}={value} is not a number") from None


def _size(value: str) -> int:
    from ..errors import UsageError
    from ..units import parse_size
    try:
        return parse_size(value, "size=")
    except UsageError as e:
        raise MountError(str(e)) from None


def parse_mount(spec: str, workdir: str = "/") -> Mount:
    """One ``--mount`` value: comma-separated ``key=value`` (CSV quoting allowed)."""
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        raise MountError(f"cannot read --mount={spec}") from None
    kv: dict[str, str | None] = {}
    for f in fields:
        k, eq, v = f.partition("=")
        kv[k.strip().lower()] = v if eq else None
    typ = (kv.pop("type", None) or "bind").lower()
    if typ not in TYPES:
        raise MountError(f"unknown mount type {typ!r}; use one of {', '.join(TYPES)}")
    target = None
    for key in ("target", "dst", "destination"):
        if key in kv:
            target = kv.pop(key)
    source = None
    for key in ("source", "src"):
        if key in kv:
            source = kv.pop(key)
    m: dict = {"type": typ}
    for k, v in kv.items():
        if k in ("readonly", "ro"):
            m["readonly"] = _bool(k, v)
        elif k in ("readwrite", "rw"):
            m["readonly"] = not _bool(k, v)
        elif k == "from":
            m["from_"] = v
        elif k == "id":
            m["id"] = v
        elif k == "sharing":
            if v not in ("shared", "private", "locked"):
                raise MountError(f"sharing={v}: use shared, private or locked")
            m["sharing"] = v
        elif k == "mode":
            m["mode"] = _int(k, v, 8)
        elif k in ("uid", "gid"):
            m[k] = _int(k, v)
        elif k == "required":
            m["required"] = _bool(k, v)
        elif k == "size" and typ == "tmpfs":
            m["size"] = _size(v or "")
        else:
            raise MountError(f"unknown option {k!r} for a {typ} mount")
    if typ == "secret":
        if not target and not m.get("id"):
            raise MountError("a secret mount needs id= or target=")
        m.setdefault("id", posixpath.basename(target or ""))
        target = target or f"/run/secrets/{m['id']}"
        m.setdefault("mode", 0o400)
        m.setdefault("uid", 0)
        m.setdefault("gid", 0)
    elif typ == "ssh":
        m.setdefault("id", "default")
        target = target or "/run/buildkit/ssh_agent.0"
        m.setdefault("mode", 0o600)
    elif not target:
        raise MountError(f"a {typ} mount needs target=")
    target = posixpath.normpath(posixpath.join(workdir, target))
    if typ == "bind":
        m.setdefault("readonly", True)
        source = source or "/"
    elif typ == "cache":
        m.setdefault("id", target)
        m.setdefault("mode", 0o755)
        m.setdefault("uid", 0)
        m.setdefault("gid", 0)
    elif source is not None or m.get("from_"):
        raise MountError(f"a {typ} mount takes no source or from")
    if typ not in ("secret", "ssh") and m.get("required"):
        raise MountError(f"required= is for secret and ssh mounts, not {typ}")
    return Mount(target=target, source=source, **m)


def check_network(value: str) -> str:
    if value not in NETWORKS:
        raise MountError(f"--network={value}: use one of {', '.join(NETWORKS)}")
    return value


__all__ = ["Mount", "MountError", "check_network", "parse_mount"]
