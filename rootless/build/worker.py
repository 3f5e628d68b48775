"""A build in a process of its own, for the API service (``POST /build``).

The service is one multi-threaded process serving many clients; a build's RUN steps wait for
their containers as ``rootless build`` does — signal handlers forwarding to the container,
the process made a child subreaper while it runs — which are process-wide and work in a
main thread only.  So the service starts ``python -m rootless.build.worker``: this module
reads one JSON request on stdin, loads the context (a tar file the service spooled) and runs
``executor.build`` exactly as the command line does, telling what happens as JSON lines on
stdout:

    {"step": [N, TOTAL, TEXT]}  {"cached": true}  {"output": TEXT}  {"done": SECONDS}
    {"warning": TEXT}  {"image": ID, "tags": [...]}  {"error": MESSAGE, "code": N, "usage": BOOL}

SIGALRM (the client went away: ``STOP_SIGNAL``) or SIGTERM ends the build as an exception
in the main thread: its ``finally`` clauses remove the running step's container (``rm -f``)
and scratch files.  SIGALRM, because a RUN step forwards SIGTERM and SIGINT to its container
(whose PID 1, a shell, may ignore them) while it waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, BinaryIO


class JsonReporter:
    """executor.Reporter as JSON lines on ``out``."""

    def __init__(self, out: BinaryIO):
        self.out = out

    def send(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj).encode() + b"\n")
        self.out.flush()

    def step(self, number: int, total: int, text: str) -> None:
        self.send({"step": [number, total, text]})

    def cached(self) -> None:
        self.send({"cached": True})

    def output(self, data: bytes) -> None:
        self.send({"output": data.decode(errors="replace")})

    def done(self, seconds: float) -> None:
        self.send({"done": seconds})

    def warning(self, text: str) -> None:
        self.send({"warning": text})


def run(request: dict[str, Any], out: BinaryIO) -> int:
    """The build ``request`` asks for (keys: store, context (a tar file), scratch (an empty
    directory), dockerfile, tags, build_args, labels, target, no_cache, pull, network)."""
    from ..errors import DockerfileError, RootlessError, UsageError
    from ..image.store import Store
    from ..sandbox import idmap
    from .context import load_context
    from .executor import BuildRequest, build
    reporter = JsonReporter(out)
    try:
        store = Store(request["store"])
        with open(request["context"], "rb") as data:
            ctx = load_context("-", request.get("dockerfile") or None, stdin=data, scratch_dir=request["scratch"])
        req = BuildRequest(tags=list(request.get("tags") or []), build_args=dict(request.get("build_args") or {}),
                           target=request.get("target") or None, labels=dict(request.get("labels") or {}),
                           no_cache=bool(request.get("no_cache")), pull=bool(request.get("pull")),
                           network=request.get("network") or "default")
        image = build(store, idmap.detect(), ctx, req, reporter)
    except RootlessError as e:
        _done()
        reporter.send({"error": str(e), "code": getattr(e, "exit_code", 1) if getattr(e, "step", None) else 1,
                       "usage": isinstance(e, (UsageError, DockerfileError))})
        return 1
    except KeyboardInterrupt:
        return 130
    _done()
    reporter.send({"image": image.id, "tags": req.tags})
    return 0


def _done() -> None:
    """Nothing is left to clean up: a stop signal now simply ends the process."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(STOP_SIGNAL, signal.SIG_DFL)


def _terminated(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt()


STOP_SIGNAL = signal.SIGALRM


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(STOP_SIGNAL, _terminated)
    # our messages keep the real stdout; anything else printed goes to stderr (the service's log)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    request = json.loads(sys.stdin.readline())
    return run(request, out)


if __name__ == "__main__":
    sys.exit(main())
