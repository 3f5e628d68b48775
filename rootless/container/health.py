"""Health checks: the image's HEALTHCHECK, or ``--health-cmd`` and its flags, run in the
container by the process that owns it (the monitor, or ``rootless`` in the foreground).

Every ``interval`` the command runs as ``rootless exec`` would run it (a child ``rootless exec``,
so that a hung check cannot stall the owner), for at most ``timeout``.  The result is kept in
the record as Docker keeps it (``State.Health``: ``Status`` starting|healthy|unhealthy,
``FailingStreak``, the last five ``Log`` entries); failures during ``start_period`` do not count.
``ps`` shows ``(healthy)``, ``(unhealthy)`` or ``(health: starting)`` after the status.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import threading
from dataclasses import dataclass

from ..errors import RootlessError, UsageError

DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_RETRIES = 30.0, 30.0, 3


@dataclass(frozen=True)
class HealthConfig:
    test: tuple[str, ...]         # the command run in the container
    interval: float
    timeout: float
    retries: int
    start_period: float


def _seconds(value: str | None, flag: str, default: float) -> float:
    from ..units import parse_duration
    if value is None:
        return default
    try:
        ns = parse_duration(value)
    except ValueError:
        raise UsageError(f"invalid {flag} '{value}': use a duration such as 30s, 1m30s or 500ms") from None
    return ns / 1e9


def config(image_check: dict | None, cmd: str | None, interval: str | None, timeout: str | None,
           retries: int | None, start_period: str | None, disabled: bool) -> HealthConfig | None:
    """The check a container gets: the flags over the image's HEALTHCHECK; None for none."""
    for value, flag in ((interval, "--health-interval"), (timeout, "--health-timeout"),
                        (start_period, "--health-start-period")):
        _seconds(value, flag, 0.0)          # a bad flag is refused even when no check runs
    if disabled:
        return None
    image_check = image_check or {}
    test = list(image_check.get("Test") or [])
    if cmd is not None:
        test = ["CMD-SHELL", cmd] if cmd else ["NONE"]
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        argv = ("/bin/sh", "-c", " ".join(test[1:]))
    elif test[0] == "CMD":
        argv = tuple(test[1:])
    else:
        argv = tuple(test)
    if not argv:
        return None

    def ns(key: str) -> float | None:
        v = image_check.get(key)
        return v / 1e9 if isinstance(v, (int, float)) and v > 0 else None
    if retries is not None and retries < 1:
        raise UsageError(f"invalid --health-retries {retries}: give 1 or more")
    return HealthConfig(argv,
                        _seconds(interval, "--health-interval", ns("Interval") or DEFAULT_INTERVAL),
                        _seconds(timeout, "--health-timeout", ns("Timeout") or DEFAULT_TIMEOUT),
                        retries or int(image_check.get("Retries") or DEFAULT_RETRIES),
                        _seconds(start_period, "--health-start-period", ns("StartPeriod") or 0.0))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check(store_root: str, cid: str, cfg: HealthConfig) -> tuple[int, str]:
    cmd = [sys.executable, "-c", "import sys; from rootless.cli import main; sys.exit(main())",
           "--root", store_root, "exec", cid, *cfg.test]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=cfg.timeout)
    except subprocess.TimeoutExpired:
        return -1, f"Health check exceeded timeout ({cfg.timeout:g}s)"
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    return proc.returncode, out[-4096:]


def run_checks(store_root: str, cid: str, cfg: HealthConfig, stop: threading.Event) -> None:
    """Check until ``stop`` is set (the container ended) or the container is gone."""
    from ..image.store import Store
    from .records import Containers
    records = Containers(Store(store_root))
    started = datetime.datetime.now().timestamp()
    state = {"Status": "starting", "FailingStreak": 0, "Log": []}
    try:
        records.update(cid, lambda r: r.config.__setitem__("health", dict(state)))
        while not stop.wait(cfg.interval):
            begun = _now()
            code, output = _check(store_root, cid, cfg)
            if stop.is_set():
                return
            state["Log"] = (state["Log"] + [{"Start": begun, "End": _now(), "ExitCode": code,
                                             "Output": output}])[-5:]
            if code == 0:
                state["Status"], state["FailingStreak"] = "healthy", 0
            elif datetime.datetime.now().timestamp() - started >= cfg.start_period:
                state["FailingStreak"] += 1
                if state["FailingStreak"] >= cfg.retries:
                    state["Status"] = "unhealthy"
            records.update(cid, lambda r: r.config.__setitem__("health", dict(state)))
    except RootlessError:
        return                       # removed, or being removed


def suffix(config: dict) -> str:
    """What ``ps`` adds to a running container's status."""
    health = config.get("health") or {}
    status = health.get("Status")
    if not status:
        return ""
    return " (health: starting)" if status == "starting" else f" ({status})"
