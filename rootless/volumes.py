"""Volumes: ``run``'s ``-v``, ``--mount`` and ``--tmpfs``, and the named volume store.

    ROOT/volumes/NAME/volume.json   the volume's metadata (Docker's fields, plus "Anonymous")
    ROOT/volumes/NAME/_data/        its content: bind-mounted into containers (Mountpoint)

Three steps for ``run`` (see docs/volumes.md):

1. ``plan(store, volume, mount, tmpfs)`` parses and checks every flag, before anything
   exists: a wrong flag is an error (125) that leaves no container record behind.
2. ``Plan.create(rec, maps)`` creates the named volumes used for the first time and the
   anonymous ones, records them in the container record's ``config`` (``mounts``: Docker's
   inspect-like list; ``volumes``: every volume it uses; ``anonymous_volumes``: those
   ``rm -v`` removes) and returns the ``mounts.Bind`` list for the container's mount plan.
   Called again for each start of the same container, it reuses its anonymous volumes.
3. ``Plan.populating(prepare, rootfs)`` wraps the root filesystem's ``prepare``: in the
   intermediate process (root of the container's user namespace, the root filesystem
   mounted at ``rootfs``) an empty volume gets a copy of the image's content at its
   path, owners kept, as Docker does (unless ``nocopy``).

Volume data may hold files owned by sub-ids: it is removed with ``remove.remove_tree``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn

from . import events
from .errors import Conflict, NotFound, RootlessError, UsageError
from .sandbox import idmap
from .sandbox.mounts import Bind
from .image.store import Store
from .units import parse_size

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{1,254}")      # a directory name: at most 255 bytes
ANONYMOUS_LABEL = "com.docker.volume.anonymous"   # Docker (23+) marks anonymous volumes so
TMPFS_DATA_OPTIONS = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "huge", "mpol")
_IGNORED_MODES = {"z", "Z", "rprivate", "private", "cached", "delegated", "consistent"}
_PROPAGATION = {"shared", "rshared", "slave", "rslave"}


class VolumeNotFound(NotFound):
    pass


class VolumeInUse(Conflict):
    pass


# --- the named volume store ------------------------------------------------------------

def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise UsageError(f"invalid volume name '{name}': use 2 to 255 of [a-zA-Z0-9_.-], "
                         "starting with a letter or digit")


def _now() -> str:
    import datetime
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class Volumes:
    """The named volumes of one store.  Changes are made with the store locked."""

    def __init__(self, store: Store):
        self.store = store
        self.base = os.path.join(store.root, "volumes")
        os.makedirs(self.base, mode=0o700, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.base, name)

    def data(self, name: str) -> str:
        return os.path.join(self.base, name, "_data")

    def exists(self, name: str) -> bool:
        return valid_name(name) and os.path.isfile(os.path.join(self.path(name), "volume.json"))

    def get(self, name: str) -> dict[str, Any]:
        """The volume's ``inspect`` object (Docker's fields)."""
        if not valid_name(name):
            raise VolumeNotFound(f"no such volume: {name}")
        try:
            with open(os.path.join(self.path(name), "volume.json")) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise VolumeNotFound(f"no such volume: {name} ('rootless volume ls' lists them)") from None
        except (OSError, ValueError) as e:
            raise RootlessError(f"cannot read volume {name}: {e}") from None
        return {"CreatedAt": meta.get("CreatedAt", ""), "Driver": "local",
                "Labels": meta.get("Labels") or {}, "Mountpoint": self.data(name),
                "Name": name, "Options": meta.get("Options") or {}, "Scope": "local"}

    def anonymous(self, name: str) -> bool:
        return ANONYMOUS_LABEL in self.get(name)["Labels"]

    def names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.base) if self.exists(n))

    def all(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            try:
                out.append(self.get(name))
            except RootlessError:
                continue
        return out

    def create(self, name: str | None = None, labels: dict[str, str] | None = None,
               anonymous: bool = False) -> str:
        """Create volume ``name`` (a generated one if None), or keep it if it exists."""
        if name is None:
            name = os.urandom(32).hex()
        _check_name(name)
        if self.exists(name):
            return name
        labels = dict(labels or {})
        if anonymous:
            labels[ANONYMOUS_LABEL] = ""
        tmp = os.path.join(self.store.root, "tmp", f"volume-{os.urandom(8).hex()}")
        os.mkdir(tmp, 0o755)
        try:
            os.mkdir(os.path.join(tmp, "_data"), 0o755)
            meta = {"Name": name, "Driver": "local", "CreatedAt": _now(), "Labels": labels,
                    "Options": {}, "Scope": "local"}
            with open(os.path.join(tmp, "volume.json"), "w") as f:
                json.dump(meta, f, indent=1)
            if os.path.isdir(self.path(name)):   # a half-removed leftover without volume.json
                shutil.rmtree(self.path(name), ignore_errors=True)
            os.rename(tmp, self.path(name))
        except FileExistsError:
            shutil.rmtree(tmp, ignore_errors=True)   # created meanwhile by someone else
            return name
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        events.emit(self.store.root, "volume", "create", name, {"driver": "local"})
        return name

    def listed(self, filters: list[str]) -> list[dict[str, Any]]:
        """``volume ls --filter``: dangling=true|false (no container uses it), name=TEXT,
        label=KEY[=VALUE], driver=local; each given must match."""
        checks: list[Callable[[dict[str, Any]], bool]] = []
        used: dict[str, list[str]] | None = None
        for item in filters:
            key, eq, value = item.partition("=")
            if not eq or key not in ("dangling", "name", "label", "driver"):
                raise UsageError(f"invalid filter '{item}': use dangling=true|false, name=TEXT, "
                                 "label=KEY[=VALUE] or driver=local")
            if key == "dangling":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise UsageError(f"invalid filter '{item}': dangling is true or false")
                if used is None:
                    used = self.users()
                checks.append(lambda v, u=used, want=value.lower() in ("true", "1"): (v["Name"] not in u) == want)
            elif key == "name":
                checks.append(lambda v, value=value: value in v["Name"])
            elif key == "driver":
                checks.append(lambda v, value=value: v["Driver"] == value)
            else:
                checks.append(_label_check(value))
        return [v for v in self.all() if all(c(v) for c in checks)]

    def users(self, exclude: str = "") -> dict[str, list[str]]:
        """Volume name → names of the containers (records, running or not) that use it."""
        from .container.records import Containers
        out: dict[str, list[str]] = {}
        for rec in Containers(self.store).all():
            if rec.id == exclude:
                continue
            names = rec.config.get("volumes")
            if names is None:       # created, never started: the volumes its options name
                names = _named_in(rec.config.get("options") or {})
            for name in names:
                out.setdefault(name, []).append(rec.name)
        return out

    def remove(self, name: str, maps: idmap.IdMaps, force: bool = False) -> None:
        """Remove a volume; refused while a container uses it, unless ``force``."""
        from .sandbox.remove import remove_tree
        self.get(name)
        users = self.users().get(name)
        if users and not force:
            raise VolumeInUse(f"volume {name} is in use by container {users[0]}: remove the container "
                              "first ('rootless rm'), or use 'rootless volume rm -f'")
        remove_tree(maps, self.path(name))
        events.emit(self.store.root, "volume", "destroy", name, {"driver": "local"})

    def size(self, name: str) -> int:
        total = 0
        for dirpath, dirs, files in os.walk(self.data(name)):
            for entry in files + dirs:
                try:
                    total += os.lstat(os.path.join(dirpath, entry)).st_blocks * 512
                except OSError:
                    pass
        return total


    def prune(self, maps: idmap.IdMaps, all_volumes: bool = False,
              labels: list[str] = ()) -> tuple[list[str], int]:
        """``volume prune``: remove the anonymous volumes no container uses (``all_volumes``:
        every unused volume); (their names, the space freed).  ``labels``: only those with
        label KEY[=VALUE] (``label=``) or without it (``label!=``), Docker's prune filters.
        With the store locked."""
        from .sandbox.remove import remove_tree
        checks = [_label_check(v.partition("=")[2], negate=v.startswith("label!="))
                  if v.startswith(("label=", "label!=")) else _bad_prune_filter(v) for v in labels]
        removed, space = [], 0
        with self.store.lock():
            used = self.users()
            for v in self.all():
                name = v["Name"]
                if name in used or not (all_volumes or self.anonymous(name)) or not all(c(v) for c in checks):
                    continue
                space += self.size(name)
                remove_tree(maps, self.path(name))
                events.emit(self.store.root, "volume", "destroy", name, {"driver": "local"})
                removed.append(name)
        return removed, space


def _label_check(value: str, negate: bool = False) -> Callable[[dict[str, Any]], bool]:
    """label=KEY or label=KEY=VALUE against a volume's labels (``negate``: label!=)."""
    k, eq, val = value.partition("=")
    if not k:
        raise UsageError(f"invalid label filter '{value}': use KEY or KEY=VALUE")
    return lambda v: (k in v["Labels"] and (not eq or v["Labels"][k] == val)) != negate


