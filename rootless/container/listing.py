"""``rootless ps``: the containers of a store as rows (Docker's columns), filtered."""

from __future__ import annotations

import time
from typing import Any

from ..errors import UsageError
from ..image.store import Store
from .records import Containers, Record, _alive

FILTER_KEYS = ("status", "name", "id", "ancestor", "network", "label")


def parse_filters(filters: list[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` filters of ``ps -f``."""
    wanted = []
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in FILTER_KEYS:
            raise UsageError(f"invalid filter '{f}': use status=, name=, id=, ancestor=, network= or "
                             "label=KEY[=VALUE]")
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
        status = f"{up} (root filesystem lost: restart it)" if rootfs_lost(r) else up
        errors = len(internal_errors(store.container_dir(r.id)))
        if errors:
            status += f" ({errors} overlay error{'s' if errors > 1 else ''}: see inspect)"
        return status
    if r.state == "removing":
        return "Removal In Progress"
    if r.state == "running":
        return "Exited (unknown): its process is gone"
    ago = human_duration(time.time() - (r.finished or r.created))
    return f"Exited ({r.exit_code}) {ago} ago" if r.exit_code is not None else "Created"


def ps(store: Store, show_all: bool = False, filters: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows (Id (short), Image, Command, Status, Ports, Names) of the running containers, or all
    of them (``show_all``, or a status filter), that pass every filter."""
    wanted = parse_filters(filters or [])
    if any(k == "status" for k, _ in wanted):
        show_all = True
    rows = []
    for r in Containers(store).all():
        if r.config.get("builder"):
            continue            # a build's RUN step, as Docker's 'ps' does not show them
        running = r.state == "running" and _alive(r.pid)
        if not (show_all or running):
            continue
        facts = {"status": "running" if running else ("created" if r.exit_code is None and r.state == "created"
                                                     else "exited"),
                 "name": r.name, "id": r.id, "ancestor": r.image,
                 "network": " ".join(r.config.get("networks") or ())}
        labels = r.config.get("labels") or {}
        if not all(label_matches(labels, v) for k, v in wanted if k == "label"):
            continue
        wanted_here = [(k, v) for k, v in wanted if k != "label"]
        if not all((facts[k] == v if k in ("status", "ancestor") else
                    facts[k].startswith(v) if k == "id" else v in facts[k].split() if k == "network" else
                    v in facts[k]) for k, v in wanted_here):
            continue
        rows.append({"Id": r.id[:12], "Image": r.image, "Command": " ".join(r.command),
                     "Status": _status(store, r, running), "Ports": ", ".join(published(r)), "Names": r.name,
                     "State": facts["status"], "Labels": labels,
                     "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(r.created))})
    return rows


__all__ = ["ps", "parse_filters", "published", "label_matches", "FILTER_KEYS"]
