"""``--device`` and ``--gpus``: host device nodes, and CDI devices (``container/cdi.py``), checked.

A user namespace cannot ``mknod``, so a device reaches the container as a bind mount of the
host's node onto a file in the container's ``/dev`` (``sandbox/mounts.py``); the container can
then open it exactly as far as the host's permissions let you.  There is no device cgroup to
configure either: in cgroup v2 device access is a BPF program that only root may attach, so
Docker's ``r``/``w``/``m`` letters cannot narrow anything, and ``m`` (create nodes) can never be
granted.  Everything is checked here, before the container exists.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass, field

from . import cdi
from ..errors import DeviceError, UsageError
from ..sandbox import mounts

GPU_KIND = "nvidia.com/gpu"
# Hook points run by P as the user, and when; createContainer hooks run in the container's mount
# namespace before pivot_root (sandbox/mounts.py); startContainer (a program of the container's
# own, run in it before the command) is refused.
HOOKS_BEFORE = ("prestart", "createRuntime")
HOOKS_AFTER = ("poststart",)
HOOKS_END = ("poststop",)
HOOKS_IN_CONTAINER = ("createContainer",)


@dataclass
class DevicePlan:
    nodes: tuple[tuple[str, str], ...] = ()         # (host node, container path), bind-mounted in /dev
    binds: tuple[mounts.Bind, ...] = ()             # CDI mounts (libraries, tools)
    env: list[tuple[str, str]] = field(default_factory=list)   # CDI environment
    hooks: tuple[cdi.Hook, ...] = ()
    gids: tuple[str, ...] = ()                      # CDI additionalGIDs
    warnings: list[str] = field(default_factory=list)

    def hooks_at(self, points: tuple[str, ...]) -> tuple[cdi.Hook, ...]:
        return tuple(h for h in self.hooks if h.name in points)


def gpus_names(value: str) -> list[str]:
    """Docker's ``--gpus``: ``all``, ``device=0,1`` (also quoted: ``'"device=0,1"'``), as the
    NVIDIA CDI devices ``nvidia.com/gpu=all``, ``=0``, ``=1``."""
    text = value.strip().strip('"').strip("'")
    if text == "all":
        return [f"{GPU_KIND}=all"]
    key, sep, ids = text.partition("=")
    if sep and key == "device" and ids:
        return [f"{GPU_KIND}={i.strip()}" for i in ids.split(",") if i.strip()]
    raise UsageError(f"invalid --gpus '{value}': use all, or device=IDS (e.g. device=0,1); a count of GPUs "
                     f"cannot be chosen for you (name them, or use --device {GPU_KIND}=NAME)")


def parse_device(item: str) -> tuple[str, str, str]:
    """Docker's ``HOST[:CONTAINER][:PERMISSIONS]``: (host path, container path, permissions)."""
    parts = item.split(":")
    if len(parts) > 3 or not parts[0]:
        raise UsageError(f"invalid --device '{item}': use /dev/HOST[:/dev/CONTAINER][:rw], or VENDOR/CLASS=NAME")
    host, target, perms = parts[0], parts[0], "rw"
    if len(parts) == 2:
        if parts[1].startswith("/"):
            target = parts[1]
        else:
            perms = parts[1]
    elif len(parts) == 3:
        target, perms = parts[1], parts[2]
    if not host.startswith("/") or not target.startswith("/"):
        raise UsageError(f"invalid --device '{item}': give absolute paths (/dev/...)")
    if not perms or set(perms) - set("rwm"):
        raise UsageError(f"invalid --device '{item}': permissions are letters of rw (e.g. rw, r)")
    if "m" in perms:
        raise UsageError(f"--device '{item}': 'm' (creating device nodes) cannot be granted without root: "
                         "a user namespace may not mknod; leave it out (rw is the default)")
    return host, os.path.normpath(target), perms


