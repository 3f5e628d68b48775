"""``commit`` and ``diff``: a container's changes as an image, or as Docker's A/C/D lines.

The changes are where the storage driver left them (``image/changeset.py`` reads them): the
overlay's upper directory (``overlay``, ``fuse-overlay``), or, for ``vfs``, the container's
copy compared with its image's layers.  A container created but never started has none.

The new image is the container's image, one layer more (none when nothing changed: Docker marks
the history entry ``empty_layer``), with the configuration the container ran with — its image's,
with ``run``'s command, entrypoint, environment, working directory, user and stop signal — and
``--change`` instructions applied on top, as ``docker commit`` does.  Its history entry has the
container's command as ``created_by``, ``-m`` as ``comment``, ``-a`` as ``author``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

from .records import Containers, Record, running
from ..errors import ImageNotFound, RootlessError, StoreError
from ..image import changes as changes_mod
from ..image import changeset, reference
from ..image.importer import new_image
from ..image.store import Image, Store
from ..sandbox import idmap


@dataclass
class Committed:
    image: Image
    layer: changeset.NewLayer
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Where:
    """Where a container's changes are: ``directory`` (None: it has none yet), and for a copy
    (vfs) the image layers to compare it with."""
    directory: str | None
    base_layers: list[str] | None
    image_layers: list[str]


def _image_of(store: Store, rec: Record) -> Image:
    try:
        return store.resolve(rec.image_id)
    except ImageNotFound:
        if rec.image.startswith("/"):
            from .export import squashfs_refusal
            raise StoreError(squashfs_refusal(rec.name, rec.image)) from None
        raise StoreError(f"the image of container {rec.name} ({rec.image}, {rec.image_id[:19]}) is no longer "
                         "in the store") from None


# Where the engine makes mount points (sandbox/mounts.py): an empty file or directory there is
# not the container's doing (Docker keeps them in a layer of its own, left out of diff and commit).
MOUNT_POINTS = frozenset({"etc/hostname", "etc/hosts", "etc/resolv.conf", "proc", "sys", "dev"})


def _mount_targets(rec: Record) -> frozenset[str]:
    """Where the container's -v, --mount and --tmpfs were mounted, and their parents: mount
    points the engine made, not the container's changes (left out when that is all they are)."""
    opts = rec.config.get("options") or {}
    targets = []
    for item in opts.get("volume") or []:
        parts = item.split(":")
        targets.append(parts[1] if len(parts) > 1 and parts[1].startswith("/") else parts[0])
    for item in opts.get("mount") or []:
        fields = dict(f.partition("=")[::2] for f in item.split(","))
        targets.append(fields.get("target") or fields.get("dst") or fields.get("destination") or "")
    targets += [t.split(":", 1)[0] for t in opts.get("tmpfs") or []]
    out = set()
    for t in targets:
        parts = [p for p in t.split("/") if p]
        out |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return frozenset(out)


def _where(store: Store, rec: Record, image: Image) -> _Where:
    if rec.state == "removing":
        raise RootlessError(f"container {rec.name} is being removed")
    missing = [d for d in image.diff_ids if not store.has_layer(d)]
    if missing:
        raise StoreError(f"layer {missing[0]} of container {rec.name}'s image is missing from the store")
    layer_dirs = [store.layer_dir(d) for d in image.diff_ids]
    directory = store.container_dir(rec.id)
    upper = os.path.join(directory, "upper")
    if os.path.isdir(upper):
        return _Where(upper, None, layer_dirs)
    if os.path.exists(os.path.join(directory, "rootfs.copied")):
        return _Where(os.path.join(directory, "rootfs"), layer_dirs, layer_dirs)
    return _Where(None, None, layer_dirs)


def diff(store: Store, maps: idmap.IdMaps, key: str) -> list[tuple[str, str]]:
    """(kind, path) of what container ``key`` changed: ``A`` added, ``C`` changed, ``D`` deleted,
    sorted by path."""
    rec = Containers(store).find(key)
    where = _where(store, rec, _image_of(store, rec))
    if where.directory is None:
        return []
    return changeset.diff(maps, where.directory, where.image_layers, full_copy=where.base_layers is not None,
                          ignore=MOUNT_POINTS | _mount_targets(rec))


def _env(image_env: list[str], rec: Record, opts: dict[str, Any]) -> list[str]:
    """The image's Env with run's -e/--env-file on top (not what the engine adds: HOSTNAME, TERM)."""
    ran: dict[str, str] = dict(rec.config.get("env") or {})
    out = {e.partition("=")[0]: e.partition("=")[2] for e in image_env}
    given: dict[str, str | None] = {}
    for item in opts.get("env") or []:
        k, sep, v = item.partition("=")
        given[k] = v if sep else None
    if opts.get("env_files"):
        for k in ran:
            if k not in out and k not in given and k not in ("HOSTNAME", "TERM", "PATH"):
                given[k] = None
    for k, v in given.items():
        value = ran.get(k, v)
        if value is not None:
            out[k] = value
    return [f"{k}={v}" for k, v in out.items()]


