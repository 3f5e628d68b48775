"""The container endpoints: create (Docker's Config and HostConfig as the engine's RunOptions),
start, wait, stop, kill, restart, pause, rename, remove, inspect, list, top, stats, changes,
prune, export and update.

Each handler translates Docker's JSON and query into the engine calls the command line makes
(``container.run.plan``/``create``, ``container.lifecycle``, ...), run in a worker thread.
What the engine cannot do is refused with 400 and a sentence, never ignored when it matters
for security or resources (docs/api.md lists what is refused)."""

from __future__ import annotations

import csv
import io
import os
import shlex
import time
from typing import Any, AsyncIterator

import trio

from .http import ApiError, Request, Response, json_response, no_content
from .router import route

# --- create: Docker's container configuration as RunOptions ------------------------------------


def _unset(value: Any) -> bool:
    return value in (None, 0, "", False, [], {})


# HostConfig fields we cannot honour, with why; refused when set to anything but their zero
# value (or one of the values listed as harmless).
_REFUSED_HOST = {
    "DeviceCgroupRules": ("", "device cgroup rules need a privileged engine"),
    "Capabilities": ("", "set the capabilities with CapAdd and CapDrop"),
    "VolumesFrom": ("", "VolumesFrom is not supported: name the volumes in Binds or Mounts"),
    "Links": ("", "legacy links are not supported: put the containers on one network instead"),
    "PidMode": ("host", "sharing another container's PID namespace (PidMode) is not supported"),
    "IpcMode": ("private shareable none host", "sharing another container's IPC namespace (IpcMode) is not supported"),
    "UTSMode": ("", "sharing the host's UTS namespace (UTSMode) is not supported"),
    "UsernsMode": ("", "UsernsMode is not supported (rootless always uses a user namespace of its own)"),
    "CgroupnsMode": ("private", "the container always gets a cgroup namespace of its own (CgroupnsMode)"),
    "Cgroup": ("", "joining another cgroup (Cgroup) is not supported"),
    "OomKillDisable": ("", "OomKillDisable is not supported"),
    "OomScoreAdj": ("", "OomScoreAdj is not supported"),
    "MemoryReservation": ("", "MemoryReservation (a soft memory limit) is not supported: use Memory"),
    "KernelMemory": ("", "KernelMemory is not supported"),
    "KernelMemoryTCP": ("", "KernelMemoryTCP is not supported"),
    "MemorySwappiness": ("-1", "MemorySwappiness is not supported"),
    "BlkioWeight": ("", "block I/O limits (BlkioWeight) are not supported"),
    "BlkioWeightDevice": ("", "block I/O limits (BlkioWeightDevice) are not supported"),
    "BlkioDeviceReadBps": ("", "block I/O limits (BlkioDeviceReadBps) are not supported"),
    "BlkioDeviceWriteBps": ("", "block I/O limits (BlkioDeviceWriteBps) are not supported"),
    "BlkioDeviceReadIOps": ("", "block I/O limits (BlkioDeviceReadIOps) are not supported"),
    "BlkioDeviceWriteIOps": ("", "block I/O limits (BlkioDeviceWriteIOps) are not supported"),
    "IOMaximumIOps": ("", "IOMaximumIOps is not supported"),
    "IOMaximumBandwidth": ("", "IOMaximumBandwidth is not supported"),
    "CpuRealtimePeriod": ("", "real-time CPU scheduling is not supported"),
    "CpuRealtimeRuntime": ("", "real-time CPU scheduling is not supported"),
    "CpusetMems": ("", "CpusetMems is not supported: use CpusetCpus"),
    "CpuCount": ("", "CpuCount is a Windows setting: use NanoCpus"),
    "CpuPercent": ("", "CpuPercent is a Windows setting: use NanoCpus"),
    "StorageOpt": ("", "StorageOpt is not supported"),
    "VolumeDriver": ("local", "only the 'local' volume driver exists"),
    "Runtime": ("runc rootless", "the only runtime is rootless's own"),
    "Isolation": ("default", "Isolation is a Windows setting"),
    "ReadonlyPaths": ("", "ReadonlyPaths is not supported: use SecurityOpt mask=PATHS"),
    "MaskedPaths": ("", "MaskedPaths is not supported: use SecurityOpt mask=PATHS or unmask=PATHS"),
}

_REFUSED_CONFIG = {
    "MacAddress": ("", "MacAddress is not supported"),
}


