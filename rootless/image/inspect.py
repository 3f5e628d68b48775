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
    from .reference import UNTAGGED_REPO
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


def _port_bindings(publish: list[str]) -> dict[str, list[dict[str, str]]]:
    """Docker's ``{"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}`` of -p options."""
    from ..network.ports import parse_port
    ports: dict[str, list[dict[str, str]]] = {}
    for spec in publish:
        try:
            mappings = parse_port(spec)
        except UsageError:
            continue
        for m in mappings:
            ports.setdefault(f"{m.container_port}/{m.proto}", []).append(
                {"HostIp": m.host_ip, "HostPort": str(m.host_port)})
    return ports


def _ulimits(items: list[str]) -> list[dict[str, Any]] | None:
    out = []
    for item in items:
        name, _, values = item.partition("=")
        soft, _, hard = values.partition(":")
        try:
            out.append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
        except ValueError:
            continue
    return out or None


def _host_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Docker's HostConfig fields, from the run options the record keeps."""
    o = cfg.get("options") or {}
    restart = str(o.get("restart") or "no")
    name, _, count = restart.partition(":")
    try:
        cpus = int(float(o.get("cpus")) * 1e9) if o.get("cpus") else 0
    except ValueError:
        cpus = 0
    return {
        "Binds": list(o.get("volume") or []) or None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": o.get("log_driver") or "json-file",
                      "Config": dict(x.partition("=")[::2] for x in o.get("log_opt") or [])},
        "NetworkMode": o.get("network") or "bridge",
        "PortBindings": _port_bindings(list(o.get("publish") or [])),
        "RestartPolicy": {"Name": name, "MaximumRetryCount": int(count) if count.isdigit() else 0},
        "AutoRemove": bool(o.get("rm")),
        "VolumeDriver": "",
        "VolumesFrom": None,
        "CapAdd": list(o.get("cap_add") or []) or None,
        "CapDrop": list(o.get("cap_drop") or []) or None,
        "CgroupnsMode": "private",
        "Dns": list(o.get("dns") or []),
        "DnsOptions": list(o.get("dns_option") or []),
        "DnsSearch": list(o.get("dns_search") or []),
        "ExtraHosts": list(o.get("add_host") or []) or None,
        "GroupAdd": list(o.get("group_add") or []) or None,
        "IpcMode": o.get("ipc") or "private",
        "Cgroup": "",
        "Links": None,
        "OomScoreAdj": 0,
        "PidMode": o.get("pid") or "",
        "Privileged": bool(o.get("privileged")),
        "PublishAllPorts": bool(o.get("publish_all")),
        "ReadonlyRootfs": bool(o.get("read_only")),
        "SecurityOpt": list(o.get("security_opt") or []) or None,
        "Tmpfs": {t.partition(":")[0]: t.partition(":")[2] for t in o.get("tmpfs") or []} or None,
        "UTSMode": "",
        "UsernsMode": o.get("userns") or "",
        "ShmSize": _bytes(o.get("shm_size")) or 64 << 20,
        "Runtime": "rootless",
        "Isolation": "",
        "Memory": _bytes(o.get("memory")),
        "MemorySwap": _bytes(o.get("memory_swap")),
        "NanoCpus": cpus,
        "CpuShares": int(o["cpu_shares"]) if str(o.get("cpu_shares") or "").isdigit() else 0,
        "CpusetCpus": o.get("cpuset_cpus") or "",
        "PidsLimit": int(o["pids_limit"]) if str(o.get("pids_limit") or "").lstrip("-").isdigit() else None,
        "CgroupParent": o.get("cgroup_parent") or "",
        "Ulimits": _ulimits(list(o.get("ulimit") or [])),
        "Sysctls": dict(x.partition("=")[::2] for x in o.get("sysctl") or []) or None,
        "Init": bool(o.get("init")) or None,
        "Mounts": None,
        **_devices(o),
    }


