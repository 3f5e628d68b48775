"""``rootless info`` and ``rootless version``: what this engine is and what it found on this
host — what a user pastes into a bug report.  Reads only; creates nothing."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from typing import Any


def version() -> dict[str, Any]:
    from importlib import metadata
    from . import __version__ as ours
    deps = {}
    for name in ("pyfuse3", "trio", "click", "httpx"):
        try:
            deps[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            deps[name] = None
    return {"Version": ours, "Python": platform.python_version(), "Kernel": platform.release(),
            "Arch": platform.machine(), "Dependencies": deps}


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            fields = dict(ln.rstrip("\n").split("=", 1) for ln in f if "=" in ln)
        return fields.get("PRETTY_NAME", "").strip('"')
    except OSError:
        return ""


def _tool(name: str) -> str | None:
    return shutil.which(name)


def _storage_driver(store_root: str, single: bool) -> dict[str, Any]:
    """Which driver ``--storage-driver auto`` takes here for an ordinary container (and why),
    which cases take fuse-overlay instead, and why drivers are passed over."""
    from .container.rootfs import driver_order
    from .image.placement import mount_of
    exe = os.path.join(os.path.dirname(sys.executable), "fuse-overlay")
    fuse_exe = exe if os.path.exists(exe) else _tool("fuse-overlay")
    reasons = {}
    if not fuse_exe:
        reasons["fuse-overlay"] = "the fuse-overlay program is not installed"
    elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
        reasons["fuse-overlay"] = "/dev/fuse is missing or not usable by you"
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    fstype = mount_of(store_root)[0]
    if (major, minor) < (5, 11):
        reasons["overlay"] = f"Linux {major}.{minor} has no overlayfs in user namespaces (5.11+)"
    order, why = driver_order("auto", single, False, False, fstype)
    chosen = next(d for d in order if d not in reasons)
    if chosen != order[0]:
        why = f"{order[0]} cannot work here ({reasons[order[0]]})"
    fuse_for = ["--userns keep-id", "squashfs images"] if order[0] == "overlay" else ["every container"]
    return {"Auto": chosen, "Why": why, "StoreFilesystem": fstype,
            "FuseOverlayFor": fuse_for if "fuse-overlay" not in reasons else [],
            "Unavailable": reasons}


def _cgroups() -> dict[str, Any]:
    from . import cgroups
    try:
        setup = cgroups.detect(cgroups.default_parent())
    except Exception as e:  # noqa: BLE001 - a report, not a start: say what failed
        return {"Error": str(e)}
    return {"Kind": setup.kind, "Parents": [h.parent for h in setup.hierarchies],
            "Controllers": sorted(setup.available_controllers),
            "Unusable": {c: setup.reasons[c] for c in sorted(setup.reasons)}}


def _id_maps() -> dict[str, Any]:
    from .sandbox import idmap
    maps = idmap.detect()
    ranges = lambda rs: [f"{r.inside}:{r.outside}:{r.count}" for r in rs]  # noqa: E731
    return {"Mode": "single" if maps.single else "range", "Why": maps.why_single,
            "UidMap": ranges(maps.uids), "GidMap": ranges(maps.gids)}


def info(store_root: str, versions: bool = True) -> dict[str, Any]:
    """What was found on this host; ``versions=False``: without the dependencies' versions
    (read from their installed metadata, which the API service does not need to load)."""
    from . import network, paths
    from .sandbox.seccomp_base import _library_path
    from .sandbox.userns import forbidden_by_sysctl
    try:
        run_dir = paths.runtime_dir()
    except Exception as e:  # noqa: BLE001
        run_dir = f"unusable: {e}"
    from . import __version__
    ids = _id_maps()
    return {
        **(version() if versions else {"Version": __version__, "Python": platform.python_version(),
                                       "Kernel": platform.release(), "Arch": platform.machine()}),
        "OperatingSystem": _os_release(),
        "User": {"Uid": os.getuid(), "Gid": os.getgid(),
                 "UserNamespaces": forbidden_by_sysctl() or "allowed"},
        "IdMaps": ids,
        "Store": store_root,
        "RunDir": run_dir,
        "StorageDriver": _storage_driver(store_root, ids["Mode"] == "single"),
        "Cgroups": _cgroups(),
        "Network": {"Default": network.default_mode(),
                    "Tools": {t: _tool(t) for t in ("slirp4netns", "pasta", "newuidmap", "newgidmap", "ip")}},
        "Seccomp": {"Default": "Docker's default profile",
                    "Libseccomp": _library_path() or "not found (the compiled filter cache is used if present)"},
        "ForkServer": os.environ.get("ROOTLESS_FORKSERVER", "1") != "0",
    }