def container_config(image: Image, rec: Record) -> dict[str, Any]:
    """The configuration container ``rec`` ran with, as an image's ``config`` section."""
    cfg = copy.deepcopy(image.run_config)
    opts = rec.config.get("options") or {}
    if opts.get("entrypoint") is not None:
        entrypoint = opts["entrypoint"]
        if isinstance(entrypoint, list):
            cfg["Entrypoint"] = None if entrypoint in ([], [""]) else list(entrypoint)
        else:
            cfg["Entrypoint"] = [entrypoint] if entrypoint else None
        cfg["Cmd"] = list(opts.get("command") or []) or None
    elif opts.get("command"):
        cfg["Cmd"] = list(opts["command"])
    cfg["Env"] = _env(list(cfg.get("Env") or []), rec, opts)
    for key, field_ in (("WorkingDir", "workdir"), ("User", "user"), ("StopSignal", "stop_signal")):
        if opts.get(field_):
            cfg[key] = opts[field_]
    return {k: v for k, v in cfg.items() if v is not None}


def _pause(store: Store, rec: Record, warnings: list[str]):
    """Freeze a running container for the commit; the function that thaws it (or does nothing)."""
    from . import lifecycle
    if not running(rec) or rec.config.get("paused"):
        return lambda: None
    if not rec.cgroup_paths:
        warnings.append(f"container {rec.name} has no cgroup to freeze: committed while it runs "
                        "(files it writes meanwhile may be caught half-written)")
        return lambda: None
    try:
        lifecycle.pause(store, rec.id, True)
    except RootlessError as e:
        warnings.append(f"container {rec.name} could not be paused ({e}): committed while it runs")
        return lambda: None

    def thaw() -> None:
        try:
            lifecycle.pause(store, rec.id, False)
        except RootlessError:
            pass        # it ended meanwhile
    return thaw


def _layer(store: Store, maps: idmap.IdMaps, rec: Record, image: Image, pause: bool,
           source_date_epoch: int | None, consume: bool = False,
           ignore: frozenset[str] = frozenset()) -> tuple[changeset.NewLayer, list[str]]:
    where = _where(store, rec, image)
    warnings: list[str] = []
    if where.directory is None:
        return changeset.NewLayer("", 0, True), warnings
    thaw = _pause(store, rec, warnings) if pause else (lambda: None)
    try:
        layer = changeset.layer_from_changes(store, maps, where.directory, single_uid=maps.single,
                                             image_layers=where.image_layers,
                                             full_copy=where.base_layers is not None,
                                             ignore=MOUNT_POINTS | _mount_targets(rec) | ignore,
                                             source_date_epoch=source_date_epoch, consume=consume)
    finally:
        thaw()
    return layer, warnings


def layer_of(store: Store, maps: idmap.IdMaps, key: str, *, pause: bool = True,
             source_date_epoch: int | None = None, consume: bool = False, image: Image | None = None,
             ignore: frozenset[str] = frozenset()) -> tuple[changeset.NewLayer, list[str]]:
    """Container ``key``'s changes stored as a layer (nothing stored when it changed nothing:
    ``empty``), and warnings for the user.  For the builder's RUN steps, then ``new_image``.
    ``consume``: the container is removed right after and never started again (a RUN step):
    its files become the layer's instead of being copied (``changeset.layer_from_changes``).
    ``image``: the one it was made from, when not in the store (the builder's state);
    ``ignore``: more mount points to leave out when only they were made (RUN --mount targets)."""
    rec = Containers(store).find(key)
    if consume and running(rec):
        raise RootlessError(f"container {rec.name} is running: its files cannot be taken for a layer")
    return _layer(store, maps, rec, image or _image_of(store, rec), pause, source_date_epoch, consume,
                  ignore)


def commit(store: Store, maps: idmap.IdMaps, key: str, ref: str | None = None, *, message: str = "",
           author: str = "", changes: list[str] | None = None, pause: bool = True,
           source_date_epoch: int | None = None) -> Committed:
    """Container ``key``'s changes as a new image (tagged ``ref``, else a ``localhost/untagged/ID``
    name as ``load`` gives unnamed images, so that it can be used by its id)."""
    rec = Containers(store).find(key)
    image = _image_of(store, rec)
    if ref:
        ref = reference.normalize(ref)
    config = container_config(image, rec)
    created_by = " ".join(config.get("Cmd") or [])     # Docker's: the container's command
    for change in changes or []:
        changes_mod.apply(config, change)
    layer, warnings = _layer(store, maps, rec, image, pause, source_date_epoch)
    history: dict = {"created_by": created_by}
    if message:
        history["comment"] = message
    if author:
        history["author"] = author
    if layer.empty:
        history["empty_layer"] = True
    with store.lock():
        if ref is None:
            from ..image.reference import UNTAGGED_REPO
            # the id is known once the config is written: write it, then name it by its id
            img = new_image(store, image, [] if layer.empty else [layer.diff_id], config, [history], [],
                            author=author)
            tag = f"{UNTAGGED_REPO}/{img.id.removeprefix('sha256:')[:12]}:latest"
            store.set_tag(tag, img.manifest_digest)
            img = store.image(img.manifest_digest, tag)
        else:
            img = new_image(store, image, [] if layer.empty else [layer.diff_id], config, [history], [ref],
                            author=author)
    from .. import events
    events.emit(store.root, "container", "commit", rec.id,
                events.container_attributes(rec, comment=message, imageID=img.id, imageRef=img.ref or ""))
    return Committed(img, layer, warnings)


__all__ = ["commit", "diff", "layer_of", "container_config", "Committed", "MOUNT_POINTS"]
