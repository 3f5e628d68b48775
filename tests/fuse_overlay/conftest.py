"""Fixtures: a :class:`NsPair` runs driver.py inside a fresh user + mount
namespace and forwards operations to it; every call has a timeout, and on
close the driver unmounts everything and the whole process group is killed
if it does not exit in time."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from typing import Any, Iterator

import pytest

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.py")
CALL_TIMEOUT = 120.0


def _can(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd + ["true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_MODES = {
    "full": ["unshare", "--map-auto", "--map-root-user", "--mount"],
    "single": ["unshare", "--map-root-user", "--mount"],
}
_available: dict[str, bool] = {}


def mode_available(mode: str) -> bool:
    if mode not in _available:
        _available[mode] = _can(_MODES[mode])
    return _available[mode]


def _short(x: Any, n: int = 2000) -> str:
    s = repr(x)
    return s if len(s) <= n else s[:n] + "..."


def _diff(f: Any, k: Any) -> str:
    """What differs between fuse's and the kernel's answer (only the differing entries of
    mappings and lists of equal length, with long names shortened)."""
    ff, kk = f.get("ok") if isinstance(f, dict) else None, k.get("ok") if isinstance(k, dict) else None
    if isinstance(ff, dict) and isinstance(kk, dict):
        keys = sorted(set(ff) | set(kk))
        rows = [(key, ff.get(key, "<absent>"), kk.get(key, "<absent>")) for key in keys
                if ff.get(key, "<absent>") != kk.get(key, "<absent>")]
    elif isinstance(ff, list) and isinstance(kk, list) and len(ff) == len(kk):
        rows = [(i, a, b) for i, (a, b) in enumerate(zip(ff, kk)) if a != b]
    else:
        return f"fuse {_short(f)} != kernel {_short(k)}"
    import re
    shorten = lambda s: re.sub(r"x{20,}", lambda m: f"x*{len(m.group())}", str(s))
    return "\n".join(f"  {shorten(key)}: fuse {shorten(a)[:400]} != kernel {shorten(b)[:400]}"
                      for key, a, b in rows[:40])


class NsPair:
    """Kernel overlay + fuse-overlay over the same lowers, in a namespace."""

    def __init__(self, base: str, spec: dict, mode: str) -> None:
        self.proc = subprocess.Popen(_MODES[mode] + [sys.executable, DRIVER, base],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self._send(spec)
        ready = self._recv()
        assert ready == {"ready": True}, ready

    def _send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def _recv(self, timeout: float = CALL_TIMEOUT) -> Any:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            self.kill()
            raise TimeoutError("driver did not answer in time")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"driver exited (status {self.proc.wait(timeout=10)})")
        return json.loads(line)

    def call(self, op: str, *args: Any) -> dict:
        self._send({"op": op, "args": list(args)})
        res = self._recv()
        assert "driver_error" not in res, res
        return res

    def same(self, op: str, *args: Any) -> Any:
        """Run ``op`` on both mounts and assert both saw the same result."""
        res = self.call(op, *args)
        assert res["f"] == res["k"], f"{op}{_short(args)}: {_diff(res['f'], res['k'])}"
        return res["f"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"op": "quit"})
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


@pytest.fixture(params=["full", "single"])
def map_mode(request: pytest.FixtureRequest) -> str:
    if not mode_available(request.param):
        pytest.skip(f"this user cannot create a {request.param}-range user namespace here")
    return request.param


@pytest.fixture
def make_pair(tmp_path: Any, map_mode: str) -> Iterator[Any]:
    pairs: list[NsPair] = []

    def make(spec: dict) -> NsPair:
        base = os.path.join(str(tmp_path), f"pair{len(pairs)}")
        p = NsPair(base, spec, map_mode)
        pairs.append(p)
        return p

    yield make
    for p in pairs:
        p.close()