def _devices(hc: dict) -> tuple[list[str], str | None]:
    """HostConfig.Devices and DeviceRequests as --device arguments and --gpus: host nodes bound
    in, CDI names (Driver "cdi"), and `docker run --gpus` (Capabilities [["gpu"]])."""
    out: list[str] = []
    for d in hc.get("Devices") or []:
        d = _obj(d, "Devices[]")
        host = str(d.get("PathOnHost") or "")
        if not host:
            raise ApiError(400, "Devices[].PathOnHost is required: name the host's device node")
        arg = host
        target = str(d.get("PathInContainer") or "")
        perms = str(d.get("CgroupPermissions") or "").replace("m", "")   # rwm is Docker's default: no mknod here
        if (target and target != host) or perms not in ("", "rw"):
            arg += ":" + (target or host)
        if perms not in ("", "rw"):
            arg += ":" + perms
        out.append(arg)
    gpus = None
    for r in hc.get("DeviceRequests") or []:
        r = _obj(r, "DeviceRequests[]")
        driver = str(r.get("Driver") or "")
        ids = _strings(r.get("DeviceIDs"), "DeviceIDs")
        if driver == "cdi":
            out += ids
        elif driver in ("", "nvidia") and any("gpu" in (c or []) for c in r.get("Capabilities") or []):
            if ids:
                gpus = "device=" + ",".join(ids)
            elif r.get("Count") == -1:
                gpus = "all"
            else:
                raise ApiError(400, "a GPU count is not supported: ask for all GPUs or name them "
                                    "(--gpus all, --gpus device=0,1)")
        else:
            raise ApiError(400, f"device requests of driver '{driver}' are not supported: use CDI names "
                                "(Driver \"cdi\", e.g. vendor.com/class=name) or --gpus")
    return out, gpus


def _refuse(where: str, fields: dict, table: dict) -> None:
    for key, (harmless, why) in table.items():
        if key not in fields:
            continue
        value = fields[key]
        if _unset(value) or (isinstance(value, (str, int)) and str(value) in harmless.split()):
            continue
        if key in ("MaskedPaths", "ReadonlyPaths") and value == []:
            continue              # systempaths=unconfined: handled with unmask=ALL
        raise ApiError(400, f"{where}.{key} = {value!r}: {why}")


