"""A detached container's monitor, forked by the per-user fork server (entry point ``monitor``).

``become_monitor`` runs in the server's child: it takes on the CLI's descriptors, environment,
working directory, umask and soft rlimits, then ``adopt`` plans the container again from the
CLI's options and starts it in this process (``run.monitor_main``).  This module sits above
``run`` and ``monitor``; the fork server knows it only by name (``services.ENTRIES``).
"""

from __future__ import annotations

import os

from . import forkserver
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
    forkserver.take_caller_state(request)
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
    """In a child of the fork server: be the monitor of the CLI's ``run -d`` or ``start``.

    ``request`` holds what ``run_detached`` was given: the store, the run options, the
    container to start again (None: create one)."""
    from ..errors import RootlessError
    from ..image.store import Store
    from .run import RunOptions, monitor_main
    code = 125
    try:
        code = monitor_main(Store(request["store"]), RunOptions(**request["opts"]), request.get("existing"),
                            detacher)
    except RootlessError as e:
        detacher.failed(str(e), e.exit_code)
        return e.exit_code
    except BaseException as e:  # noqa: BLE001 - the CLI hears of it through the pipe
        detacher.failed(f"the container monitor failed: {e!r}", 125)
        return 125
    return code if isinstance(code, int) else 125


def main(argv: list[str]) -> int:
    """``python -m rootless.container.detached STORE ID``: start container ID of STORE in a
    monitor forked by this fresh process (``lifecycle.start(fork_here=False)`` without a fork
    server); the error, if any, on stderr."""
    import sys
    from ..errors import RootlessError
    from ..image.store import Store
    from .lifecycle import start
    try:
        start(Store(argv[0]), argv[1])
    except RootlessError as e:
        sys.stderr.write(str(e))
        return e.exit_code
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