def _bad_prune_filter(item: str) -> NoReturn:
    raise UsageError(f"invalid prune filter '{item}': use label=KEY[=VALUE] or label!=KEY[=VALUE]")


def _named_in(options: dict[str, Any]) -> list[str]:
    """The named volumes of a container's saved -v and --mount options."""
    out = []
    for parse_one, args in ((parse_volume, options.get("volume") or ()), (parse_mount, options.get("mount") or ())):
        for arg in args:
            try:
                spec = parse_one(arg)
            except RootlessError:
                continue            # a bind source gone since: no volume anyway
            if spec.kind == "volume" and spec.source:
                out.append(spec.source)
    return out


def remove_container_volumes(store: Store, rec, maps: idmap.IdMaps) -> list[str]:
    """For ``rm -v`` (and ``run --rm``): remove ``rec``'s anonymous volumes no other container uses.

    Named volumes are kept, as with Docker.  Returns the names removed.
    """
    names = list(rec.config.get("anonymous_volumes") or ())
    if not names:
        return []
    vols = Volumes(store)
    removed = []
    with store.lock():
        users = vols.users(exclude=rec.id)
        for name in names:
            if users.get(name) or not vols.exists(name):
                continue
            from .sandbox.remove import remove_tree
            remove_tree(maps, vols.path(name))
            events.emit(store.root, "volume", "destroy", name, {"driver": "local"})
            removed.append(name)
    return removed