def _strings(value: Any, what: str) -> list[str]:
    """Docker's string-or-list fields (Cmd, Entrypoint, Dns...)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ApiError(400, f"invalid {what}: expected a list of strings, got {value!r}")


def _obj(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"invalid {what}: expected a JSON object, got {value!r}")
    return value


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"invalid {what}: expected a number, got {value!r}")
    return int(value)


def _seconds(ns: Any, what: str) -> str | None:
    n = _int(ns, what)
    if n < 0:
        raise ApiError(400, f"invalid {what}: {n} is negative")
    return f"{n / 1e9:g}s" if n else None


def _port_specs(bindings: dict) -> list[str]:
    """HostConfig.PortBindings as -p specs; no host port: a free one is chosen (as Docker)."""
    from ..container.runflags import publish_all
    out = []
    for key, hosts in bindings.items():
        port, _, proto = str(key).partition("/")
        proto = proto or "tcp"
        for h in hosts or [{}]:
            h = _obj(h, f"HostConfig.PortBindings[{key!r}]")
            ip, host_port = str(h.get("HostIp") or ""), str(h.get("HostPort") or "")
            if ip in ("0.0.0.0", "::"):
                ip = ""
            if host_port in ("", "0"):
                host_port = publish_all({f"{port}/{proto}": {}})[0].partition(":")[0]
            where = (f"[{ip}]:" if ":" in ip else f"{ip}:") if ip else ""
            out.append(f"{where}{host_port}:{port}/{proto}")
    return out


def _binds(items: list[str]) -> list[str]:
    """HostConfig.Binds: a host path must be absolute (the service's working directory means
    nothing to the client)."""
    for b in items:
        source = b.split(":")[0]
        if len(b.split(":")) > 1 and (source.startswith(".") or ("/" in source and not source.startswith("/"))):
            raise ApiError(400, f"invalid bind '{b}': the host path must be absolute")
    return items


def _mount_arg(m: dict) -> str:
    """A HostConfig.Mounts entry as a --mount argument."""
    kind = str(m.get("Type") or "volume")
    if kind == "bind" and not str(m.get("Source") or "").startswith("/"):
        raise ApiError(400, f"invalid bind mount source {m.get('Source')!r}: the host path must be absolute")
    fields = [f"type={kind}"]
    if m.get("Source"):
        fields.append(f"source={m['Source']}")
    fields.append(f"target={m.get('Target') or ''}")
    if m.get("ReadOnly"):
        fields.append("readonly=true")
    bind = _obj(m.get("BindOptions"), "Mounts[].BindOptions")
    if bind.get("Propagation"):
        fields.append(f"bind-propagation={bind['Propagation']}")
    if bind.get("NonRecursive"):
        raise ApiError(400, "Mounts[].BindOptions.NonRecursive is not supported")
    vol = _obj(m.get("VolumeOptions"), "Mounts[].VolumeOptions")
    if vol.get("NoCopy"):
        fields.append("volume-nocopy=true")
    for k, v in _obj(vol.get("Labels"), "Mounts[].VolumeOptions.Labels").items():
        fields.append(f"volume-label={k}={v}")
    driver = _obj(vol.get("DriverConfig"), "Mounts[].VolumeOptions.DriverConfig")
    if driver.get("Name") not in (None, "", "local") or driver.get("Options"):
        raise ApiError(400, "Mounts[].VolumeOptions.DriverConfig is not supported: only the local driver")
    tmpfs = _obj(m.get("TmpfsOptions"), "Mounts[].TmpfsOptions")
    if tmpfs.get("SizeBytes"):
        fields.append(f"tmpfs-size={_int(tmpfs['SizeBytes'], 'TmpfsOptions.SizeBytes')}")
    if tmpfs.get("Mode"):
        fields.append(f"tmpfs-mode={_int(tmpfs['Mode'], 'TmpfsOptions.Mode'):o}")
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _network(hc: dict, networking: dict) -> tuple[str | None, list[str]]:
    """NetworkMode and NetworkingConfig.EndpointsConfig: the --network and --network-alias."""
    mode = str(hc.get("NetworkMode") or "")
    endpoints = _obj(_obj(networking, "NetworkingConfig").get("EndpointsConfig"), "EndpointsConfig")
    if mode in ("", "default", "bridge") and len(endpoints) == 1 and next(iter(endpoints)) not in ("default",
                                                                                                     "bridge"):
        mode = next(iter(endpoints))
    named = [n for n in endpoints if n not in (mode, "default", "bridge")]
    if named:
        raise ApiError(400, f"a container is created on one network: connect it to {', '.join(named)} after "
                            "it is created (POST /networks/NAME/connect)")
    aliases: list[str] = []
    for name, ep in endpoints.items():
        ep = _obj(ep, f"EndpointsConfig[{name!r}]")
        aliases += _strings(ep.get("Aliases"), "Aliases")
        ipam = _obj(ep.get("IPAMConfig"), "IPAMConfig")
        if any(ipam.get(k) for k in ("IPv4Address", "IPv6Address", "LinkLocalIPs")) or ep.get("MacAddress"):
            raise ApiError(400, f"a fixed address on network {name} is not supported: the address is chosen "
                                "when the container starts")
        if ep.get("Links"):
            raise ApiError(400, "legacy links are not supported: put the containers on one network instead")
    if mode in ("", "default", "bridge"):
        return None, []      # the default stack; Docker ignores aliases on its default bridge too
    return mode, list(dict.fromkeys(aliases))


def _healthcheck(hc: Any) -> dict[str, Any]:
    hc = _obj(hc, "Config.Healthcheck")
    if not hc:
        return {}
    test = _strings(hc.get("Test"), "Healthcheck.Test")
    out: dict[str, Any] = {}
    if test[:1] == ["NONE"]:
        return {"no_healthcheck": True}
    if test[:1] == ["CMD-SHELL"]:
        out["health_cmd"] = " ".join(test[1:])
    elif test[:1] == ["CMD"]:
        out["health_cmd"] = shlex.join(test[1:])
    elif test:
        raise ApiError(400, f"invalid Healthcheck.Test {test!r}: start it with CMD, CMD-SHELL or NONE")
    out["health_interval"] = _seconds(hc.get("Interval"), "Healthcheck.Interval")
    out["health_timeout"] = _seconds(hc.get("Timeout"), "Healthcheck.Timeout")
    out["health_start_period"] = _seconds(hc.get("StartPeriod"), "Healthcheck.StartPeriod")
    retries = _int(hc.get("Retries"), "Healthcheck.Retries")
    out["health_retries"] = retries or None
    return out


def _security_opts(items: list[str], store_root: str) -> list[str]:
    """SecurityOpt: a seccomp profile sent inline (Docker's CLI reads the file and sends its
    JSON) is kept in the store under its digest, so that every start reads the same file."""
    import hashlib
    out = []
    for raw in items:
        key, sep, value = raw.partition("=")
        if key == "seccomp" and value.lstrip().startswith("{"):
            data = value.encode()
            directory = os.path.join(store_root, "seccomp")
            os.makedirs(directory, mode=0o700, exist_ok=True)
            path = os.path.join(directory, hashlib.sha256(data).hexdigest() + ".json")
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.rename(tmp, path)
            raw = f"seccomp={path}"
        elif key == "systempaths" and value == "unconfined":
            raw = "unmask=ALL"
        out.append(raw)
    return out


def run_options(body: dict, name: str | None, store_root: str):
    """Docker's ContainerCreate body as the engine's RunOptions (checked by ``plan`` later);
    also the extra exposed ports (Config.ExposedPorts) and whether to publish them all."""
    from ..container.run import RunOptions
    cfg = _obj(body, "body")
    hc = _obj(cfg.get("HostConfig"), "HostConfig")
    _refuse("HostConfig", hc, _REFUSED_HOST)
    _refuse("Config", cfg, _REFUSED_CONFIG)
    image = cfg.get("Image")
    if not image or not isinstance(image, str):
        raise ApiError(400, "Config.Image is required: name the image to create the container from")
    env = [e for e in _strings(cfg.get("Env"), "Env") if "=" in e]   # KEY alone: unset in the client
    cmd = _strings(cfg.get("Cmd"), "Cmd")
    entrypoint = cfg.get("Entrypoint")
    if entrypoint is not None:
        entrypoint = _strings(entrypoint, "Entrypoint")
    labels = _obj(cfg.get("Labels"), "Labels")
    binds = _binds(_strings(hc.get("Binds"), "Binds"))
    mounts = [_obj(m, "Mounts[]") for m in hc.get("Mounts") or []]
    # Config.Volumes lists every volume path, the ones Binds or Mounts fill included (compose
    # sends both): only the others are anonymous volumes
    covered = {(b.split(":")[1] if ":" in b else b).rstrip("/") for b in binds} | \
        {str(m.get("Target") or "").rstrip("/") for m in mounts}
    volumes = [v for v in _obj(cfg.get("Volumes"), "Volumes") if v.rstrip("/") not in covered]
    policy = _obj(hc.get("RestartPolicy"), "RestartPolicy")
    restart = str(policy.get("Name") or "no")
    if restart == "on-failure" and _int(policy.get("MaximumRetryCount"), "MaximumRetryCount"):
        restart += f":{_int(policy['MaximumRetryCount'], 'MaximumRetryCount')}"
    network, aliases = _network(hc, _obj(body.get("NetworkingConfig"), "NetworkingConfig"))
    if cfg.get("NetworkDisabled"):
        network = "none"
    memory = _int(hc.get("Memory"), "Memory")
    swap = _int(hc.get("MemorySwap"), "MemorySwap")
    nano = _int(hc.get("NanoCpus"), "NanoCpus")
    quota, period = _int(hc.get("CpuQuota"), "CpuQuota"), _int(hc.get("CpuPeriod"), "CpuPeriod")
    if nano and quota > 0:
        raise ApiError(400, "NanoCpus and CpuQuota conflict: give one of them")
    cpus = f"{nano / 1e9:g}" if nano else f"{quota / (period or 100000):g}" if quota > 0 else None
    pids = hc.get("PidsLimit")
    shares = _int(hc.get("CpuShares"), "CpuShares")
    shm = _int(hc.get("ShmSize"), "ShmSize")
    log = _obj(hc.get("LogConfig"), "LogConfig")
    ulimits = []
    for u in hc.get("Ulimits") or []:
        u = _obj(u, "Ulimits[]")
        ulimits.append(f"{u.get('Name')}={_int(u.get('Soft'), 'Ulimits.Soft')}:{_int(u.get('Hard'), 'Ulimits.Hard')}")
    tmpfs = [f"{k}:{v}" if v else k for k, v in _obj(hc.get("Tmpfs"), "Tmpfs").items()]
    security = _security_opts(_strings(hc.get("SecurityOpt"), "SecurityOpt"), store_root)
    if hc.get("MaskedPaths") == [] or hc.get("ReadonlyPaths") == []:
        security.append("unmask=ALL")
    hosts = [h.replace("=", ":", 1) if "=" in h else h for h in _strings(hc.get("ExtraHosts"), "ExtraHosts")]
    stop_signal = cfg.get("StopSignal") or None
    stop_timeout = cfg.get("StopTimeout")
    if stop_timeout is not None:
        stop_timeout = _int(stop_timeout, "StopTimeout")
    devices, gpus = _devices(hc)
    opts = RunOptions(
        device=devices, gpus=gpus,
        image=image, command=cmd, entrypoint=entrypoint, name=name or None, detach=True,
        env=env, workdir=cfg.get("WorkingDir") or None, user=cfg.get("User") or None,
        hostname=cfg.get("Hostname") or None, domainname=cfg.get("Domainname") or None,
        label=[f"{k}={v}" for k, v in labels.items()], tty=bool(cfg.get("Tty")),
        interactive=bool(cfg.get("OpenStdin")), stop_signal=stop_signal, stop_timeout=stop_timeout,
        volume=binds + volumes,
        mount=[_mount_arg(m) for m in mounts],
        publish=_port_specs(_obj(hc.get("PortBindings"), "PortBindings")),
        network=network, network_alias=aliases, restart=restart,
        memory=str(memory) if memory else None, memory_swap=str(swap) if swap else None, cpus=cpus,
        cpu_shares=str(shares) if shares else None, cpuset_cpus=hc.get("CpusetCpus") or None,
        pids_limit=str(pids) if isinstance(pids, int) and pids > 0 else None,
        tmpfs=tmpfs, cap_add=_strings(hc.get("CapAdd"), "CapAdd"), cap_drop=_strings(hc.get("CapDrop"), "CapDrop"),
        read_only=bool(hc.get("ReadonlyRootfs")), rm=bool(hc.get("AutoRemove")),
        privileged=bool(hc.get("Privileged")), security_opt=security, add_host=hosts,
        dns=_strings(hc.get("Dns"), "Dns"), dns_search=_strings(hc.get("DnsSearch"), "DnsSearch"),
        dns_option=_strings(hc.get("DnsOptions"), "DnsOptions"), init=bool(hc.get("Init")),
        shm_size=str(shm) if shm else None, ulimit=ulimits,
        pid="host" if hc.get("PidMode") == "host" else None, ipc="host" if hc.get("IpcMode") == "host" else None,
        sysctl=[f"{k}={v}" for k, v in _obj(hc.get("Sysctls"), "Sysctls").items()],
        group_add=_strings(hc.get("GroupAdd"), "GroupAdd"),
        log_driver=log.get("Type") or None, log_opt=[f"{k}={v}" for k, v in _obj(log.get("Config"), "Config").items()],
        cgroup_parent=hc.get("CgroupParent") or None,   # else cgroups.default_parent(), in run.plan
        storage_driver=os.environ.get("ROOTLESS_STORAGE_DRIVER") or "auto",
        **_healthcheck(cfg.get("Healthcheck")))
    exposed = list(_obj(cfg.get("ExposedPorts"), "ExposedPorts"))
    return opts, exposed, bool(hc.get("PublishAllPorts"))


def _create(store_root: str, opts, exposed: list[str], publish_all: bool, platform: str | None):
    from ..container.run import create, plan
    from ..container.runflags import publish_all as free_ports
    from ..image.obtain import check_platform
    from ..image.store import Store
    store = Store(store_root)
    img = check_platform(store.resolve(opts.image), platform, opts.image, "missing")
    opts.image = img.ref or img.id
    if publish_all:
        wanted = {**(img.run_config.get("ExposedPorts") or {}), **{p if "/" in p else p + "/tcp": {} for p in exposed}}
        published = {spec.rpartition(":")[2] for spec in opts.publish}
        opts.publish += free_ports({p: {} for p in wanted if (p if "/" in p else p + "/tcp") not in published})
    if exposed:
        opts.expose = exposed    # kept in the record's options: inspect's Config.ExposedPorts
    p = plan(store, opts, image=img)
    rec = create(store, p)
    return rec.id, list(p.warnings)


@route("POST", "/containers/create")
async def create_container(req: Request) -> Response:
    body = await req.json()
    opts, exposed, publish_all = run_options(body, req.arg("name"), req.store_root)
    cid, warnings = await req.engine(_create, req.store_root, opts, exposed, publish_all, req.arg("platform"))
    return json_response({"Id": cid, "Warnings": warnings}, 201)


# --- the life of a container --------------------------------------------------------------------


def _find(store_root: str, key: str):
    from ..container.records import Containers
    from ..image.store import Store
    return Containers(Store(store_root)).find(key)


def _is_running(rec) -> bool:
    from ..container.records import running
    return running(rec)


@route("POST", "/containers/{name}/start")
async def start(req: Request, name: str) -> Response:
    from ..container import lifecycle
    body = await req.json()
    if body:
        raise ApiError(400, "a HostConfig at start is no longer supported: give it at create")
    rec = await req.engine(_find, req.store_root, name)
    if _is_running(rec):
        return Response(304, b"", None)
    await req.engine(lifecycle.start, req.store, rec.id, False)
    return no_content()


async def _wait_body(req: Request, waiter) -> AsyncIterator[bytes]:
    """Polls the waiter until its condition holds; a newline now and then (JSON readers skip
    it) finds out whether the client is still there."""
    import json
    delay, quiet = 0.02, 0.0
    from ..errors import RootlessError
    while True:
        try:
            code = await req.engine(waiter.poll)
        except (RootlessError, OSError) as e:   # the head is sent: the error goes in the body
            yield json.dumps({"StatusCode": -1, "Error": {"Message": str(e)}}).encode() + b"\n"
            return
        if code is not None:
            yield json.dumps({"StatusCode": code, "Error": None}).encode() + b"\n"
            return
        await trio.sleep(delay)
        quiet += delay
        delay = min(delay * 1.5, 0.25)
        if quiet >= 5:
            quiet = 0.0
            yield b"\n"


@route("POST", "/containers/{name}/wait")
async def wait(req: Request, name: str) -> Response:
    from ..container.lifecycle import Waiter
    waiter = await req.engine(Waiter, req.store, name, req.arg("condition") or "not-running")
    return Response(200, _wait_body(req, waiter), "application/json")


def _stop(store_root: str, key: str, grace: float | None, sig: str | None) -> bool:
    """Stop the container; False if it was not running (304)."""
    from ..container import lifecycle
    from ..container.records import _alive
    from ..image.store import Store
    store = Store(store_root)
    rec = _find(store_root, key)
    monitor = int(rec.config.get("monitor") or 0)
    if not _is_running(rec) and not (monitor and _alive(monitor)):
        return False
    if grace is None:       # the container's own (Config.StopTimeout), else Docker's 10 s
        own = (rec.config.get("options") or {}).get("stop_timeout")
        grace = 10 if own is None or own < 0 else own
    lifecycle.stop(store, rec.id, float(grace), sig)
    return True


def _grace(req: Request) -> int | None:
    t = req.int_arg("t")
    if t is not None and t < 0:
        return 0 if t == -1 else None     # Docker: -1 waits for ever; we give no grace beyond SIGKILL's
    return t


@route("POST", "/containers/{name}/stop")
async def stop(req: Request, name: str) -> Response:
    stopped = await req.engine(_stop, req.store_root, name, _grace(req), req.arg("signal") or None)
    return no_content() if stopped else Response(304, b"", None)


@route("POST", "/containers/{name}/restart")
async def restart(req: Request, name: str) -> Response:
    from ..container import lifecycle
    await req.engine(_stop, req.store_root, name, _grace(req), req.arg("signal") or None)
    await req.engine(lifecycle.start, req.store, name, False)
    return no_content()


@route("POST", "/containers/{name}/kill")
async def kill(req: Request, name: str) -> Response:
    from ..container import lifecycle
    from ..container.procs import parse_signal
    sig = parse_signal(req.arg("signal") or "KILL")
    await req.engine(lifecycle.kill, req.store, name, sig)
    return no_content()


@route("POST", "/containers/{name}/pause")
async def pause(req: Request, name: str) -> Response:
    from ..container import lifecycle
    await req.engine(lifecycle.pause, req.store, name, True)
    return no_content()


@route("POST", "/containers/{name}/unpause")
async def unpause(req: Request, name: str) -> Response:
    from ..container import lifecycle
    await req.engine(lifecycle.pause, req.store, name, False)
    return no_content()


@route("POST", "/containers/{name}/rename")
async def rename(req: Request, name: str) -> Response:
    from ..container import lifecycle
    new = req.arg("name")
    if not new:
        raise ApiError(400, "rename needs the new name: ?name=NEW")
    await req.engine(lifecycle.rename, req.store, name, new)
    return no_content()


def _remove(store_root: str, key: str, force: bool, volumes: bool) -> None:
    from ..container.records import ContainerGone, Containers
    from ..errors import NotFound
    from ..image.store import Store
    from ..sandbox import idmap
    store = Store(store_root)
    records = Containers(store)
    maps = idmap.detect()
    rec = records.find(key)
    try:
        records.remove(rec, maps, force)
    except ContainerGone:
        raise NotFound(f"no such container: '{key}' (it was removed meanwhile)") from None
    if volumes:
        from ..volumes import remove_container_volumes
        remove_container_volumes(store, rec, maps)


@route("DELETE", "/containers/{name}")
async def remove(req: Request, name: str) -> Response:
    if req.flag("link"):
        raise ApiError(400, "legacy links are not supported, so there is none to remove")
    await req.engine(_remove, req.store_root, name, req.flag("force"), req.flag("v"))
    return no_content()


# --- reading containers -------------------------------------------------------------------------


def _size_rw(store_root: str, cid: str) -> int:
    from ..container.lifecycle import _disk_usage
    from ..image.store import Store
    directory = Store(store_root).container_dir(cid)
    upper = os.path.join(directory, "upper")
    return _disk_usage(upper if os.path.isdir(upper) else os.path.join(directory, "rootfs"))


def _inspect(store_root: str, key: str, size: bool) -> dict:
    from ..errors import RootlessError
    from ..image.inspect import container_info, image_size
    from ..image.store import Store
    store = Store(store_root)
    rec = _find(store_root, key)
    info = container_info(store, rec)
    if size:
        info["SizeRw"] = _size_rw(store_root, rec.id)
        try:
            info["SizeRootFs"] = info["SizeRw"] + image_size(store, store.resolve(rec.image_id))
        except RootlessError:      # its image is gone ('rmi -f')
            info["SizeRootFs"] = info["SizeRw"]
    return info


@route("GET", "/containers/{name}/json")
async def inspect(req: Request, name: str) -> Response:
    return json_response(await req.engine(_inspect, req.store_root, name, req.flag("size")))


def _summary(store, rec, state: str, size: bool) -> dict:
    from ..container.listing import _status
    from ..errors import RootlessError
    from ..image.inspect import _exposed, _mounts, image_size
    from ..network.ports import parse_port
    o = rec.config.get("options") or {}
    ports = []
    running = state in ("running", "paused")
    if running:
        bound = set()
        for spec in o.get("publish") or []:
            for m in parse_port(spec):
                bound.add(f"{m.container_port}/{m.proto}")
                ports.append({"IP": m.host_ip or "0.0.0.0", "PrivatePort": m.container_port,
                              "PublicPort": m.host_port, "Type": m.proto})
        for p in _exposed(rec, o, None):
            if p not in bound:
                port, _, proto = p.partition("/")
                ports.append({"PrivatePort": int(port), "Type": proto or "tcp"})
    networks = {n: {"IPAddress": str(i.get("ip") or ""), "NetworkID": str(i.get("id") or n), "Aliases": None}
                for n, i in (rec.config.get("networks") or {}).items()}
    mode = o.get("network") or "bridge"
    if not networks and not mode.startswith("container:"):
        networks = {mode: {"IPAddress": "", "NetworkID": mode, "Aliases": None}}
    out = {"Id": rec.id, "Names": ["/" + rec.name], "Image": rec.image, "ImageID": rec.image_id,
           "Command": " ".join(shlex.quote(a) if " " in a else a for a in rec.command), "Created": int(rec.created),
           "Ports": ports, "Labels": rec.config.get("labels") or {}, "State": state,
           "Status": _status(store, rec, running), "HostConfig": {"NetworkMode": mode},
           "NetworkSettings": {"Networks": networks}, "Mounts": _mounts(store, rec.config)}
    if size:
        out["SizeRw"] = _size_rw(store.root, rec.id)
        try:
            out["SizeRootFs"] = out["SizeRw"] + image_size(store, store.resolve(rec.image_id))
        except RootlessError:
            out["SizeRootFs"] = out["SizeRw"]       # its image is gone ('rmi -f')
    return out


def _list(store_root: str, show_all: bool, limit: int | None, size: bool, filters: list[str]) -> list[dict]:
    from ..container.listing import matching
    from ..image.store import Store
    store = Store(store_root)
    rows = matching(store, show_all or (limit is not None and limit > 0), filters)
    if limit is not None and limit > 0:
        rows = rows[:limit]
    return [_summary(store, rec, state, size) for rec, state in rows]


@route("GET", "/containers/json")
async def list_containers(req: Request) -> Response:
    limit = req.int_arg("limit")
    return json_response(await req.engine(_list, req.store_root, req.flag("all"), limit, req.flag("size"),
                                          req.filter_args()))


@route("GET", "/containers/{name}/top")
async def top(req: Request, name: str) -> Response:
    from ..container.lifecycle import top as processes
    rows = await req.engine(processes, req.store, name)
    return json_response({"Titles": ["PID", "USER", "COMMAND"],
                          "Processes": [[str(pid), user, cmd] for pid, user, cmd in rows]})


def _changes(store_root: str, key: str) -> list[dict] | None:
    from ..container.commit import diff
    from ..image.store import Store
    from ..sandbox import idmap
    kinds = {"C": 0, "A": 1, "D": 2}
    return [{"Path": path, "Kind": kinds[kind]} for kind, path in diff(Store(store_root), idmap.detect(), key)] or None


@route("GET", "/containers/{name}/changes")
async def changes(req: Request, name: str) -> Response:
    return json_response(await req.engine(_changes, req.store_root, name))


@route("POST", "/containers/prune")
async def prune(req: Request) -> Response:
    from ..container.lifecycle import prune_containers
    gone, size = await req.engine(prune_containers, req.store, req.filter_args())
    return json_response({"ContainersDeleted": gone or None, "SpaceReclaimed": size})


# --- stats --------------------------------------------------------------------------------------


def _system_cpu_ns() -> int:
    """The host's CPU time (every CPU, every state) in nanoseconds, as Docker's system_cpu_usage."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:8]
        return sum(int(x) for x in fields) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0


