"""Health checks: --health-cmd and the image's HEALTHCHECK, their status in ps and inspect."""

from __future__ import annotations

import json
import time
import uuid

import pytest

pytestmark = pytest.mark.both_modes


def _health(rl, name: str) -> dict:
    return json.loads(rl("inspect", name).stdout)[0]["State"].get("Health") or {}


def _until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.2)


def test_health_cmd_turns_unhealthy_then_healthy(rl):
    name = f"health-{uuid.uuid4().hex[:6]}"
    proc = rl("run", "-d", "--name", name, "--network", "none", "--health-cmd", "test -f /tmp/ok",
              "--health-interval", "300ms", "--health-retries", "2", "busybox", "sleep", "120")
    assert proc.returncode == 0, proc.stderr
    try:
        _until(lambda: _health(rl, name).get("Status") == "unhealthy")
        h = _health(rl, name)
        assert h["FailingStreak"] >= 2 and h["Log"][-1]["ExitCode"] == 1
        assert "(unhealthy)" in json.loads(rl("ps", "--format", "json", "--filter", f"name={name}").stdout)[0]["Status"]
        assert rl("exec", name, "touch", "/tmp/ok").returncode == 0
        _until(lambda: _health(rl, name).get("Status") == "healthy")
        assert _health(rl, name)["FailingStreak"] == 0
    finally:
        rl("rm", "-f", name)


def test_the_images_healthcheck_and_no_healthcheck(rl, busybox_tar):
    image = f"hc-{uuid.uuid4().hex[:6]}"
    assert rl("import", str(busybox_tar), image).returncode == 0
    # an image with a HEALTHCHECK, built by rootless build
    import tempfile
    from pathlib import Path
    ctx = Path(tempfile.mkdtemp(dir=rl.root.parent))
    (ctx / "Dockerfile").write_text(f"FROM {image}\nHEALTHCHECK --interval=300ms CMD true\n")
    built = rl("build", "-q", "-t", image + "-hc", str(ctx), timeout=120)
    assert built.returncode == 0, built.stderr
    a, b = f"{image}-a", f"{image}-b"
    try:
        assert rl("run", "-d", "--name", a, "--network", "none", image + "-hc", "sleep", "60").returncode == 0
        _until(lambda: _health(rl, a).get("Status") == "healthy")
        assert rl("run", "-d", "--name", b, "--network", "none", "--no-healthcheck", image + "-hc",
                  "sleep", "60").returncode == 0
        time.sleep(1)
        assert _health(rl, b) == {}
        bad = rl("run", "--rm", "--health-interval", "soon", "busybox", "true")
        assert bad.returncode == 125 and "--health-interval" in bad.stderr
    finally:
        rl("rm", "-f", a, b)
        rl("rmi", image + "-hc")
        rl("rmi", image)