# --- parsing run's flags ---------------------------------------------------------------

@dataclass
class MountSpec:
    kind: str                      # "bind", "volume" or "tmpfs"
    target: str                    # normalized absolute path in the container
    source: str = ""               # host path (bind), volume name ("" = anonymous volume)
    readonly: bool = False
    nocopy: bool = False           # volume: do not populate from the image
    options: str = ""              # tmpfs mount data
    labels: dict[str, str] = field(default_factory=dict)   # volume: labels when created
    flag: str = ""                 # the argument as given, for messages


def _target(path: str, arg: str) -> str:
    if not path:
        raise UsageError(f"invalid mount '{arg}': the container path is missing")
    if not path.startswith("/"):
        raise UsageError(f"invalid mount '{arg}': the container path '{path}' must be absolute")
    norm = os.path.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/":
        raise UsageError(f"invalid mount '{arg}': the container path cannot be '/'")
    if (norm == "/proc" or norm.startswith("/proc/")) and norm not in PROC_FILES:
        where = "is the container's /proc" if norm == "/proc" else "is inside the container's /proc"
        raise UsageError(f"cannot mount on {norm} ('{arg}'): it {where}, which the kernel fills and where "
                         "no mount point can be made; choose a path outside /proc")
    return norm


# The /proc files runc lets a bind mount cover (lxcfs-style views); nothing else under /proc.
PROC_FILES = frozenset({"/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
                        "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev",
                        "/proc/sys/kernel/ns_last_pid"})


def _relative_path(source: str) -> bool:
    """Docker (23+) and Podman take ``.``, ``..``, ``./x`` and ``../x`` as host paths."""
    return source in (".", "..") or source.startswith(("./", "../"))


def absolute_sources(volume: list[str], mount: list[str]) -> tuple[list[str], list[str]]:
    """-v and --mount with relative host paths made absolute (from the current directory), so
    that the record means the same when the container is started again from elsewhere."""
    def fix_v(arg: str) -> str:
        source, sep, rest = arg.partition(":")
        return os.path.abspath(source) + sep + rest if sep and _relative_path(source) else arg

    def fix_mount(arg: str) -> str:
        out = []
        for item in arg.split(","):
            key, sep, value = item.partition("=")
            if key.strip() in ("source", "src") and sep and _relative_path(value):
                item = f"{key}={os.path.abspath(value)}"
            out.append(item)
        return ",".join(out)
    return [fix_v(v) for v in volume], [fix_mount(m) for m in mount]


