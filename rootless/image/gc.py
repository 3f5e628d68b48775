"""Garbage collection of the image store, ``image prune`` and ``system df``.

The store knows an image by its tags; a container keeps the image it was made from alive
(by its image id) even after ``rmi -f``.  Live: every tagged manifest, every manifest whose
config is a container's image, their configs, layer blobs and unpacked layers (``live``: the
one liveness rule, used by ``rmi``, ``image prune`` and ``system prune``).  Everything else
under ``blobs/`` and ``layers/`` is garbage: ``collect`` removes it with the store locked
(every writer makes blobs, layers and tags visible with the lock held; what killed writers
left under ``tmp/`` and ``layers/.tmp-*`` is removed by ``Store.lock`` itself), removing
layers as root of the user namespace (their files may be owned by sub-ids).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..container.records import Containers, _alive
from ..errors import Conflict, RootlessError
from ..sandbox import idmap
from .store import Store

MAX_MANIFEST = 4 << 20


@dataclass
class Collected:
    blobs: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)
    reclaimed: int = 0


def _manifest(store: Store, digest: str) -> dict | None:
    """Blob ``digest`` parsed, if it is an image manifest."""
    path = store.blob_path(digest)
    try:
        if os.path.getsize(path) > MAX_MANIFEST:
            return None
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data.lstrip()[:1] == b"{":
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("config"), dict) and isinstance(doc.get("layers"), list):
        return doc
    return None


def live(store: Store) -> tuple[set[str], set[str]]:
    """(blob digests, diff ids) in use by tags, containers and the build cache (its layers are
    stored as blobs named by their diff ids)."""
    used_ids = {r.image_id for r in Containers(store).all()}
    manifests = set(store.tags().values())
    if used_ids:
        for digest in store.blob_digests():
            if digest not in manifests:
                doc = _manifest(store, digest)
                if doc and doc["config"].get("digest") in used_ids:
                    manifests.add(digest)
    blobs: set[str] = set()
    layers: set[str] = set()
    for digest in manifests:
        doc = _manifest(store, digest)
        if doc is None:
            continue
        blobs.add(digest)
        blobs.add(doc["config"]["digest"])
        blobs |= {d["digest"] for d in doc["layers"]}
        try:
            config = store.read_json(doc["config"]["digest"])
            layers |= set((config.get("rootfs") or {}).get("diff_ids") or [])
        except (OSError, ValueError, RootlessError):
            pass
    from .buildcache import BuildCache
    cached = BuildCache(store).layers()
    for diff_id, variants in store.compressed_variants().items():   # what push compressed
        if diff_id in layers or diff_id in cached:
            blobs |= {digest for _fmt, digest in variants}
    return blobs | cached, layers | cached


def _tree_size(path: str) -> int:
    total = 0
    for dirpath, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not (name in dirs and not os.path.islink(os.path.join(dirpath, name))):
                total += st.st_blocks * 512 if st.st_blocks else st.st_size
    return total


def container_size(store: Store, cid: str) -> int:
    """What a container's own files take (its upper layer, or its copied root filesystem)."""
    directory = store.container_dir(cid)
    own = os.path.join(directory, "upper")
    return _tree_size(own if os.path.isdir(own) else os.path.join(directory, "rootfs"))


def collect(store: Store, maps: idmap.IdMaps) -> Collected:
    """Remove blobs and layers nothing uses.  Takes the store lock."""
    with store.lock():
        return _collect(store, maps)


def _collect(store: Store, maps: idmap.IdMaps) -> Collected:
    """``collect`` with the store locked already."""
    out = Collected()
    keep_blobs, keep_layers = live(store)
    for digest in store.blob_digests():
        if digest not in keep_blobs:
            try:
                out.reclaimed += os.path.getsize(store.blob_path(digest))
            except OSError:
                continue
            store.remove_blob(digest)
            out.blobs.append(digest)
    for diff_id in store.layer_ids():
        if diff_id not in keep_layers:
            out.reclaimed += store.layer_size(diff_id)
            store.remove_layer(maps, diff_id)
            out.layers.append(diff_id)
    for diff_id, variants in store.compressed_variants().items():
        for fmt, digest in variants:     # a record whose blob is gone still names it at registries
            if diff_id not in keep_layers:
                store.forget_compressed(diff_id, fmt)
    for sub in ("sizes", "tarsplit"):    # of layers a killed command was removing, or unpacking
        base = os.path.join(store.root, sub)
        for name in os.listdir(base):
            try:
                if not store.has_layer("sha256:" + name):
                    os.unlink(os.path.join(base, name))
            except (OSError, RootlessError):
                pass
    return out


@dataclass
class Removed:
    untagged: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)


