"""``rootless system prune``: what ``container prune``, ``network prune``, ``image prune`` and
(with ``volumes``) ``volume prune`` remove, in that order (a removed container no longer keeps
its image, network or volumes in use), then the build cache (``builder prune``), and the
space it freed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .container import lifecycle
from .container.records import Containers, running
from .image import gc
from .image.store import Store
from .network.user_networks import Networks
from .sandbox import idmap
from .volumes import Volumes


@dataclass
class Pruned:
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    images: gc.Collected = field(default_factory=gc.Collected)
    build_cache: int = 0                 # entries forgotten
    reclaimed: int = 0


def prune(store: Store, all_images: bool = False, volumes: bool = False) -> Pruned:
    """Stopped containers, unused networks, dangling images (``all_images``: every image no
    container uses), and with ``volumes`` the anonymous volumes no container uses."""
    maps = idmap.detect()
    out = Pruned()
    sizes = {r.id: gc.container_size(store, r.id) for r in Containers(store).all() if not running(r)}
    out.containers = lifecycle.prune(store)
    out.reclaimed += sum(sizes.get(cid, 0) for cid in out.containers)
    out.networks = Networks(store).prune()
    if volumes:
        out.volumes, space = Volumes(store).prune(maps, all_volumes=False)
        out.reclaimed += space
    from .image.buildcache import BuildCache
    out.build_cache, space = BuildCache(store).clear(maps)
    out.reclaimed += space
    out.images = gc.prune(store, maps, all_images)      # with the cache's layers, now unused
    out.reclaimed += out.images.reclaimed
    return out


__all__ = ["prune", "Pruned"]