def _source(source: str, arg: str) -> tuple[str, str]:
    """("bind", absolute host path) or ("volume", name)."""
    if source.startswith("/") or _relative_path(source):
        return "bind", os.path.abspath(source)
    if source.startswith("~") or "/" in source:
        raise UsageError(f"invalid mount '{arg}': the host path '{source}' must be absolute or start with "
                         f"'./' (e.g. \"./{source.lstrip('~/')}\"); a name without '/' is a volume")
    _check_name(source)
    return "volume", source


def _check_bind_source(spec: MountSpec) -> None:
    if not os.path.exists(spec.source):
        raise UsageError(f"invalid mount config for type \"bind\": bind source path does not exist: "
                         f"{spec.source}")


def parse_volume(arg: str) -> MountSpec:
    """``-v [SOURCE:]TARGET[:OPTIONS]`` (SOURCE: an absolute host path or a volume name)."""
    parts = arg.split(":")
    if len(parts) > 3 or any(not p for p in parts):
        raise UsageError(f"invalid volume specification '{arg}': use [HOST_PATH|NAME:]CONTAINER_PATH[:OPTIONS]")
    if len(parts) == 1:
        source, target, mode = "", parts[0], ""
    elif len(parts) == 2 and not parts[1].startswith("/"):
        source, target, mode = "", parts[0], parts[1]   # /path:ro, an anonymous volume
    elif len(parts) == 2:
        source, target, mode = parts[0], parts[1], ""
    else:
        source, target, mode = parts
    kind, source = _source(source, arg) if source else ("volume", "")
    spec = MountSpec(kind, _target(target, arg), source, flag=arg)
    seen_rw = False
    for opt in mode.split(",") if mode else ():
        if opt in ("ro", "rw"):
            if seen_rw:
                raise UsageError(f"invalid mode '{mode}' in '{arg}': give one of ro and rw")
            seen_rw, spec.readonly = True, opt == "ro"
        elif opt == "nocopy":
            if kind != "volume":
                raise UsageError(f"invalid mode '{opt}' in '{arg}': nocopy applies to volumes only")
            spec.nocopy = True
        elif opt in _IGNORED_MODES:
            pass  # SELinux relabeling (no SELinux here), private propagation (the default)
        elif opt in _PROPAGATION:
            raise UsageError(f"mount propagation '{opt}' in '{arg}' is not supported: "
                             "mounts are private to the container")
        else:
            raise UsageError(f"invalid mode '{opt}' in '{arg}': use ro, rw, z, Z or nocopy")
    if kind == "bind":
        _check_bind_source(spec)
    return spec


def _bool(value: str | None, key: str, arg: str) -> bool:
    if value is None:
        return True
    low = value.lower()
    if low in ("1", "true"):
        return True
    if low in ("0", "false"):
        return False
    raise UsageError(f"invalid value for '{key}' in '--mount {arg}': use true or false")


def _mode(value: str, what: str) -> str:
    if not re.fullmatch(r"[0-7]{1,4}", value):
        raise UsageError(f"invalid mode '{value}' for {what}: use octal digits, e.g. 1777")
    return value


