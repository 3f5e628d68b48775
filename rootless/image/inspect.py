"""``rootless inspect`` and ``rootless history``: images and containers in Docker's JSON shape.

``inspect`` returns, for each name, the fields people script against, spelled as
``docker inspect`` spells them; ``render`` applies a ``--format`` template of the simple
Go-template form (``{{.Id}}``, ``{{.Config.Cmd}}``, ``{{json .Config}}``, text around them).
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from ..container.records import Containers, Record, _alive
from ..errors import ImageNotFound, RootlessError, UsageError
from ..units import parse_size
from .store import Image, Store

IMAGE_CONFIG_FIELDS = ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "Labels", "ExposedPorts",
                       "StopSignal", "Volumes", "Healthcheck", "OnBuild", "Shell")
ZERO_TIME = "0001-01-01T00:00:00Z"


def _iso(ts: float | None) -> str:
    if not ts:
        return ZERO_TIME
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def image_size(store: Store, img: Image) -> int:
    """Docker's figure for ``images`` SIZE and ``inspect`` .Size: the unpacked size of its layers."""
    return sum(store.layer_size(d) for d in dict.fromkeys(img.diff_ids))


IMAGE_FILTERS = ("dangling", "reference", "label", "before", "since")


def image_rows(store: Store, filters: list[str] | None = None) -> list[dict[str, Any]]:
    """``rootless images``: one row per tag (Repository, Tag, Id (short), Created, Size) that
    passes every ``KEY=VALUE`` filter (Docker's: dangling, reference, label, before, since)."""
    rows = []
    for img in matching_images(store, filters):
        name, _, tag = (img.ref or "<none>:<none>").rpartition(":")
        rows.append({"Repository": name, "Tag": tag, "Id": img.id.removeprefix("sha256:")[:12],
                     "Created": img.config.get("created", ""), "Size": image_size(store, img)})
    return rows


def matching_images(store: Store, filters: list[str] | None = None) -> list[Image]:
    """The images, one per tag, that pass every ``KEY=VALUE`` filter (as ``image_rows``)."""
    keep = _image_filter(store, filters or [])
    return [img for img in store.images() if keep(img)]


def _image_filter(store: Store, filters: list[str]):
    import fnmatch
    from .archive import UNTAGGED_REPO
    from ..container.listing import label_matches
    checks = []
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in IMAGE_FILTERS:
            raise UsageError(f"invalid filter '{f}': use dangling=true|false, reference=PATTERN, "
                             "label=KEY[=VALUE], before=IMAGE or since=IMAGE")
        if key == "dangling":
            if value not in ("true", "false", "1", "0"):
                raise UsageError(f"invalid filter '{f}': dangling is true or false")
            want = value in ("true", "1")
            checks.append(lambda img, w=want: (img.ref or "").startswith(UNTAGGED_REPO + "/") == w)
        elif key == "reference":
            def ref_ok(img, pattern=value) -> bool:
                ref = img.ref or ""
                repo = ref.rpartition(":")[0]
                return any(fnmatch.fnmatchcase(c, pattern) for c in (ref, repo, repo.rpartition("/")[2]))
            checks.append(ref_ok)
        elif key == "label":
            checks.append(lambda img, v=value: label_matches(img.run_config.get("Labels") or {}, v))
        else:
            pivot = str(store.resolve(value).config.get("created") or "")
            checks.append((lambda img, p=pivot: str(img.config.get("created") or "") < p) if key == "before"
                          else (lambda img, p=pivot: str(img.config.get("created") or "") > p))
    return lambda img: all(check(img) for check in checks)


def image_info(store: Store, img: Image) -> dict[str, Any]:
    tags = sorted(t for t, d in store.tags().items() if _config_of(store, d) == img.id)
    cfg = img.run_config
    return {
        "Id": img.id,
        "RepoTags": tags,
        "RepoDigests": sorted({f"{t.rpartition(':')[0]}@{d}" for t, d in store.tags().items() if t in tags}),
        "Parent": "",
        "Comment": ((img.config.get("history") or [{}])[-1] or {}).get("comment", ""),
        "Created": img.config.get("created", ""),
        "Author": img.config.get("author", ""),
        "Architecture": img.config.get("architecture", ""),
        "Variant": img.config.get("variant", ""),
        "Os": img.config.get("os", ""),
        "Config": {k: cfg.get(k) for k in IMAGE_CONFIG_FIELDS} | {
            "WorkingDir": cfg.get("WorkingDir") or "", "User": cfg.get("User") or "", "Image": "",
            "OnBuild": cfg.get("OnBuild")},
        "RootFS": {"Type": (img.config.get("rootfs") or {}).get("type", "layers"), "Layers": list(img.diff_ids)},
        "Size": image_size(store, img),
        "Metadata": {"LastTagTime": ""},
    }


