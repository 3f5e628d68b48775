"""Container records in the store: ``containers/ID/config.json``, names, ids, removal."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import RootlessError, UsageError
from .remove import remove_tree
from .sandbox import idmap
from .store import Store

_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
               "nimble", "proud", "quiet", "sharp", "tender", "vivid", "witty", "zen")
_NOUNS = ("otter", "lynx", "heron", "badger", "falcon", "panda", "beaver", "gecko", "marten", "orca",
          "puffin", "raven", "stoat", "tapir", "wombat", "yak", "zebu", "ibis")


@dataclass
class Record:
    id: str
    name: str
    image: str
    image_id: str
    command: list[str]
    created: float
    state: str = "created"            # created, running, exited
    pid: int = 0
    exit_code: int | None = None
    finished: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    oom_killed: bool = False
    cgroup_paths: list[str] = field(default_factory=list)
    init_pid: int = 0                 # host pid of the container's PID 1 while it runs


class Containers:
    def __init__(self, store: Store):
        self.store = store

    def _path(self, cid: str) -> str:
        return os.path.join(self.store.container_dir(cid), "config.json")

    def all(self) -> list[Record]:
        out = []
        base = os.path.join(self.store.root, "containers")
        for cid in os.listdir(base):
            try:
                with open(self._path(cid)) as f:
                    out.append(Record(**json.load(f)))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(out, key=lambda r: r.created, reverse=True)

    def save(self, rec: Record) -> None:
        """Write the record atomically; nothing if the container was removed meanwhile."""
        if not os.path.isdir(self.store.container_dir(rec.id)):
            return
        path = self._path(rec.id)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(rec), f)
        os.rename(tmp, path)

    def create(self, image: str, image_id: str, command: list[str], name: str | None) -> Record:
        """Reserve an id and a unique name (call with the store locked)."""
        taken = {r.name: r.id for r in self.all()}
        if name:
            if not _valid_name(name):
                raise UsageError(f"invalid container name '{name}': use letters, digits, '_', '.' and '-', "
                                 "starting with a letter or digit")
            if name in taken:
                raise RootlessError(f"the container name '{name}' is already in use by container "
                                    f"{taken[name][:12]}: remove it with 'rootless rm {name}' or choose another name")
        else:
            name = next((n for n in (_random_name() for _ in range(100)) if n not in taken), None)
            name = name or f"c_{os.urandom(4).hex()}"
        cid = os.urandom(32).hex()
        os.makedirs(self.store.container_dir(cid), mode=0o700)
        rec = Record(cid, name, image, image_id, command, time.time())
        self.save(rec)
        return rec

    def find(self, key: str) -> Record:
        recs = self.all()
        for r in recs:
            if r.name == key or r.id == key:
                return r
        matches = [r for r in recs if r.id.startswith(key)] if len(key) >= 3 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"container id prefix '{key}' is ambiguous: give more characters")
        raise RootlessError(f"no such container: '{key}' ('rootless ps -a' lists them)")

    def remove(self, rec: Record, maps: idmap.IdMaps, force: bool = False) -> None:
        monitor = int(rec.config.get("monitor") or 0) if rec.config.get("monitor") != os.getpid() else 0
        if monitor and _alive(monitor) and not (rec.state == "running" and _alive(rec.pid)):
            _wait_gone(monitor, 5)  # finishing its clean-up, or between two runs of a restart policy
        alive = (rec.state == "running" and _alive(rec.pid)) or bool(monitor and _alive(monitor))
        if alive and not force:
            raise RootlessError(f"container {rec.name} is running: stop it first, or use 'rootless rm -f'")
        if alive:
            # The monitor first: the container dies with it (parent-death signals), and it must
            # not write the record back into the directory we remove.
            for pid in (monitor, rec.pid):
                if pid and pid != os.getpid() and _alive(pid):
                    os.kill(pid, 9)
                    _wait_gone(pid)
        remove_tree(maps, self.store.container_dir(rec.id))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it waits only for its parent to read its status)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.01)


def _random_name() -> str:
    a, b = os.urandom(2)
    return f"{_ADJECTIVES[a % len(_ADJECTIVES)]}_{_NOUNS[b % len(_NOUNS)]}"


def _valid_name(name: str) -> bool:
    import re
    return bool(re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name))