def _devices(o: dict[str, Any]) -> dict[str, Any]:
    """Devices (--device host nodes) and DeviceRequests (CDI names, --gpus) as Docker shows them."""
    nodes, cdi = [], []
    for item in o.get("device") or []:
        if not item.startswith("/") and "=" in item:
            cdi.append(item)
            continue
        parts = item.split(":")
        target = parts[1] if len(parts) > 1 and parts[1].startswith("/") else parts[0]
        perms = parts[-1] if len(parts) > 1 and not parts[-1].startswith("/") else "rw"
        nodes.append({"PathOnHost": parts[0], "PathInContainer": target, "CgroupPermissions": perms})
    requests = [{"Driver": "cdi", "DeviceIDs": cdi}] if cdi else []
    if o.get("gpus"):
        requests.append({"Driver": "", "Count": -1 if o["gpus"].strip("'\"") == "all" else 0,
                         "DeviceIDs": [] if o["gpus"].strip("'\"") == "all" else
                         o["gpus"].strip("'\"").partition("=")[2].split(","), "Capabilities": [["gpu"]]})
    return {"Devices": nodes or None, "DeviceRequests": requests or None}


def _cmd_and_entrypoint(o: dict[str, Any], image_cfg: dict[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    """The container's Cmd and Entrypoint as Docker reports them (its options over the image's)."""
    entrypoint = o.get("entrypoint")
    if entrypoint is None:
        return list(o.get("command") or []) or image_cfg.get("Cmd"), image_cfg.get("Entrypoint")
    if isinstance(entrypoint, list):
        entrypoint = None if entrypoint in ([], [""]) else list(entrypoint)
    else:
        entrypoint = [entrypoint] if entrypoint else None
    return list(o.get("command") or []) or None, entrypoint


def _network_settings(rec: Record, running: bool, o: dict[str, Any]) -> dict[str, Any]:
    """Docker's NetworkSettings: the published ports (while it runs, as Docker), its networks."""
    from ..network import CONTAINER_IP, GATEWAY_IP
    mode = o.get("network") or "bridge"
    ports: dict[str, Any] = {}
    if running:
        ports = {p: None for p in _exposed(rec, o)}
        for key, bindings in _port_bindings(list(o.get("publish") or [])).items():
            ports[key] = [{"HostIp": b["HostIp"] or "0.0.0.0", "HostPort": b["HostPort"]} for b in bindings]
    networks: dict[str, Any] = {}
    own = running and mode.split(":")[0] in ("bridge", "slirp4netns", "pasta")
    for name, info in (rec.config.get("networks") or {}).items():
        networks[name] = {"IPAMConfig": None, "Links": None, "Aliases": list(info.get("aliases") or []) or None,
                          "NetworkID": str(info.get("id") or name), "EndpointID": "", "Gateway": "",
                          "IPAddress": str(info.get("ip") or "") if running else "", "IPPrefixLen": 0,
                          "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                          "MacAddress": "", "DriverOpts": None}
    if not networks and not mode.startswith("container:"):
        networks[mode] = {"IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": mode, "EndpointID": "",
                          "Gateway": GATEWAY_IP if own else "", "IPAddress": CONTAINER_IP if own else "",
                          "IPPrefixLen": 24 if own else 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
                          "GlobalIPv6PrefixLen": 0, "MacAddress": "", "DriverOpts": None}
    return {"Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0, "Ports": ports, "SandboxKey": "", "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": GATEWAY_IP if own else "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPAddress": CONTAINER_IP if own else "",
            "IPPrefixLen": 24 if own else 0, "IPv6Gateway": "", "MacAddress": "", "Networks": networks}


def _exposed(rec: Record, o: dict[str, Any], image_cfg: dict[str, Any] | None = None) -> dict[str, dict]:
    """The ports the container exposes: its image's, its own (``expose``) and those it publishes."""
    from ..network.ports import parse_port
    out = dict(image_cfg.get("ExposedPorts") or {}) if image_cfg else {}
    for p in o.get("expose") or []:
        out[p if "/" in p else p + "/tcp"] = {}
    for spec in o.get("publish") or []:
        try:
            out.update({f"{m.container_port}/{m.proto}": {} for m in parse_port(spec)})
        except UsageError:
            continue
    return out


def _mounts(store: Store, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for m in cfg.get("mounts") or []:
        rw = bool(m.get("RW", True))
        entry = {"Type": m.get("Type", "volume"), "Source": m.get("Source", ""),
                 "Destination": m.get("Destination", ""), "Mode": "" if rw else "ro", "RW": rw,
                 "Propagation": "rprivate" if m.get("Type") == "bind" else ""}
        if m.get("Type") == "volume":
            entry = {"Type": "volume", "Name": m.get("Name", ""), **{k: v for k, v in entry.items() if k != "Type"},
                     "Driver": m.get("Driver", "local"), "Mode": "z" if rw else "ro"}
        out.append(entry)
    if not out:   # a record from before mounts were recorded
        out = [{"Type": "volume", "Name": v, "Source": os.path.join(store.root, "volumes", v, "_data"),
                "Destination": "", "Driver": "local", "Mode": "", "RW": True, "Propagation": ""}
               for v in cfg.get("volumes") or []]
    return out


def container_info(store: Store, rec: Record) -> dict[str, Any]:
    running = rec.state == "running" and _alive(rec.pid)
    cfg = rec.config or {}
    o = cfg.get("options") or {}
    from ..container.records import restarting
    again = not running and restarting(rec)
    if rec.state == "removing":
        status = "removing"
    elif again:
        status = "restarting"
    elif running:
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
    elif env is None:       # never started: what it will get
        env = list(image_cfg.get("Env") or []) + [e for e in o.get("env") or [] if "=" in e]
    directory = store.container_dir(rec.id)
    upper = os.path.join(directory, "upper")
    from ..container.rootfs import driver_of, driver_reason, internal_errors
    # never started (or by a version that noted nothing): what it asked for — auto decides at start
    driver = driver_of(directory) or o.get("storage_driver") or "auto"
    why = driver_reason(directory)
    errors = internal_errors(directory)
    cmd, entrypoint = _cmd_and_entrypoint(o, image_cfg)
    labels = {**(image_cfg.get("Labels") or {}), **(cfg.get("labels") or {})}
    return {
        "Id": rec.id,
        "Created": _iso(rec.created),
        "Path": rec.command[0] if rec.command else "",
        "Args": rec.command[1:],
        "State": {
            "Status": status,
            "Running": running,
            "Paused": bool(running and cfg.get("paused")),
            "Restarting": again,
            "OOMKilled": bool(rec.oom_killed),
            "Dead": False,
            "Pid": (rec.init_pid or rec.pid) if running else 0,
            "ExitCode": rec.exit_code if rec.exit_code is not None else 0,
            "Error": (f"fuse-overlay answered {len(errors)} request(s) with EIO after an internal error "
                      f"(last: {errors[-1]}); see {os.path.join(directory, 'work', 'fuse-overlay.errors')} "
                      "and report it") if errors else "",
            "StartedAt": _iso(cfg.get("started") or (rec.created if rec.state != "created" else None)),
            "FinishedAt": _iso(rec.finished),
            **({"Health": cfg["health"]} if cfg.get("health") else {}),
        },
        "Image": rec.image_id,
        "ResolvConfPath": os.path.join(directory, "resolv.conf"),
        "HostnamePath": os.path.join(directory, "hostname"),
        "HostsPath": os.path.join(directory, "hosts"),
        "LogPath": os.path.join(directory, "ctr.log"),
        "Name": "/" + rec.name,
        "RestartCount": int(cfg.get("restarts") or 0),
        "Driver": driver,
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": _host_config(cfg),
        "GraphDriver": {"Name": driver,
                        "Data": {"UpperDir": upper if driver != "vfs" else os.path.join(directory, "rootfs"),
                                 "MergedDir": os.path.join(directory, "rootfs"),
                                 **({"Why": why} if why else {})}},
        "Mounts": _mounts(store, cfg),
        "Config": {
            "Hostname": cfg.get("hostname") or o.get("hostname") or rec.id[:12],
            "Domainname": o.get("domainname") or "",
            "User": cfg.get("user") if cfg.get("user") is not None else o.get("user") or image_cfg.get("User") or "",
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "ExposedPorts": _exposed(rec, o, image_cfg) or None,
            "Tty": bool(o.get("tty")),
            "OpenStdin": bool(o.get("interactive")),
            "StdinOnce": False,
            "Env": env,
            "Cmd": cmd,
            "Healthcheck": image_cfg.get("Healthcheck") if not o.get("health_cmd") else {"Test": ["CMD-SHELL",
                                                                                                  o["health_cmd"]]},
            "Image": rec.image,
            "Volumes": image_cfg.get("Volumes"),
            "WorkingDir": cfg.get("cwd") or o.get("workdir") or image_cfg.get("WorkingDir") or "",
            "Entrypoint": entrypoint,
            "OnBuild": None,
            "Labels": labels,
            "StopSignal": cfg.get("stop_signal") or o.get("stop_signal") or image_cfg.get("StopSignal"),
            **({"StopTimeout": o["stop_timeout"]} if o.get("stop_timeout") is not None else {}),
        },
        "NetworkSettings": _network_settings(rec, running, o),
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
