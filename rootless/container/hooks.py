"""Running CDI hooks as the OCI runtime spec runs hooks: the program, its args and env, the
container's state as JSON on its stdin, a timeout.

They run as you, from the process that owns the container, in the host's namespaces: prestart
and createRuntime once the container's first process exists and before its command starts
(a failure stops the start), poststart once it runs and poststop once it has ended (a failure
is a warning, as runc does).  The state's ``bundle`` is a directory with a ``config.json``
whose ``root.path`` is ``/proc/PID/root``: the container's root as the host sees it.
createContainer hooks run elsewhere: in the container's mount namespace, as root of its user
namespace, before pivot_root (``sandbox/mounts.py``), with ``root.path`` the root filesystem's
mount point there (``in_container``).
"""

from __future__ import annotations

import json
import os
import subprocess

from .cdi import Hook
from ..errors import DeviceError


def write_bundle(directory: str, root: str, args: list[str], hostname: str) -> str:
    """The bundle a hook finds in the state (``directory/bundle``, made if missing): a
    ``config.json`` whose ``root.path`` is ``root``."""
    bundle = os.path.join(directory, "bundle")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.makedirs(bundle, mode=0o700, exist_ok=True)
    config = {"ociVersion": "1.0.2", "root": {"path": root}, "process": {"args": args, "cwd": "/"},
              "hostname": hostname}
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    return bundle


def in_container(hooks: tuple[Hook, ...], cid: str, run_dir: str, root: str, args: list[str],
                 hostname: str) -> tuple:
    """createContainer ``hooks`` as the sandbox runs them (``sandbox.mounts.Hook``), the bundle
    written now: ``root`` is where the root filesystem is mounted in the container's mount namespace."""
    from ..sandbox.mounts import Hook as SandboxHook
    if not hooks:
        return ()
    bundle = write_bundle(run_dir, root, args, hostname)
    text = json.dumps(state(cid, "creating", None, bundle))
    return tuple(SandboxHook(f"CDI {h.name}", h.path, h.args, h.env, h.timeout, text) for h in hooks)


def state(cid: str, status: str, pid: int | None, bundle: str) -> dict:
    out = {"ociVersion": "1.0.2", "id": cid, "status": status, "bundle": bundle, "annotations": {}}
    if pid:
        out["pid"] = pid
    return out


def run(hooks: tuple[Hook, ...], st: dict) -> None:
    """Run ``hooks`` in order; a ``DeviceError`` naming the first that fails."""
    data = json.dumps(st).encode()
    for hook in hooks:
        argv = list(hook.args) or [hook.path]
        env = dict(item.partition("=")[::2] for item in hook.env)
        try:
            proc = subprocess.run(argv, executable=hook.path, input=data, env=env, capture_output=True,
                                  timeout=hook.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"the CDI {hook.name} hook {hook.path} ({hook.source}) did not end within "
                              f"{hook.timeout} s") from None
        except OSError as e:
            raise DeviceError(f"cannot run the CDI {hook.name} hook {hook.path} ({hook.source}): "
                              f"{os.strerror(e.errno or 0).lower()}") from None
        if proc.returncode != 0:
            said = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DeviceError(f"the CDI {hook.name} hook {hook.path} ({hook.source}) failed with status "
                              f"{proc.returncode}" + (f": {said[-1]}" if said else ""))
