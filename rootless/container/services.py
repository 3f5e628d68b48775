"""What the per-user fork server (``forkserver.py``) runs for containers, named for it.

The server imports none of this code itself: it is started with these module names, imports
them once (its children share those pages) and forks, on request, a child that calls the
entry point named in the request.  This module holds only names, so the modules that ask the
server for something (``rootfs``, ``run``, ``monitor``, and the command line's thin client,
``cli/client.py``) import it without a loop.  The ``cli`` entry is a face's (the whole
command line, preloaded): named here as a string, never imported by the engine.
"""

from __future__ import annotations

from . import forkserver

PRELOAD = (
    "rootless.container.records", "rootless.container.lifecycle", "rootless.container.monitor",
    "rootless.container.rootfs", "rootless.container.run", "rootless.container.detached",
    "rootless.image.store", "rootless.volumes",
    "rootless.network.helpers", "rootless.network.ports", "rootless.network.user_networks",
    "rootless.cgroups", "rootless.sandbox.container", "rootless.sandbox.mounts", "rootless.sandbox.tty",
    "fuse_overlay.server",
    # what a command's lazy imports would load in every child (cli/client.py hands commands over)
    "rootless.container.cdi", "rootless.container.devices", "rootless.container.health",
    "rootless.container.hooks", "rootless.container.logfile", "rootless.container.runflags",
    "rootless.container.services", "rootless.image.obtain", "rootless.image.placement", "rootless.image.squashfs",
    "rootless.image.whiteouts", "rootless.progress", "rootless.security", "rootless.cgroups.create", "grp",
    "rootless.cli.commands", "rootless.cli.containers", "rootless.cli.served",
)

ENTRIES = {
    "mount": "fuse_overlay.server:mount_child",              # a container's fuse-overlay daemon
    "monitor": "rootless.container.detached:become_monitor",  # a detached container's monitor
    "cli": "rootless.cli.served:serve_command",               # a command handed over by cli/client.py
}


def ensure(run_dir: str) -> str | None:
    """The fork server's socket, started with our preload list and entry points (see forkserver.ensure).

    None inside a Slurm job: the server is shared by every command of the user on the node, so
    it would hold one job's FUSE daemons and monitors outside that job's cgroup (scancel would
    leave them running), or, started by a job, in it (its end would kill another job's).  The
    caller then starts them itself, in the job step's cgroup (docs/hpc.md)."""
    from ..slurm import current
    if current() is not None:
        return None
    return forkserver.ensure(run_dir, PRELOAD, ENTRIES)


def start_in_background(run_dir: str) -> None:
    """Start the fork server if none answers, without waiting for it (cli/client.py); never
    inside a Slurm job (``ensure``)."""
    from ..slurm import current
    if current() is None:
        forkserver.ensure(run_dir, PRELOAD, ENTRIES, wait=False)


def socket_path(run_dir: str) -> str:
    return forkserver.socket_path(run_dir, PRELOAD, ENTRIES)
