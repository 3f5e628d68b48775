"""``rootless stats``: CPU, memory and pids of running containers, read from their cgroups."""

from __future__ import annotations

import json
import sys
import time

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


def _human(n: int | None) -> str:
    if n is None:
        return "--"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.4g}{unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.4g}TiB"


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


def show(store: Store, keys: list[str], stream: bool, fmt: str) -> int:
    records = Containers(store)
    while True:
        running = [r for r in records.all() if r.state == "running" and _alive(r.pid)]
        if keys:
            wanted = {records.find(k).id for k in keys}
            running = [r for r in running if r.id in wanted]
        rows = _rows(running, 0.5)
        if fmt == "json":
            print(json.dumps(rows))
        else:
            if stream:
                sys.stdout.write("\x1b[2J\x1b[H")
            print(f"{'CONTAINER ID':<14} {'NAME':<20} {'CPU %':>7}   {'MEM USAGE / LIMIT':<24} PIDS")
            for row in rows:
                cpu = f"{row['CPUPerc']:.2f}%" if row["CPUPerc"] is not None else "--"
                mem = f"{_human(row['MemUsage'])} / {_human(row['MemLimit']) if row['MemLimit'] else 'unlimited'}"
                print(f"{row['Id']:<14} {row['Name']:<20} {cpu:>7}   {mem:<24} "
                      f"{row['Pids'] if row['Pids'] is not None else '--'}")
        sys.stdout.flush()
        if not stream:
            return 0
        time.sleep(0.5)
