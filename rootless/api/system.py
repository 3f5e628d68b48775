"""``/_ping``, ``/version`` and ``/info``: what a client asks first, to negotiate the API
version and to print ``docker version`` / ``docker info``."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

from .http import Request, Response, json_response, text_response
from .router import API_VERSION, MIN_API_VERSION, route, version_text


@route("GET", "/_ping")
async def ping(req: Request) -> Response:
    r = text_response("OK")
    r.headers += [("Cache-Control", "no-cache, no-store, must-revalidate"), ("Pragma", "no-cache")]
    return r


@route("HEAD", "/_ping")
async def ping_head(req: Request) -> Response:
    return await ping(req)


def _ours() -> str:
    from .. import __version__
    return __version__


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@route("GET", "/version")
async def version(req: Request) -> Response:
    ours = _ours()
    api, min_api = version_text(API_VERSION), version_text(MIN_API_VERSION)
    return json_response({
        "Platform": {"Name": f"rootless {ours}"},
        "Components": [{"Name": "Engine", "Version": ours,
                        "Details": {"ApiVersion": api, "MinAPIVersion": min_api, "Os": "linux", "Arch": _arch(),
                                    "KernelVersion": platform.release(), "Python": platform.python_version()}}],
        "Version": ours, "ApiVersion": api, "MinAPIVersion": min_api, "GitCommit": "", "GoVersion": "",
        "Os": "linux", "Arch": _arch(), "KernelVersion": platform.release(), "BuildTime": "",
    })


def _info(store_root: str) -> dict[str, Any]:
    from .. import info as host_info
    from ..container.listing import ps
    from ..image.store import Store
    store = Store(store_root)
    found = host_info.info(store_root, versions=False)
    rows = ps(store, show_all=True)
    running = sum(1 for r in rows if r.get("State") == "running")
    paused = sum(1 for r in rows if r.get("State") == "paused")
    images = {digest for digest in store.tags().values()}
    cg = found.get("Cgroups") or {}
    controllers = set(cg.get("Controllers") or ())
    warnings = []
    if found["IdMaps"]["Mode"] == "single":
        warnings.append(f"WARNING: single-uid mode: {found['IdMaps']['Why']}")
    mem_total = 0
    try:
        with open("/proc/meminfo") as f:
            mem_total = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "ID": "", "Name": platform.node(), "ServerVersion": _ours(),
        "Containers": len(rows), "ContainersRunning": running, "ContainersPaused": paused,
        "ContainersStopped": len(rows) - running - paused, "Images": len(images),
        "Driver": found["StorageDriver"]["Auto"], "DriverStatus": [["Store", store_root]],
        "Plugins": {"Volume": ["local"], "Network": ["slirp4netns", "pasta", "bridge", "none", "host"],
                    "Authorization": None, "Log": ["json-file", "k8s-file", "none"]},
        "MemoryLimit": "memory" in controllers, "SwapLimit": "memory" in controllers,
        "CpuCfsPeriod": "cpu" in controllers, "CpuCfsQuota": "cpu" in controllers,
        "CPUShares": "cpu" in controllers, "CPUSet": "cpuset" in controllers, "PidsLimit": "pids" in controllers,
        "OomKillDisable": False, "IPv4Forwarding": True, "BridgeNfIptables": False, "BridgeNfIp6tables": False,
        "Debug": False, "NFd": len(os.listdir("/proc/self/fd")), "NGoroutines": 0,
        "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
        "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs" if cg.get("Kind") else "none",
        "CgroupVersion": "2" if cg.get("Kind") == "v2" else "1", "NEventsListener": 0,
        "KernelVersion": platform.release(), "OperatingSystem": found["OperatingSystem"],
        "OSVersion": "", "OSType": "linux", "Architecture": platform.machine(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"], "Mirrors": []},
        "NCPU": os.cpu_count() or 1, "MemTotal": mem_total, "DockerRootDir": store_root,
        "HttpProxy": os.environ.get("HTTP_PROXY", ""), "HttpsProxy": os.environ.get("HTTPS_PROXY", ""),
        "NoProxy": os.environ.get("NO_PROXY", ""), "Labels": [], "ExperimentalBuild": False,
        "Runtimes": {"rootless": {"path": "rootless"}}, "DefaultRuntime": "rootless",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                  "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": False, "Isolation": "", "InitBinary": "catatonit",
        "ContainerdCommit": {"ID": "", "Expected": ""}, "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": ["name=seccomp,profile=default", "name=rootless", "name=cgroupns"],
        "Warnings": warnings,
    }


@route("GET", "/info")
async def info(req: Request) -> Response:
    return json_response(await req.engine(_info, req.store_root))


def _unix(created: str) -> int:
    """An image's RFC 3339 ``created`` (nanoseconds and all) as Unix seconds."""
    import datetime
    import re
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?", created or "")
    if not m:
        return 0
    zone = m.group(2) or "Z"
    try:
        return int(datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if zone == "Z" else zone)).timestamp())
    except ValueError:
        return 0


def _df(store_root: str) -> dict[str, Any]:
    from ..image.gc import df_detail
    from ..image.store import Store
    d = df_detail(Store(store_root))
    images = [{"Id": i["id"], "ParentId": "", "RepoTags": i["tags"],
               "RepoDigests": [f"{t.rsplit(':', 1)[0]}@{i['manifest']}" for t in i["tags"][:1]],
               "Created": _unix(i["created"]), "Size": i["size"], "SharedSize": i["shared_size"],
               "VirtualSize": i["size"], "Labels": i["labels"], "Containers": i["containers"]} for i in d["images"]]
    containers = [{"Id": c["id"], "Names": ["/" + c["name"]], "Image": c["image"], "ImageID": c["image_id"],
                   "Command": " ".join(c["command"]), "Created": int(c["created"]), "Ports": [],
                   "SizeRw": c["size_rw"], "SizeRootFs": c["size_rw"], "Labels": c["labels"], "State": c["state"],
                   "Status": c["state"].capitalize(), "HostConfig": {"NetworkMode": "default"},
                   "NetworkSettings": {"Networks": {}}, "Mounts": []} for c in d["containers"]]
    volumes = [{**{k: v for k, v in vol.items() if k not in ("size", "refcount")},
                "UsageData": {"Size": vol["size"], "RefCount": vol["refcount"]}} for vol in d["volumes"]]
    cache = [{"ID": layer["id"].removeprefix("sha256:")[:25], "Parent": "", "Type": "regular",
              "Description": "a layer of the build cache", "InUse": False, "Shared": False, "Size": layer["size"],
              "CreatedAt": "0001-01-01T00:00:00Z", "LastUsedAt": None, "UsageCount": 0}
             for layer in d["build_cache"]]
    if d["cache_mounts_size"]:
        cache.append({"ID": "cache-mounts", "Parent": "", "Type": "exec.cachemount",
                      "Description": "RUN --mount=type=cache directories", "InUse": False, "Shared": False,
                      "Size": d["cache_mounts_size"], "CreatedAt": "0001-01-01T00:00:00Z", "LastUsedAt": None,
                      "UsageCount": 0})
    return {"LayersSize": d["layers_size"], "Images": images, "Containers": containers, "Volumes": volumes,
            "BuildCache": cache}


@route("GET", "/system/df")
async def system_df(req: Request) -> Response:
    return json_response(await req.engine(_df, req.store_root))