def _config_of(store: Store, manifest_digest: str) -> str | None:
    try:
        return store.read_json(manifest_digest)["config"]["digest"]
    except (OSError, RootlessError, KeyError, ValueError):
        return None


def _bytes(text: str | None) -> int:
    """Docker's size strings (``512m``, ``2g``) in bytes; 0 when unset or unreadable."""
    if not text:
        return 0
    if str(text).strip() == "-1":
        return -1
    try:
        return parse_size(text, "a size")
    except UsageError:
        return 0


def _host_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Docker's HostConfig fields, from the run options the record keeps."""
    o = cfg.get("options") or {}
    restart = str(o.get("restart") or "no")
    name, _, count = restart.partition(":")
    try:
        cpus = int(float(o.get("cpus")) * 1e9) if o.get("cpus") else 0
    except ValueError:
        cpus = 0
    ports: dict[str, list] = {}
    for p in o.get("publish") or []:
        spec, _, proto = p.partition("/")
        parts = spec.split(":")
        ip, host, cport = (["", *parts] if len(parts) == 2 else parts if len(parts) == 3 else ["", "", parts[0]])[-3:]
        ports.setdefault(f"{cport}/{proto or 'tcp'}", []).append({"HostIp": ip, "HostPort": host})
    return {
        "Binds": list(o.get("volume") or []) or None,
        "NetworkMode": o.get("network") or "",
        "PortBindings": ports,
        "RestartPolicy": {"Name": name, "MaximumRetryCount": int(count) if count.isdigit() else 0},
        "AutoRemove": bool(o.get("rm")),
        "CapAdd": list(o.get("cap_add") or []) or None,
        "CapDrop": list(o.get("cap_drop") or []) or None,
        "ExtraHosts": list(o.get("add_host") or []) or None,
        "ReadonlyRootfs": bool(o.get("read_only")),
        "Privileged": bool(o.get("privileged")),
        "SecurityOpt": list(o.get("security_opt") or []) or None,
        "Tmpfs": {t.partition(":")[0]: t.partition(":")[2] for t in o.get("tmpfs") or []} or None,
        "Memory": _bytes(o.get("memory")),
        "MemorySwap": _bytes(o.get("memory_swap")),
        "NanoCpus": cpus,
        "CpuShares": int(o["cpu_shares"]) if str(o.get("cpu_shares") or "").isdigit() else 0,
        "CpusetCpus": o.get("cpuset_cpus") or "",
        "PidsLimit": int(o["pids_limit"]) if str(o.get("pids_limit") or "").lstrip("-").isdigit() else None,
        "CgroupParent": o.get("cgroup_parent") or "",
    }