def parse_mount(arg: str) -> MountSpec:
    """``--mount type=bind|volume|tmpfs,source=..,target=..,readonly,...`` (Docker's keys)."""
    try:
        fields = next(csv.reader([arg]), [])
    except csv.Error as e:
        raise UsageError(f"invalid --mount '{arg}': {e}") from None
    kind, source, target = "volume", "", ""
    readonly = nocopy = False
    labels: dict[str, str] = {}
    size = mode = None
    used: set[str] = set()
    for item in fields:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        val = value if eq else None
        if key == "type":
            kind = value
        elif key in ("source", "src"):
            source = value
        elif key in ("target", "destination", "dst"):
            target = value
        elif key in ("readonly", "ro"):
            readonly = _bool(val, key, arg)
        elif key == "consistency":
            pass  # a macOS-only hint in Docker
        elif key == "bind-propagation":
            if value not in ("rprivate", "private"):
                raise UsageError(f"bind-propagation '{value}' in '--mount {arg}' is not supported: "
                                 "mounts are private to the container")
        elif key == "volume-nocopy":
            nocopy = _bool(val, key, arg)
        elif key == "volume-label":
            k, _, v = value.partition("=")
            if not k:
                raise UsageError(f"invalid volume-label '{value}' in '--mount {arg}': use KEY=VALUE")
            labels[k] = v
        elif key == "volume-driver":
            if value != "local":
                raise UsageError(f"volume driver '{value}' is not supported: only 'local'")
        elif key == "tmpfs-size":
            size = parse_size(value, "tmpfs-size")
        elif key == "tmpfs-mode":
            mode = _mode(value, "tmpfs-mode")
        elif key in ("volume-opt", "volume-subpath", "bind-nonrecursive", "bind-recursive",
                     "tmpfs-options"):
            raise UsageError(f"'{key}' in '--mount {arg}' is not supported yet")
        else:
            raise UsageError(f"unexpected key '{key}' in '--mount {arg}'")
        used.add(key)
    if kind not in ("bind", "volume", "tmpfs"):
        raise UsageError(f"mount type '{kind}' is not supported: use bind, volume or tmpfs")
    for prefix in ("bind", "volume", "tmpfs"):
        if kind != prefix and any(k.startswith(prefix + "-") for k in used):
            raise UsageError(f"invalid --mount '{arg}': {prefix}-* options do not apply to type={kind}")
    if not target:
        raise UsageError(f"invalid --mount '{arg}': target is required")
    spec = MountSpec(kind, _target(target, arg), readonly=readonly, nocopy=nocopy, labels=labels,
                     flag=arg)
    if kind == "bind":
        if not source:
            raise UsageError(f"invalid --mount '{arg}': source is required for a bind mount")
        if not source.startswith("/") and not _relative_path(source):
            raise UsageError(f"invalid --mount '{arg}': the bind source '{source}' must be an absolute path "
                             "or start with './'")
        spec.source = os.path.abspath(source)
        _check_bind_source(spec)
    elif kind == "volume":
        if source:
            _check_name(source)
        spec.source = source
    else:
        if source:
            raise UsageError(f"invalid --mount '{arg}': a tmpfs mount takes no source")
        if readonly:
            raise UsageError(f"invalid --mount '{arg}': read-only tmpfs mounts are not supported yet")
        spec.options = ",".join(x for x in (f"size={size}" if size is not None else "",
                                            f"mode={mode}" if mode is not None else "") if x)
    return spec


def parse_tmpfs(arg: str) -> MountSpec:
    """``--tmpfs PATH[:OPTIONS]``: OPTIONS are tmpfs(5)'s (size=64m,mode=1777,uid=,gid=...)."""
    path, _, opts = arg.partition(":")
    spec = MountSpec("tmpfs", _target(path, arg), flag=arg)
    data = []
    for opt in opts.split(",") if opts else ():
        key, eq, value = opt.partition("=")
        if key in TMPFS_DATA_OPTIONS and eq and value:
            if key == "mode":
                _mode(value, f"--tmpfs {arg}")
            elif key == "size" and not re.fullmatch(r"\d+[kKmMgG%]?", value):
                raise UsageError(f"invalid size '{value}' in '--tmpfs {arg}': e.g. size=64m")
            elif key in ("uid", "gid", "nr_inodes", "nr_blocks") and not re.fullmatch(r"\d+[kKmMgG]?", value):
                raise UsageError(f"invalid value '{value}' for {key} in '--tmpfs {arg}'")
            data.append(opt)
        elif opt in ("rw", "nosuid", "nodev", "exec"):
            pass  # what every --tmpfs mount is here
        elif opt in ("ro", "noexec", "suid", "dev"):
            raise UsageError(f"tmpfs option '{opt}' in '--tmpfs {arg}' is not supported yet "
                             "(mounts are rw,exec,nosuid,nodev)")
        else:
            raise UsageError(f"invalid tmpfs option '{opt}' in '--tmpfs {arg}': use "
                             f"{', '.join(TMPFS_DATA_OPTIONS[:4])}, nr_inodes, nr_blocks, rw")
    spec.options = ",".join(data)
    return spec


def parse(volume: list[str], mount: list[str], tmpfs: list[str]) -> list[MountSpec]:
    specs = ([parse_volume(a) for a in volume] + [parse_mount(a) for a in mount]
             + [parse_tmpfs(a) for a in tmpfs])
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.target in seen:
            raise UsageError(f"duplicate mount point: {spec.target} ('{seen[spec.target]}' and '{spec.flag}')")
        seen[spec.target] = spec.flag
    return specs


# --- run ------------------------------------------------------------------------------