def remove_image(store: Store, maps: idmap.IdMaps, name: str, force: bool = False) -> Removed:
    """``rmi NAME``: untag it (every tag of it when NAME is an id); then remove its blobs and
    layers that nothing else uses — no tag and no container: an image a container was made
    from stays (untagged, as Docker keeps it) until that container is removed.  Refused for an
    image in use unless ``force``.  Everything is looked at and done with the store locked."""
    out = Removed()
    with store.lock():
        img = store.resolve(name)
        users = [c for c in Containers(store).all() if c.image_id == img.id]
        if users and not force:
            raise Conflict(f"image {name} is used by container {users[0].name}: remove it first "
                                "('rootless rm'), or use 'rmi -f'")
        if img.ref and _same(store, name, img.ref):
            tags = [img.ref]
        else:   # by id: every tag of that image (Docker refuses several without -f)
            tags = sorted(t for t, d in store.tags().items() if _config(store, d) == img.id)
            if len(tags) > 1 and not force:
                raise Conflict(f"image {name} has several names ({', '.join(tags)}): remove them "
                                    "by name, or use 'rmi -f'")
        for tag in tags:
            store.untag(tag)
            out.untagged.append(tag)
        keep_blobs, keep_layers = live(store)
        manifest = store.read_json(img.manifest_digest)
        for digest in [img.manifest_digest, img.id] + [d["digest"] for d in manifest.get("layers", [])]:
            if digest not in keep_blobs and store.has_blob(digest):
                out.blobs.append(digest)
        for diff_id in img.diff_ids:
            if diff_id not in keep_layers and store.has_layer(diff_id) and diff_id not in out.layers:
                out.layers.append(diff_id)
        variants = store.compressed_variants()     # the layers' compressed blobs (push)
        forget = [(diff_id, fmt) for diff_id in img.diff_ids if diff_id not in keep_layers
                  for fmt, _digest in variants.get(diff_id, [])]
        for diff_id, _fmt in forget:
            for _f, digest in variants.get(diff_id, []):
                if digest not in keep_blobs and store.has_blob(digest) and digest not in out.blobs:
                    out.blobs.append(digest)
        # Layers first, manifest last: a command killed half-way leaves garbage, never an
        # image whose manifest names something gone.
        for diff_id in out.layers:
            store.remove_layer(maps, diff_id)
        for diff_id, fmt in forget:
            store.forget_compressed(diff_id, fmt)
        for digest in reversed(out.blobs):
            store.remove_blob(digest)
    if img.manifest_digest in out.blobs:
        from .. import events
        events.emit(store.root, "image", "delete", img.id, {"name": img.ref or img.id})
    return out


def _same(store: Store, name: str, ref: str) -> bool:
    from . import reference
    try:
        return reference.normalize(name) == ref
    except RootlessError:
        return False


def _config(store: Store, manifest_digest: str) -> str | None:
    doc = _manifest(store, manifest_digest)
    return doc["config"].get("digest") if doc else None


def prune(store: Store, maps: idmap.IdMaps, all_images: bool) -> Collected:
    """``image prune``: unreferenced blobs and layers, and the dangling images (loaded without a
    name: ``reference.UNTAGGED_REPO``) no container uses; with ``all_images``, every image no
    container uses (its tags removed first).  All with the store locked."""
    from .reference import UNTAGGED_REPO
    untagged = []
    with store.lock():
        used = {r.image_id for r in Containers(store).all()}
        for tag, digest in sorted(store.tags().items()):
            if not (all_images or tag.startswith(UNTAGGED_REPO + "/")):
                continue
            if _config(store, digest) not in used:
                store.untag(tag)
                untagged.append(tag)
        out = _collect(store, maps)
    out.untagged = untagged
    return out


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def layer_disk_use(store: Store, diff_id: str, blobs: set[str] = frozenset(),
                   variants: dict[str, list[tuple[str, str]]] | None = None) -> int:
    """What layer ``diff_id`` takes in the store: unpacked, its tar-split record, and the blobs
    kept for it (``blobs``: its blobs the manifests name; its plain blob; what push compressed,
    ``variants`` as ``Store.compressed_variants`` gives them)."""
    if variants is None:
        variants = store.compressed_variants()
    kept = set(blobs) | {diff_id} | {d for _f, d in variants.get(diff_id, [])}
    return (store.layer_size(diff_id) + _file_size(store.tarsplit_path(diff_id))
            + sum(_file_size(store.blob_path(d)) for d in kept if store.has_blob(d)))