def _stamp(t: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reading(store_root: str, key: str) -> dict:
    """One of Docker's stats objects (without precpu_stats, which the caller fills in)."""
    from ..container.stats import sample
    from ..image.store import Store
    rec, s = sample(Store(store_root), key)
    cpus = len(os.sched_getaffinity(0)) or 1
    usage = int(s.get("cpu_usage_usec") or 0) * 1000
    limit = s.get("memory_limit_bytes")
    return {
        "id": rec.id, "name": "/" + rec.name, "read": _stamp(time.time()),
        "pids_stats": {k: v for k, v in (("current", s.get("pids_current")), ("limit", s.get("pids_limit")))
                       if v is not None},
        "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None,
                        "io_queue_recursive": None, "io_service_time_recursive": None,
                        "io_wait_time_recursive": None, "io_merged_recursive": None,
                        "io_time_recursive": None, "sectors_recursive": None},
        "num_procs": 0, "storage_stats": {},
        "cpu_stats": {"cpu_usage": {"total_usage": usage, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                      "system_cpu_usage": _system_cpu_ns() if s else 0, "online_cpus": cpus,
                      "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
        "memory_stats": {"usage": int(s.get("memory_usage_bytes") or 0), "stats": {},
                         "limit": int(limit) if limit else _mem_total()} if s else {},
    }


async def _stats_body(req: Request, name: str, first: dict, stream: bool, one_shot: bool) -> AsyncIterator[bytes]:
    import json
    blank = {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0, "online_cpus": 0,
             "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}
    before, pre_read = first, "0001-01-01T00:00:00Z"
    if not stream and one_shot:
        yield json.dumps({**first, "preread": pre_read, "precpu_stats": blank}).encode() + b"\n"
        return
    from ..errors import RootlessError
    while True:
        await trio.sleep(1.0 if stream else 0.5)
        try:
            now = await req.engine(_reading, req.store_root, first["id"])
        except RootlessError:
            return          # removed meanwhile: the stream ends (the head is sent, no error can follow)
        yield json.dumps({**now, "preread": before["read"], "precpu_stats": before["cpu_stats"]}).encode() + b"\n"
        if not stream:
            return
        before = now


@route("GET", "/containers/{name}/stats")
async def stats(req: Request, name: str) -> Response:
    first = await req.engine(_reading, req.store_root, name)     # 404 before the stream starts
    return Response(200, _stats_body(req, name, first, req.flag("stream", True), req.flag("one-shot")),
                    "application/json")


# --- export -------------------------------------------------------------------------------------


class _ChannelWriter(io.RawIOBase):
    """A file the engine writes (in a worker thread) that feeds a trio channel: a client that
    went away makes the next write fail, which ends the engine's work."""

    def __init__(self, send: trio.MemorySendChannel, token):
        self.send, self.token = send, token

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            trio.from_thread.run(self.send.send, bytes(data), trio_token=self.token)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
            raise BrokenPipeError("the client went away") from None
        return len(data)


async def _export_body(req: Request, rec_id: str) -> AsyncIterator[bytes]:
    """The tar the engine writes in a thread of its own, passed on as it comes; closed early
    (the client went away), the thread's next write fails and the export ends."""
    import threading
    from ..container.export import export
    from ..errors import RootlessError
    from ..sandbox import idmap
    send, receive = trio.open_memory_channel(4)
    token = trio.lowlevel.current_trio_token()
    store = req.store

    def produce() -> None:
        writer = _ChannelWriter(send, token)
        try:
            export(store, idmap.detect(), rec_id, writer)
        except (BrokenPipeError, RootlessError, OSError):
            pass        # the client went away, or the tar ends early: the client sees a short archive
        finally:
            try:
                trio.from_thread.run_sync(send.close, trio_token=token)
            except trio.RunFinishedError:
                pass

    threading.Thread(target=produce, name="export", daemon=True).start()
    try:
        async for chunk in receive:
            yield chunk
    finally:
        receive.close()


@route("GET", "/containers/{name}/export")
async def export_container(req: Request, name: str) -> Response:
    rec = await req.engine(_find, req.store_root, name)
    return Response(200, _export_body(req, rec.id), "application/x-tar")


# --- update -------------------------------------------------------------------------------------


@route("POST", "/containers/{name}/update")
async def update(req: Request, name: str) -> Response:
    """Resource limits (Memory, MemorySwap, NanoCpus or CpuQuota, CpuShares, PidsLimit,
    CpusetCpus) and the RestartPolicy; a running container's cgroup changes at once."""
    from ..container import lifecycle
    body = _obj(await req.json(), "body")
    _refuse("update", body, _REFUSED_HOST)
    changes: dict[str, str] = {}
    for key, option in (("Memory", "memory"), ("MemorySwap", "memory_swap"), ("CpuShares", "cpu_shares")):
        value = _int(body.get(key), key)
        if value:
            changes[option] = str(value)
    nano, quota = _int(body.get("NanoCpus"), "NanoCpus"), _int(body.get("CpuQuota"), "CpuQuota")
    if nano and quota > 0:
        raise ApiError(400, "NanoCpus and CpuQuota conflict: give one of them")
    if nano or quota > 0:
        period = _int(body.get("CpuPeriod"), "CpuPeriod") or 100000
        changes["cpus"] = f"{nano / 1e9:g}" if nano else f"{quota / period:g}"
    if body.get("PidsLimit") is not None:
        pids = _int(body.get("PidsLimit"), "PidsLimit")
        changes["pids_limit"] = str(pids) if pids > 0 else "-1"
    if body.get("CpusetCpus"):
        changes["cpuset_cpus"] = str(body["CpusetCpus"])
    policy = _obj(body.get("RestartPolicy"), "RestartPolicy")
    if policy.get("Name"):
        restart = str(policy["Name"])
        count = _int(policy.get("MaximumRetryCount"), "MaximumRetryCount")
        changes["restart"] = f"{restart}:{count}" if restart == "on-failure" and count else restart
    await req.engine(lifecycle.update, req.store, name, changes)
    return json_response({"Warnings": []})
