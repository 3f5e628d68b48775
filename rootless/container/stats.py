"""``rootless stats``: CPU, memory and pids of running containers, read from their cgroups."""

from __future__ import annotations

import time
from typing import Iterator

from .records import Containers, Record, _alive
from ..image.store import Store


def _sample(rec: Record) -> dict:
    from ..cgroups import CgroupError, attach
    if not rec.cgroup_paths:
        return {}
    try:
        return attach(rec.cgroup_paths).stats()
    except (CgroupError, OSError):
        return {}


def _rows(recs: list[Record], interval: float) -> list[dict]:
    first = {r.id: (_sample(r), time.monotonic()) for r in recs}
    time.sleep(interval)
    rows = []
    for r in recs:
        now, t1 = _sample(r), time.monotonic()
        before, t0 = first[r.id]
        cpu = None
        if "cpu_usage_usec" in now and "cpu_usage_usec" in before:
            cpu = 100.0 * (now["cpu_usage_usec"] - before["cpu_usage_usec"]) / ((t1 - t0) * 1e6)
        rows.append({"Id": r.id[:12], "Name": r.name, "CPUPerc": cpu,
                     "MemUsage": now.get("memory_usage_bytes"), "MemLimit": now.get("memory_limit_bytes"),
                     "Pids": now.get("pids_current")})
    return rows


def samples(store: Store, keys: list[str], stream: bool, interval: float = 0.5) -> Iterator[list[dict]]:
    """Rows of the running containers (``keys``: those only), one list per ``interval``; one
    list only unless ``stream``.  Row keys as Docker's --format json: Id, Name, CPUPerc,
    MemUsage, MemLimit (bytes; None: unknown or unlimited), Pids."""
    records = Containers(store)
    while True:
        running = [r for r in records.all() if r.state == "running" and _alive(r.pid)]
        if keys:
            wanted = {records.find(k).id for k in keys}
            running = [r for r in running if r.id in wanted]
        yield _rows(running, interval)
        if not stream:
            return
        time.sleep(interval)


def sample(store: Store, key: str) -> tuple[Record, dict]:
    """One reading of container ``key``'s cgroup (``{}`` when it does not run or has none):
    cpu_usage_usec, memory_usage_bytes, memory_limit_bytes, pids_current, pids_limit."""
    rec = Containers(store).find(key)
    return rec, (_sample(rec) if rec.state == "running" and _alive(rec.pid) else {})