class Plan:
    """The volumes and mounts of one ``run`` (see the module doc for the three steps)."""

    def __init__(self, store: Store, specs: list[MountSpec]):
        self.store = store
        self.specs = specs
        self.single_uid = False
        self.to_populate: list[tuple[str, str]] = []   # (container path, volume data dir)

    def create(self, rec, maps: idmap.IdMaps) -> tuple[Bind, ...]:
        """Create the volumes, record them in ``rec.config`` (saved), the binds to mount.

        Called again for each start of the same container (``start``, restart policies):
        the anonymous volume it had at a path is used again, as with Docker.
        """
        if not self.specs:
            return ()
        from .container.records import Containers
        self.single_uid = maps.single
        self.to_populate = []
        before = {m.get("Destination"): m for m in rec.config.get("mounts") or ()
                  if m.get("Type") == "volume" and m.get("Anonymous")}
        binds, mounts = [], []
        vols = Volumes(self.store)
        with self.store.lock():   # no prune or volume rm between creating and recording the use
            for spec in self.specs:
                if spec.kind == "tmpfs":
                    binds.append(Bind(spec.target, kind="tmpfs", options=spec.options))
                    mounts.append({"Type": "tmpfs", "Destination": spec.target, "RW": True})
                    continue
                if spec.kind == "bind":
                    binds.append(Bind(spec.target, spec.source, spec.readonly))
                    mounts.append({"Type": "bind", "Source": spec.source, "Destination": spec.target,
                                   "RW": not spec.readonly})
                    continue
                name = spec.source
                if not name:
                    prev = before.get(spec.target)
                    name = prev["Name"] if prev and vols.exists(prev.get("Name", "")) else None
                name = vols.create(name, spec.labels, anonymous=not spec.source)
                if not spec.nocopy:
                    self.to_populate.append((spec.target, vols.data(name)))
                binds.append(Bind(spec.target, vols.data(name), spec.readonly))
                mounts.append({"Type": "volume", "Name": name, "Source": vols.data(name),
                               "Destination": spec.target, "Driver": "local", "RW": not spec.readonly,
                               "Anonymous": not spec.source})
            used = [m["Name"] for m in mounts if m["Type"] == "volume"]
            config = {"mounts": mounts, "volumes": used,
                      "anonymous_volumes": [m["Name"] for m in mounts if m.get("Anonymous")]}
            if any(rec.config.get(k) != v for k, v in config.items()):
                rec.config.update(config)
                Containers(self.store).update(rec.id, lambda r: r.config.update(config), rec.name)
        return tuple(binds)

    def populating(self, prepare: Callable[[], None], rootfs: str) -> Callable[[], None]:
        """``prepare``, then the empty volumes get the image's content at their path."""
        def prepare_and_populate() -> None:
            prepare()
            for target, data in self.to_populate:
                populate(rootfs, target, data, self.single_uid)
        return prepare_and_populate


def plan(store: Store, volume: list[str], mount: list[str], tmpfs: list[str]) -> Plan:
    return Plan(store, parse(volume, mount, tmpfs))


def resolve_in(root: str, path: str) -> str | None:
    """The host path of container path ``path`` under ``root``, following symlinks as the
    container would (absolute links are relative to ``root``); None if it does not exist."""
    parts = [p for p in path.split("/") if p]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        try:
            if os.path.islink(candidate):
                hops += 1
                if hops > 40:
                    return None
                link = os.readlink(candidate)
                if link.startswith("/"):
                    current = root
                parts = [p for p in link.split("/") if p] + parts
                continue
        except OSError:
            return None
        if not os.path.lexists(candidate):
            return None
        current = candidate
    return current


def populate(rootfs: str, target: str, data: str, single_uid: bool) -> None:
    """Copy the image's directory at ``target`` into the volume at ``data`` if it is empty.

    Runs as root of the container's user namespace, so owners (sub-ids) are kept.
    """
    try:
        if os.listdir(data):
            return
    except OSError:
        return
    source = resolve_in(os.path.realpath(rootfs), target)
    if source is None or not os.path.isdir(source):
        return
    # Single-uid mode: only uid 0 exists; owners the image may show (fuse-overlay's xattrs)
    # cannot be set, so they are not copied.
    preserve = ["-a"] if not single_uid else ["-dR", "--preserve=mode,timestamps,links"]
    proc = subprocess.run(["cp", *preserve, "--reflink=auto", f"{source}/.", data],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise OSError(f"copying the image's {target} into its volume failed: {proc.stderr.strip()}")
    st = os.stat(source)
    try:
        if not single_uid:
            os.chown(data, st.st_uid, st.st_gid)
        os.chmod(data, st.st_mode & 0o7777)
    except OSError:
        pass
