"""The build cache: what a RUN, COPY or ADD step made, by the step's cache key.

``STORE/build-cache/steps/KEY.json`` holds the layer a step made (its diff id; none for a
step that changed nothing); the layer itself lives in the store like any other.  An entry
whose layer was removed since (``image prune``) is a miss.  ``RUN --mount=type=cache``
directories live in ``STORE/build-cache/mounts/``, one per cache id, kept between builds.
``builder prune`` empties both; ``system df`` counts them.  The cache's layers are live
for garbage collection (``gc.live``) until ``builder prune`` (or ``system prune``) forgets them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

from ..atomic import write_file
from .store import Store


@dataclass(frozen=True)
class Entry:
    diff_id: str          # "" for a step that changed nothing
    created_by: str
    created: str = ""     # when the step ran (RFC 3339): a cached rebuild makes the same image


class BuildCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.base = os.path.join(store.root, "build-cache")
        self.steps = os.path.join(self.base, "steps")
        self.mounts = os.path.join(self.base, "mounts")

    def _path(self, key: str) -> str:
        return os.path.join(self.steps, key.removeprefix("sha256:") + ".json")

    def get(self, key: str) -> Entry | None:
        try:
            with open(self._path(key)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        entry = Entry(str(data.get("diff_id") or ""), str(data.get("created_by") or ""),
                      str(data.get("created_at") or ""))
        if entry.diff_id and not self.store.has_layer(entry.diff_id):
            return None                       # its layer was pruned since
        return entry

    def put(self, key: str, entry: Entry) -> None:
        os.makedirs(self.steps, mode=0o700, exist_ok=True)
        write_file(self._path(key), json.dumps({"diff_id": entry.diff_id, "created_by": entry.created_by,
                                                "created_at": entry.created, "created": time.time()}).encode())

    def mount_dir(self, cache_id: str, mode: int) -> str:
        """The persistent directory of ``RUN --mount=type=cache,id=...`` (made on first use)."""
        os.makedirs(self.mounts, mode=0o700, exist_ok=True)
        path = os.path.join(self.mounts, hashlib.sha256(cache_id.encode()).hexdigest()[:32])
        try:
            os.mkdir(path, mode)
            os.chmod(path, mode)
        except FileExistsError:
            pass
        return path

    def layers(self) -> set[str]:
        """The diff ids the cache's entries name."""
        out = set()
        try:
            names = os.listdir(self.steps)
        except FileNotFoundError:
            return out
        for name in names:
            try:
                with open(os.path.join(self.steps, name)) as f:
                    d = json.load(f).get("diff_id")
            except (OSError, ValueError):
                continue
            if d:
                out.add(d)
        return out

    def entries(self) -> int:
        try:
            return len([n for n in os.listdir(self.steps) if n.endswith(".json")])
        except FileNotFoundError:
            return 0

    def mounts_size(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.mounts):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
        return total

    def clear(self, maps) -> tuple[int, int]:
        """Forget every entry and remove the cache mounts: (entries, bytes of mounts freed)."""
        from ..sandbox.remove import remove_tree
        count, size = self.entries(), self.mounts_size()
        shutil.rmtree(self.steps, ignore_errors=True)
        if os.path.isdir(self.mounts):
            remove_tree(maps, self.mounts)     # files made in RUN steps may belong to sub-ids
        return count, size
