"""The store's event journal: what happened to containers, images, volumes and networks, for
``GET /events`` (``docker events``).

    ROOT/events.log     one JSON object a line, appended by whoever made the change (the CLI,
    ROOT/events.log.1   the API service, a container's monitor); the previous file, once the
                        journal passed MAX_BYTES

Each line is Docker's event (``Type``, ``Action``, ``Actor {ID, Attributes}``, ``time``,
``timeNano``; ``events.docker_form`` adds the older ``status``/``id``/``from``).  A line is
one ``write(2)`` on a descriptor opened with ``O_APPEND``, so concurrent writers never
interleave; a journal that cannot be written loses the event, never the change it records.
Readers read both files in order, and a follower keeps its descriptor across a rotation
(it drains the old file before it opens the new one).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

JOURNAL = "events.log"
MAX_BYTES = 1 << 20
TYPES = ("container", "image", "volume", "network")


def journal_path(store_root: str) -> str:
    return os.path.join(store_root, JOURNAL)


def emit(store_root: str, type: str, action: str, actor_id: str, attributes: dict[str, Any] | None = None) -> None:
    """Append one event.  Never raises: the change it tells of has been made already."""
    now = time.time_ns()
    event = {"Type": type, "Action": action,
             "Actor": {"ID": actor_id, "Attributes": {k: str(v) for k, v in (attributes or {}).items()}},
             "scope": "local", "time": now // 1_000_000_000, "timeNano": now}
    line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    path = journal_path(store_root)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line)
        if os.fstat(fd).st_size > MAX_BYTES:
            _rotate(fd, path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rotate(fd: int, path: str) -> None:
    """Move a full journal to ``.1`` (once: the writer holding the lock checks it is still the one)."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == ((now := os.stat(path)).st_dev, now.st_ino):
            os.rename(path, path + ".1")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def container_attributes(rec: Any, **extra: Any) -> dict[str, Any]:
    """Docker's attributes of a container event: its labels, name and image."""
    out = dict(rec.config.get("labels") or {}) if isinstance(rec.config, dict) else {}
    out.update(image=rec.image, name=rec.name, **extra)
    return out


def exec_event(store_root: str, rec: Any, action: str, command: list[str] | None = None,
               exec_id: str = "", **extra: Any) -> None:
    """An exec's event as Docker writes it: ``exec_create: CMD``, ``exec_start: CMD`` (the
    command joined by spaces) or ``exec_die``, on its container, with ``execID``."""
    name = f"{action}: {' '.join(command)}" if command else action
    emit(store_root, "container", name, rec.id, container_attributes(rec, execID=exec_id, **extra))


def docker_form(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the API sends it: the older ``status``, ``id`` and ``from`` too (clients
    before 1.22, and docker-py's examples, read them)."""
    out = dict(event)
    if event["Type"] in ("container", "image"):
        out.update(status=event["Action"], id=event["Actor"]["ID"])
        if event["Type"] == "container":
            out["from"] = event["Actor"]["Attributes"].get("image", "")
    return out


# --- reading ----------------------------------------------------------------------------------

@dataclass
class Filter:
    """``docker events --filter``: each key given must match (values of one key: any of them)."""
    filters: dict[str, list[str]]

    def check(self) -> None:
        from .errors import UsageError
        known = {"type", "event", "container", "image", "label", "volume", "network", "scope", "daemon"}
        for key in self.filters:
            if key not in known:
                raise UsageError(f"invalid filter '{key}': use one of {', '.join(sorted(known))}")

    def match(self, e: dict[str, Any]) -> bool:
        f = self.filters
        kind, actor = e.get("Type", ""), e.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        ident = actor.get("ID", "")

        def named(values: list[str], *candidates: str) -> bool:
            return any(v and (v in candidates or (len(v) >= 3 and ident.startswith(v))) for v in values)
        if f.get("type") and kind not in f["type"]:
            return False
        if f.get("event") and e.get("Action", "").split(":")[0] not in f["event"]:
            return False
        if f.get("scope") and "local" not in f["scope"]:
            return False
        if f.get("container") and not (kind == "container" and named(f["container"], ident, attrs.get("name", ""))):
            return False
        if f.get("image"):
            image = attrs.get("image", "") if kind == "container" else attrs.get("name", "")
            if not (kind in ("container", "image") and (
                    named(f["image"], ident, image) or any(v == image.split(":")[0] for v in f["image"]))):
                return False
        if f.get("volume") and not (kind == "volume" and named(f["volume"], ident)):
            return False
        if f.get("network") and not (kind == "network" and named(f["network"], ident, attrs.get("name", ""))):
            return False
        for want in f.get("label", ()):
            k, eq, v = want.partition("=")
            if k not in attrs or (eq and attrs[k] != v):
                return False
        return True


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        e = json.loads(line)
    except ValueError:
        return None                     # a line cut short by a full disk
    return e if isinstance(e, dict) and "timeNano" in e else None


def past(store_root: str, since_ns: int | None, until_ns: int | None) -> tuple[list[dict[str, Any]], "Follower"]:
    """The events of the journal from ``since_ns`` (to ``until_ns``), and a follower that
    continues exactly where they end.  ``since_ns`` None: no past events, the follower at the
    journal's end."""
    path = journal_path(store_root)
    out: list[dict[str, Any]] = []
    if since_ns is None:
        follower = Follower(path)
        if follower.fd is not None:
            os.lseek(follower.fd, 0, os.SEEK_END)
        return out, follower
    try:
        with open(path + ".1", "rb") as f:
            for line in f:
                e = _parse(line)
                if e and since_ns <= e["timeNano"] and (until_ns is None or e["timeNano"] <= until_ns):
                    out.append(e)
    except OSError:
        pass
    follower = Follower(path)
    for e in follower.read():
        if since_ns <= e["timeNano"] and (until_ns is None or e["timeNano"] <= until_ns):
            out.append(e)
    return out, follower


class Follower:
    """New lines of the journal as they are appended, across rotations.  ``close()`` frees it."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.rest = b""
        self._open()

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = None

    def _drain(self) -> Iterator[dict[str, Any]]:
        while self.fd is not None:
            data = os.read(self.fd, 1 << 16)
            if not data:
                return
            lines = (self.rest + data).split(b"\n")
            self.rest = lines.pop()
            for line in lines:
                e = _parse(line)
                if e:
                    yield e

    def read(self) -> list[dict[str, Any]]:
        """What was appended since the last call (the old file's end first, after a rotation)."""
        out = list(self._drain())
        try:
            now = os.stat(self.path)
        except OSError:
            return out
        if self.fd is None or (now.st_dev, now.st_ino) != ((st := os.fstat(self.fd)).st_dev, st.st_ino):
            self.close()
            self.rest = b""
            self._open()
            out += self._drain()
        return out

    def changed(self) -> bool:
        """Cheap: has anything been written since the last ``read``?"""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        if self.fd is None:
            return True
        st = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or now.st_size != os.lseek(self.fd, 0, os.SEEK_CUR)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


__all__ = ["emit", "past", "Follower", "Filter", "docker_form", "container_attributes", "journal_path"]
