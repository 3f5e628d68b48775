"""A detached container's monitor, forked by the per-user fork server (entry point ``monitor``).

``become_monitor`` runs in the server's child: it takes on the CLI's descriptors, environment,
working directory, umask and soft rlimits, then ``adopt`` calls ``run`` again with the CLI's
options; ``monitor.run_detached`` sees that it is in the adopted monitor and runs the
container in this process.  This module sits above ``run`` and ``monitor``; the fork server
knows it only by name (``services.ENTRIES``).
"""

from __future__ import annotations

import os
import resource

from . import monitor
from .monitor import MONITOR_NAME, Detacher


def become_monitor(request: dict, fds: list[int]) -> int:
    """Become the monitor the CLI asked for (``forkserver.spawn_monitor``); see ``adopt``."""
    report, out, err = fds
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in (null, out, err):
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(int(request["umask"]))
    for name, soft in request.get("rlimits", {}).items():
        try:
            limit = getattr(resource, name)
            resource.setrlimit(limit, (soft, resource.getrlimit(limit)[1]))
        except (AttributeError, OSError, ValueError):
            pass
    from ..sandbox import libc
    libc.set_process_name(MONITOR_NAME)
    detacher = Detacher.reporting_to(report)
    try:
        os.chdir(request["cwd"])
    except OSError as e:
        detacher.failed(f"the working directory {request['cwd']} is gone: {e.strerror}", 125)
        return 125
    return adopt(detacher, request)


def adopt(detacher: Detacher, request: dict) -> int:
    """In a child of the fork server: run the CLI's detached command here, as its monitor.

    ``request`` holds what ``run_detached`` was given (the store, the run options, the
    container to start again); ``run`` is called again with them, its checks pass as they
    did in the CLI, and ``run_detached`` then runs the container in this process."""
    from ..errors import RootlessError
    from ..image.store import Store
    from .records import Containers
    from .run import RunOptions, run
    monitor._adopted = detacher
    try:
        store = Store(request["store"])
        existing = Containers(store).find(request["existing"]) if request.get("existing") else None
        return run(store, RunOptions(**request["opts"]), existing=existing)
    except RootlessError as e:
        detacher.failed(str(e), e.exit_code)
        return e.exit_code
    except BaseException as e:  # noqa: BLE001 - the CLI hears of it through the pipe
        detacher.failed(f"the container monitor failed: {e!r}", 125)
        return 125