def df(store: Store) -> list[dict]:
    """``system df``: images, containers and local volumes: count, active, size, reclaimable.
    An image's size is what its layers take on disk: unpacked, with their tar-split records and
    whatever blobs the store keeps of them."""
    recs = Containers(store).all()
    used_ids = {r.image_id for r in recs}
    sizes: dict[str, int] = {}
    images: dict[str, set[str]] = {}      # image id -> diff ids of its layers
    variants = store.compressed_variants()
    for tag, digest in store.tags().items():
        try:
            img = store.image(digest, tag)
            doc = store.read_json(digest)
        except (OSError, ValueError, RootlessError):
            continue
        images.setdefault(img.id, set()).update(img.diff_ids)
        layer_blobs = [d.get("digest") for d in doc.get("layers") or []]
        for diff_id, blob in zip(img.diff_ids, layer_blobs):
            if diff_id not in sizes:
                sizes[diff_id] = layer_disk_use(store, diff_id, {blob} if blob else set(), variants)
    total = sum(sizes.values())
    active_blobs = set().union(*(b for i, b in images.items() if i in used_ids)) if images else set()
    rows = [{"Type": "Images", "TotalCount": len(images), "Active": len(set(images) & used_ids),
             "Size": total, "Reclaimable": sum(s for d, s in sizes.items() if d not in active_blobs)}]
    c_size = c_reclaim = active = 0
    for r in recs:
        size = container_size(store, r.id)
        c_size += size
        if r.state == "running" and _alive(r.pid):
            active += 1
        else:
            c_reclaim += size
    rows.append({"Type": "Containers", "TotalCount": len(recs), "Active": active, "Size": c_size,
                 "Reclaimable": c_reclaim})
    vdir = os.path.join(store.root, "volumes")
    v_total = v_active = v_size = v_reclaim = 0
    if os.path.isdir(vdir):
        in_use = {v for r in recs for v in ((r.config or {}).get("volumes") or ())}
        for name in sorted(os.listdir(vdir)):
            if name.startswith(".") or not os.path.isdir(os.path.join(vdir, name)):
                continue
            v_total += 1
            size = _tree_size(os.path.join(vdir, name))
            v_size += size
            if name in in_use:
                v_active += 1
            else:
                v_reclaim += size
    rows.append({"Type": "Local Volumes", "TotalCount": v_total, "Active": v_active, "Size": v_size,
                 "Reclaimable": v_reclaim})
    from .buildcache import BuildCache
    cache = BuildCache(store)
    only_cached = cache.layers() - set(sizes)          # layers no image has: the cache's own
    b_size = sum(store.layer_size(d) for d in only_cached if store.has_layer(d)) + cache.mounts_size()
    rows.append({"Type": "Build Cache", "TotalCount": cache.entries(), "Active": 0, "Size": b_size,
                 "Reclaimable": b_size})
    return rows


def df_detail(store: Store) -> dict:
    """``system df -v``, item by item (the API's ``/system/df``): the images (tagged), their
    size and the part shared with other images, the containers using each; containers and
    their own files; volumes, their size and users; the build cache's own layers."""
    from collections import Counter
    from ..volumes import Volumes
    from .buildcache import BuildCache
    recs = Containers(store).all()
    uses = Counter(r.image_id for r in recs)
    images: dict[str, dict] = {}
    for tag, digest in sorted(store.tags().items()):
        try:
            img = store.image(digest, tag)
        except (OSError, ValueError, RootlessError):
            continue
        entry = images.setdefault(img.id, {
            "id": img.id, "tags": [], "manifest": digest, "created": img.config.get("created", ""),
            "layers": sorted(set(img.diff_ids)), "labels": (img.config.get("config") or {}).get("Labels") or {},
            "containers": uses.get(img.id, 0)})
        entry["tags"].append(tag)
    sizes = {d: store.layer_size(d) for e in images.values() for d in e["layers"]}
    shared = Counter(d for e in images.values() for d in e["layers"])
    for e in images.values():
        e["size"] = sum(sizes[d] for d in e["layers"])
        e["shared_size"] = sum(sizes[d] for d in e["layers"] if shared[d] > 1)
    containers = [{"id": r.id, "name": r.name, "image": r.image, "image_id": r.image_id, "command": r.command,
                   "created": r.created, "labels": r.config.get("labels") or {},
                   "state": "running" if r.state == "running" and _alive(r.pid) else
                            ("created" if r.state == "created" else "exited"),
                   "size_rw": container_size(store, r.id)} for r in recs]
    vols = Volumes(store)
    users = vols.users()
    volumes = [{**v, "size": vols.size(v["Name"]), "refcount": len(users.get(v["Name"], ()))} for v in vols.all()]
    cache = BuildCache(store)
    cached = [{"id": d, "size": store.layer_size(d)} for d in sorted(cache.layers() - set(sizes)) if store.has_layer(d)]
    return {"layers_size": sum(sizes.values()), "images": list(images.values()), "containers": containers,
            "volumes": volumes, "build_cache": cached, "cache_mounts_size": cache.mounts_size()}


__all__ = ["collect", "prune", "df", "df_detail", "live", "remove_image", "container_size", "Removed", "Collected"]
