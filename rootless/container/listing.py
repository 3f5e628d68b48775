"""``rootless ps``: the containers of a store as rows (Docker's columns), filtered."""

from __future__ import annotations

import time
from typing import Any

from ..errors import UsageError
from ..image.store import Store
from .records import Containers, Record, _alive, elsewhere, restarting

FILTER_KEYS = ("status", "name", "id", "ancestor", "network", "label", "exited", "volume", "before", "since",
               "health")
STATES = ("created", "running", "paused", "restarting", "exited", "removing")


def parse_filters(filters: list[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` filters of ``ps -f``."""
    wanted = []
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in FILTER_KEYS:
            raise UsageError(f"invalid filter '{f}': use status=, name=, id=, ancestor=, network=, "
                             "label=KEY[=VALUE], exited=CODE, volume=, before=, since= or health=")
        if key == "status" and value not in STATES + ("dead",):
            raise UsageError(f"invalid filter '{f}': the status is one of {', '.join(STATES)}")
        if key == "exited" and not value.lstrip("-").isdigit():
            raise UsageError(f"invalid filter '{f}': exited= takes an exit code")
        wanted.append((key, value))
    return wanted


def label_matches(labels: dict, wanted: str) -> bool:
    """Docker's ``label=KEY`` (present) or ``label=KEY=VALUE`` (equal)."""
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or str(labels[key]) == value)


def published(rec: Record) -> list[str]:
    """``0.0.0.0:8080->80/tcp`` lines of a container's -p options."""
    from ..network.ports import parse_port
    opts = (rec.config.get("options") or {}).get("publish") or []
    return [str(m) for spec in opts for m in parse_port(spec)]


def _status(store: Store, r: Record, running: bool) -> str:
    from ..units import human_duration
    if running:
        from .lifecycle import rootfs_lost
        from .rootfs import internal_errors
        from .health import suffix
        up = "Up " + human_duration(time.time() - float(r.config.get("started") or r.created)) + suffix(r.config)
        if r.config.get("paused"):
            up += " (Paused)"
        other = elsewhere(r)
        if other:
            return f"{up} (on {other})"     # its processes and daemon are there: nothing to judge here
        status = f"{up} (root filesystem lost: restart it)" if rootfs_lost(r) else up
        errors = len(internal_errors(store.container_dir(r.id)))
        if errors:
            status += f" ({errors} overlay error{'s' if errors > 1 else ''}: see inspect)"
        return status
    if r.state == "removing":
        return "Removal In Progress"
    if restarting(r):
        return f"Restarting ({r.exit_code}) {human_duration(time.time() - (r.finished or r.created))} ago"
    if r.state == "running":
        return "Exited (unknown): its process is gone"
    ago = human_duration(time.time() - (r.finished or r.created))
    return f"Exited ({r.exit_code}) {ago} ago" if r.exit_code is not None else "Created"


def state_of(r: Record) -> str:
    """Docker's State of a container: created, running, paused, exited or removing."""
    if r.state == "removing":
        return "removing"
    if r.state == "running" and (_alive(r.pid) or elsewhere(r)):
        return "paused" if r.config.get("paused") else "running"
    if restarting(r):
        return "restarting"
    return "created" if r.exit_code is None and r.state == "created" else "exited"


def _passes(store: Store, r: Record, state: str, key: str, values: list[str]) -> bool:
    """Whether ``r`` passes filter ``key``: one of ``values`` matches (labels: each of them)."""
    if key == "label":
        return all(label_matches(r.config.get("labels") or {}, v) for v in values)
    if key in ("before", "since"):
        pivot = Containers(store).find(values[-1])
        return r.created < pivot.created if key == "before" else r.created > pivot.created
    for v in values:
        if key == "status" and state == v:
            return True
        if key == "name" and v.lstrip("/") in r.name:
            return True
        if key == "id" and r.id.startswith(v):
            return True
        if key == "ancestor" and v in (r.image, r.image_id, r.image_id.removeprefix("sha256:")) or (
                key == "ancestor" and ":" not in v and r.image == f"{v}:latest"):
            return True
        if key == "network" and v in (r.config.get("networks") or ()):
            return True
        if key == "exited" and state == "exited" and str(r.exit_code) == v:
            return True
        if key == "volume" and any(v in (m.get("Name"), m.get("Source"), m.get("Destination"))
                                   for m in r.config.get("mounts") or ()):
            return True
        if key == "volume" and v in (r.config.get("volumes") or ()):
            return True
        if key == "health" and ((r.config.get("health") or {}).get("Status") or "none") == v:
            return True
    return False


def matching(store: Store, show_all: bool = False, filters: list[str] | None = None) -> list[tuple[Record, str]]:
    """The containers (newest first) with their state, running ones only unless ``show_all``
    (or a status or exited filter), that pass every filter (Docker's: the values of one key
    are alternatives, except labels, which must all match)."""
    wanted: dict[str, list[str]] = {}
    for k, v in parse_filters(filters or []):
        wanted.setdefault(k, []).append(v)
    if "status" in wanted or "exited" in wanted:
        show_all = True
    out = []
    for r in Containers(store).all():
        if r.config.get("builder"):
            continue            # a build's RUN step, as Docker's 'ps' does not show them
        state = state_of(r)
        if not (show_all or state in ("running", "paused", "restarting")):
            continue
        if all(_passes(store, r, state, k, vs) for k, vs in wanted.items()):
            out.append((r, state))
    return out


def ps(store: Store, show_all: bool = False, filters: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows (Id (short), Image, Command, Status, Ports, Names, ..., Driver: the storage driver
    that mounted its root at its last start) of the running containers, or all
    of them (``show_all``, or a status filter), that pass every filter."""
    from .rootfs import driver_of
    rows = []
    for r, state in matching(store, show_all, filters):
        rows.append({"Id": r.id[:12], "Image": r.image, "Command": " ".join(r.command),
                     "Status": _status(store, r, state in ("running", "paused")), "Ports": ", ".join(published(r)),
                     "Names": r.name, "State": state, "Labels": r.config.get("labels") or {},
                     "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(r.created)),
                     "Driver": driver_of(store.container_dir(r.id)) or ""})
    return rows


__all__ = ["ps", "matching", "state_of", "parse_filters", "published", "label_matches", "FILTER_KEYS"]