def container_info(store: Store, rec: Record) -> dict[str, Any]:
    running = rec.state == "running" and _alive(rec.pid)
    cfg = rec.config or {}
    if running:
        status = "paused" if cfg.get("paused") else "running"
    elif rec.state == "created":
        status = "created"
    else:
        status = "exited"
    image_cfg: dict[str, Any] = {}
    try:
        image_cfg = store.read_json(rec.image_id).get("config") or {}
    except (OSError, ValueError, RootlessError):
        pass
    env = cfg.get("env")
    if isinstance(env, dict):
        env = [f"{k}={v}" for k, v in env.items()]
    directory = store.container_dir(rec.id)
    upper = os.path.join(directory, "upper")
    driver = "overlay" if os.path.isdir(upper) else "vfs"
    from ..container.rootfs import internal_errors
    errors = internal_errors(directory)
    return {
        "Id": rec.id,
        "Created": _iso(rec.created),
        "Path": rec.command[0] if rec.command else "",
        "Args": rec.command[1:],
        "State": {
            "Status": status,
            "Running": running,
            "Paused": bool(running and cfg.get("paused")),
            "Restarting": False,
            "OOMKilled": bool(rec.oom_killed),
            "Dead": False,
            "Pid": rec.pid if running else 0,
            "ExitCode": rec.exit_code if rec.exit_code is not None else 0,
            "Error": (f"fuse-overlay answered {len(errors)} request(s) with EIO after an internal error "
                      f"(last: {errors[-1]}); see {os.path.join(directory, 'work', 'fuse-overlay.errors')} "
                      "and report it") if errors else "",
            "StartedAt": _iso(cfg.get("started") or (rec.created if rec.state != "created" else None)),
            "FinishedAt": _iso(rec.finished),
            **({"Health": cfg["health"]} if cfg.get("health") else {}),
        },
        "Image": rec.image_id,
        "Name": "/" + rec.name,
        "RestartCount": int(cfg.get("restarts") or 0),
        "Driver": driver,
        "HostConfig": _host_config(cfg),
        "GraphDriver": {"Name": driver,
                        "Data": {"UpperDir": upper if driver == "overlay" else os.path.join(directory, "rootfs"),
                                 "MergedDir": os.path.join(directory, "rootfs")}},
        "Mounts": [{"Type": "volume", "Name": v, "Source": os.path.join(store.root, "volumes", v, "_data")}
                   for v in cfg.get("volumes") or []],
        "Config": {
            "Hostname": cfg.get("hostname") or rec.id[:12],
            "Env": env if env is not None else image_cfg.get("Env"),
            "Cmd": rec.command,
            "Image": rec.image,
            "WorkingDir": cfg.get("cwd") or image_cfg.get("WorkingDir") or "",
            "Entrypoint": image_cfg.get("Entrypoint"),
            "User": cfg.get("user") if cfg.get("user") is not None else image_cfg.get("User") or "",
            "Labels": {**(image_cfg.get("Labels") or {}), **(cfg.get("labels") or {})},
            "StopSignal": cfg.get("stop_signal") or image_cfg.get("StopSignal"),
            "Tty": bool((cfg.get("options") or {}).get("tty")),
            "OpenStdin": bool((cfg.get("options") or {}).get("interactive")),
        },
    }


def inspect(store: Store, names: list[str], kind: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects found, and an error message per name not found."""
    found, errors = [], []
    records = Containers(store)
    for name in names:
        obj = None
        if kind in (None, "container"):
            try:
                obj = container_info(store, records.find(name))
            except RootlessError:
                obj = None
        if obj is None and kind in (None, "image"):
            try:
                obj = image_info(store, store.resolve(name))
            except (ImageNotFound, UsageError, RootlessError):
                obj = None
        if obj is None:
            what = {"image": "image", "container": "container"}.get(kind or "", "object")
            errors.append(f"Error: No such {what}: {name}")
        else:
            found.append(obj)
    return found, errors


# --- history ----------------------------------------------------------------------------

def ago(created: str) -> str:
    """Docker's 'N units ago' for an RFC 3339 time."""
    try:
        when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00")[:26] +
                                               ("+00:00" if created.endswith("Z") else ""))
    except ValueError:
        try:
            when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return "N/A"
    from ..units import human_duration
    return human_duration(time.time() - when.timestamp()) + " ago"


def history(store: Store, name: str) -> list[dict[str, Any]]:
    """Rows newest first: Id (the image id on the top row, <missing> below), Created, CreatedBy, Size, Comment."""
    img = store.resolve(name)
    sizes = [store.layer_size(d) for d in img.diff_ids]
    entries = list(img.config.get("history") or [])
    if not entries:  # an image without history: one row per layer
        entries = [{"created": img.config.get("created", ""), "created_by": ""} for _ in img.diff_ids]
    rows = []
    layer = 0
    for h in entries:
        size = 0
        if not h.get("empty_layer"):
            size = sizes[layer] if layer < len(sizes) else 0
            layer += 1
        rows.append({"Id": "<missing>", "Created": h.get("created", ""), "CreatedBy": h.get("created_by", ""),
                     "Size": size, "Comment": h.get("comment", "")})
    rows.reverse()
    if rows:
        rows[0]["Id"] = img.id
    return rows


__all__ = ["inspect", "history", "image_info", "container_info", "ago", "matching_images"]
