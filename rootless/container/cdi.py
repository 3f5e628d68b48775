"""The Container Device Interface: vendor specs that say what a named device needs.

A spec (``/etc/cdi/*.yaml``, ``/var/run/cdi/*.json``, written by the vendor's tools, e.g.
``nvidia-ctk cdi generate``) has a ``kind`` (``vendor.com/class``), its ``devices`` by name and
``containerEdits``: device nodes, mounts, environment variables, hooks, more gids.  A user asks
for ``vendor.com/class=NAME``; the edits of that device and those of its spec are applied.

The directories are ``$ROOTLESS_CDI_SPEC_DIRS`` (colon-separated) or ``/etc/cdi`` then
``/var/run/cdi``; a device defined in a later directory replaces one of an earlier directory
(as the reference implementation ranks them), twice in one directory is an error.  The format:
https://github.com/cncf-tags/container-device-interface (SPEC.md), versions 0.3.0 to 1.1.x.
This module reads and checks specs; it opens no device and runs nothing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from ..errors import DeviceError

ENV = "ROOTLESS_CDI_SPEC_DIRS"
DEFAULT_DIRS = ("/etc/cdi", "/var/run/cdi")
VERSIONS = ("0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "1.0", "1.1")   # major.minor this module reads
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?"
_KIND = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*/" + _LABEL + "$")
_DEVICE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
_EDIT_KEYS = {"env", "deviceNodes", "mounts", "hooks", "additionalGIDs", "intelRdt", "netDevices"}


@dataclass(frozen=True)
class DeviceNode:
    path: str            # in the container
    host_path: str       # on the host
    permissions: str     # r, w, m letters ("" means rwm)


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    readonly: bool


@dataclass(frozen=True)
class Hook:
    name: str            # the OCI hook point (createRuntime, poststart...)
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None
    source: str = ""     # the spec file, for messages


@dataclass
class Edits:
    """What the requested devices need, in the order the specs give it."""
    env: list[str] = field(default_factory=list)
    device_nodes: list[DeviceNode] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)
    gids: list[int] = field(default_factory=list)


@dataclass
class Spec:
    path: str
    kind: str
    devices: dict[str, dict]          # name -> containerEdits (checked)
    edits: dict                       # the spec-level containerEdits (checked)


def spec_dirs() -> tuple[str, ...]:
    value = os.environ.get(ENV)
    if value is None:
        return DEFAULT_DIRS
    return tuple(d for d in value.split(":") if d)


def is_cdi_name(text: str) -> bool:
    """``vendor.com/class=name`` (a --device value that is not a host path)."""
    return not text.startswith("/") and "=" in text and "/" in text.partition("=")[0]


def split_name(text: str) -> tuple[str, str]:
    kind, _, name = text.partition("=")
    if not _KIND.match(kind) or not _DEVICE.match(name):
        raise DeviceError(f"'{text}' is not a CDI device name: use VENDOR/CLASS=NAME, e.g. nvidia.com/gpu=all")
    return kind, name


def load(path: str) -> Spec:
    """Read and check one spec file; a ``DeviceError`` naming the file and the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise DeviceError(f"cannot read the CDI spec {path}: {os.strerror(e.errno or 0).lower()}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except ImportError:
        raise DeviceError(f"the CDI spec {path} is YAML, and PyYAML is not installed: "
                          "pip install PyYAML (or have the vendor write JSON)") from None
    except Exception as e:  # noqa: BLE001 - json and yaml errors: the file is not valid
        raise DeviceError(f"the CDI spec {path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                          f"{str(e).splitlines()[0]}") from None
    return check(data, path)


def check(data: object, path: str) -> Spec:
    def bad(why: str) -> DeviceError:
        return DeviceError(f"the CDI spec {path} is malformed: {why}; ask whoever wrote it to regenerate it "
                           "(e.g. nvidia-ctk cdi generate)")
    if not isinstance(data, dict):
        raise bad("it is not a mapping of cdiVersion, kind, devices")
    unknown = set(data) - {"cdiVersion", "kind", "devices", "containerEdits", "annotations"}
    if unknown:
        raise bad(f"unknown field {sorted(unknown)[0]!r}")
    version = data.get("cdiVersion")
    if not isinstance(version, str) or not re.match(r"^\d+\.\d+\.\d+", version):
        raise bad("cdiVersion is missing or not a version (e.g. 0.6.0)")
    if ".".join(version.split(".")[:2]) not in VERSIONS:
        raise bad(f"cdiVersion {version} is not one rootless reads (0.3.0 to 1.1.x)")
    kind = data.get("kind")
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise bad(f"kind {kind!r} is not VENDOR/CLASS (e.g. vendor.com/device)")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise bad("it lists no devices")
    by_name: dict[str, dict] = {}
    for dev in devices:
        if not isinstance(dev, dict) or not isinstance(dev.get("name"), str):
            raise bad("a device has no name")
        name = dev["name"]
        if not _DEVICE.match(name):
            raise bad(f"device name {name!r} has characters a name may not have")
        if set(dev) - {"name", "containerEdits", "annotations"}:
            raise bad(f"device {name}: unknown field {sorted(set(dev) - {'name', 'containerEdits', 'annotations'})[0]!r}")
        if name in by_name:
            raise bad(f"device {name} is defined twice")
        by_name[name] = _check_edits(dev.get("containerEdits") or {}, f"device {name}", bad)
    return Spec(path, kind, by_name, _check_edits(data.get("containerEdits") or {}, "containerEdits", bad))


def _check_edits(edits: object, where: str, bad) -> dict:
    if not isinstance(edits, dict):
        raise bad(f"{where}: containerEdits is not a mapping")
    unknown = set(edits) - _EDIT_KEYS
    if unknown:
        raise bad(f"{where}: unknown edit {sorted(unknown)[0]!r}")
    for key in ("env", "deviceNodes", "mounts", "hooks", "additionalGIDs"):
        if edits.get(key) is not None and not isinstance(edits[key], list):
            raise bad(f"{where}: {key} is not a list")
    for item in edits.get("env") or []:
        if not isinstance(item, str) or "=" not in item or not item.partition("=")[0]:
            raise bad(f"{where}: env entry {item!r} is not NAME=VALUE")
    for node in edits.get("deviceNodes") or []:
        if not isinstance(node, dict) or not _absolute(node.get("path")):
            raise bad(f"{where}: a device node has no absolute path")
        if node.get("hostPath") is not None and not _absolute(node.get("hostPath")):
            raise bad(f"{where}: device node {node['path']}: hostPath is not an absolute path")
        perms = node.get("permissions") or ""
        if not isinstance(perms, str) or (perms != "none" and set(perms) - set("rwm")):
            raise bad(f"{where}: device node {node['path']}: permissions {perms!r} are not letters of rwm")
    for mount in edits.get("mounts") or []:
        if not isinstance(mount, dict) or not _absolute(mount.get("hostPath")) or \
                not _absolute(mount.get("containerPath")):
            raise bad(f"{where}: a mount needs an absolute hostPath and containerPath")
        if mount.get("options") is not None and (not isinstance(mount["options"], list)
                                                 or not all(isinstance(o, str) for o in mount["options"])):
            raise bad(f"{where}: mount {mount['containerPath']}: options is not a list of strings")
    for hook in edits.get("hooks") or []:
        if not isinstance(hook, dict) or hook.get("hookName") not in HOOK_NAMES:
            raise bad(f"{where}: a hook's hookName is not one of {', '.join(HOOK_NAMES)}")
        if not _absolute(hook.get("path")):
            raise bad(f"{where}: {hook['hookName']} hook: path is not absolute")
        for key in ("args", "env"):
            if hook.get(key) is not None and (not isinstance(hook[key], list)
                                             or not all(isinstance(a, str) for a in hook[key])):
                raise bad(f"{where}: {hook['hookName']} hook: {key} is not a list of strings")
        timeout = hook.get("timeout")
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
            raise bad(f"{where}: {hook['hookName']} hook: timeout must be a number of seconds above 0")
    for gid in edits.get("additionalGIDs") or []:
        if not isinstance(gid, int) or isinstance(gid, bool) or gid < 0:
            raise bad(f"{where}: additionalGIDs holds {gid!r}, not a group id")
    return edits


def _absolute(value: object) -> bool:
    return isinstance(value, str) and value.startswith("/")


def _spec_files(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names if n.endswith((".json", ".yaml", ".yml"))
            and os.path.isfile(os.path.join(directory, n))]


def registry(kinds: set[str], dirs: tuple[str, ...] | None = None) -> tuple[dict[str, Spec], list[str]]:
    """The specs of ``kinds`` found in ``dirs`` (default ``spec_dirs()``): {kind/name: its spec},
    and the files that could not be read (a requested kind may be in one of them)."""
    devices: dict[str, Spec] = {}
    broken: list[str] = []
    for directory in dirs if dirs is not None else spec_dirs():
        here: dict[str, str] = {}
        for path in _spec_files(directory):
            try:
                spec = load(path)
            except DeviceError as e:
                broken.append(str(e))
                continue
            if spec.kind not in kinds:
                continue
            for name in spec.devices:
                key = f"{spec.kind}={name}"
                if key in here:
                    raise DeviceError(f"CDI device {key} is defined twice, in {here[key]} and {path}: "
                                      "remove one of them")
                here[key] = path
                devices[key] = spec
    return devices, broken


def resolve(names: list[str], dirs: tuple[str, ...] | None = None) -> Edits:
    """The edits for devices ``names`` (``vendor.com/class=name``), their specs' own edits once
    per spec; a ``DeviceError`` for an unknown kind or device, or a malformed spec."""
    wanted = [split_name(n) for n in names]
    found, broken = registry({k for k, _ in wanted}, dirs)
    out = Edits()
    applied: set[str] = set()
    for (kind, name), text in zip(wanted, names):
        spec = found.get(f"{kind}={name}")
        if spec is None:
            kinds = {s.kind for s in found.values()}
            where = ", ".join(dirs if dirs is not None else spec_dirs()) or "(no directories)"
            if kind in kinds:
                known = sorted(n for n, s in found.items() if s.kind == kind)
                why = (f"no CDI device {text}: {kind} has " + ", ".join(k.partition('=')[2] for k in known))
            else:
                why = f"no CDI spec for {kind} in {where} (a site makes one with its vendor's tool, " \
                      "e.g. 'nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml')"
            if broken:
                why += "; these specs could not be read: " + "; ".join(broken)
            raise DeviceError(why)
        if spec.path not in applied:
            applied.add(spec.path)
            _add(out, spec.edits, spec.path, text)
        _add(out, spec.devices[name], spec.path, text)
    return out


def _add(out: Edits, edits: dict, path: str, device: str) -> None:
    for key in ("intelRdt", "netDevices"):
        if edits.get(key):
            raise DeviceError(f"CDI device {device} ({path}) asks for {key}, which needs root on the host "
                              f"(resctrl, moving a host network interface): rootless cannot give it")
    out.env += list(edits.get("env") or [])
    for node in edits.get("deviceNodes") or []:
        perms = node.get("permissions") or "rwm"
        out.device_nodes.append(DeviceNode(node["path"], node.get("hostPath") or node["path"],
                                           "" if perms == "none" else perms))
    for m in edits.get("mounts") or []:
        options = m.get("options") or []
        kind = m.get("type") or "bind"
        if kind not in ("bind", "none", "rbind") and not {"bind", "rbind"} & set(options):
            raise DeviceError(f"CDI device {device} ({path}) asks for a {kind} mount on {m['containerPath']}: "
                              "rootless applies bind mounts only")
        out.mounts.append(Mount(m["hostPath"], m["containerPath"], "ro" in options))
    for h in edits.get("hooks") or []:
        out.hooks.append(Hook(h["hookName"], h["path"], tuple(h.get("args") or ()), tuple(h.get("env") or ()),
                              h.get("timeout"), path))
    out.gids += [g for g in edits.get("additionalGIDs") or [] if g]