def check_node(host: str, perms: str, what: str) -> list[str]:
    """Refuse a host node that is missing, not a device, or not openable by you as ``perms``
    asks; warnings for access you only have through a group the container does not keep."""
    try:
        st = os.stat(host)
    except OSError as e:
        raise DeviceError(f"{what}: {host} {'does not exist' if e.errno == 2 else os.strerror(e.errno).lower()} "
                          "on this host") from None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise DeviceError(f"{what}: {host} is not a device node; bind-mount files and directories with -v")
    mode = (os.R_OK if "r" in perms else 0) | (os.W_OK if "w" in perms else 0)
    if mode and not os.access(host, mode):
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        bits = (stat.S_IRGRP if "r" in perms else 0) | (stat.S_IWGRP if "w" in perms else 0)
        how = f"e.g. membership of group {group}" if st.st_mode & bits == bits else "the node allows it to its owner only"
        raise DeviceError(f"{what}: you may not open {host} for {_access(perms)} ({stat.filemode(st.st_mode)}, "
                          f"group {group}): a user namespace gives no more access than you have; ask an "
                          f"administrator for access ({how})")
    warnings = []
    other = (stat.S_IROTH if "r" in perms else 0) | (stat.S_IWOTH if "w" in perms else 0)
    owner = (stat.S_IRUSR if "r" in perms else 0) | (stat.S_IWUSR if "w" in perms else 0)
    if mode and (st.st_mode & other) != other and not (st.st_uid == os.getuid() and st.st_mode & owner == owner):
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        warnings.append(f"{what}: you reach {host} through group {group}; the container's process keeps that "
                        "group only in single-uid mode, else it may be refused there")
    return warnings


def _access(perms: str) -> str:
    return {"r": "reading", "w": "writing"}.get(perms, "reading and writing")


def plan(devices: list[str], gpus: str | None, cdi_dirs: tuple[str, ...] | None = None) -> DevicePlan:
    """``--device`` values (host nodes or CDI names) and ``--gpus``, checked against the host."""
    out = DevicePlan()
    nodes: dict[str, str] = {}           # container path -> host node
    names = [d for d in devices if cdi.is_cdi_name(d)] + (gpus_names(gpus) if gpus else [])
    for item in devices:
        if cdi.is_cdi_name(item):
            continue
        host, target, perms = parse_device(item)
        out.warnings += check_node(host, perms, f"--device {item}")
        if perms != "rw":
            out.warnings.append(f"--device {item}: '{perms}' cannot be enforced without a device cgroup "
                                "(cgroup v2 gives unprivileged users none): the container may open the node as "
                                "the host lets you")
        nodes[target] = host
    if not names:
        out.nodes = tuple((h, t) for t, h in nodes.items())
        return out
    edits = cdi.resolve(list(dict.fromkeys(names)), cdi_dirs)
    for node in edits.device_nodes:
        perms = node.permissions.replace("m", "")
        out.warnings += check_node(node.host_path, perms, f"CDI device node {node.path}")
        nodes[os.path.normpath(node.path)] = node.host_path
    binds = []
    for m in edits.mounts:
        if not os.path.exists(m.host_path):
            raise DeviceError(f"the CDI spec mounts {m.host_path} on {m.container_path}, and {m.host_path} does "
                              "not exist on this host: the spec is out of date (regenerate it)")
        binds.append(mounts.Bind(target=m.container_path, source=m.host_path, readonly=m.readonly))
    for hook in edits.hooks:
        if hook.name not in HOOKS_BEFORE + HOOKS_AFTER + HOOKS_END + HOOKS_IN_CONTAINER:
            raise DeviceError(f"the CDI spec {hook.source} has a {hook.name} hook ({hook.path}), a program of "
                              "the container's own run in it before its command, which rootless does not run "
                              "(it runs prestart, createRuntime, createContainer, poststart, poststop): generate "
                              "the spec without it (docs/hpc.md)")
        if not os.access(hook.path, os.X_OK):
            raise DeviceError(f"the CDI spec {hook.source} has a {hook.name} hook {hook.path} that you cannot run "
                              "(missing or not executable)")
    for item in edits.env:
        key, _, value = item.partition("=")
        out.env.append((key, value))
    out.nodes = tuple((h, t) for t, h in nodes.items())
    out.binds = tuple(binds)
    out.hooks = tuple(edits.hooks)
    out.gids = tuple(str(g) for g in edits.gids)
    return out
