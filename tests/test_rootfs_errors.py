"""A container whose fuse-overlay daemon hit an internal error says so in ps and inspect."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.both_modes


def test_ps_and_inspect_show_overlay_internal_errors(rl):
    rl("run", "-d", "--name", "ovl-errors", "--storage-driver", "fuse-overlay", "busybox", "sleep", "30", check=True)
    try:
        assert "overlay error" not in rl("ps").stdout
        assert json.loads(rl("inspect", "ovl-errors").stdout)[0]["State"]["Error"] == ""
        # What the daemon appends for each request it answered EIO because of a bug in it
        # (fuse_overlay.fs.OverlayFS.internal_error; its own test provokes one).
        errors = rl.container_dir("ovl-errors") / "work" / "fuse-overlay.errors"
        errors.write_text("2026-11-29T10:00:00 getxattr: KeyError: 7\n")
        line = next(ln for ln in rl("ps").stdout.splitlines() if "ovl-errors" in ln)
        assert "1 overlay error" in line
        state = json.loads(rl("inspect", "ovl-errors").stdout)[0]["State"]
        assert "1 request(s) with EIO" in state["Error"] and "getxattr: KeyError" in state["Error"]
    finally:
        rl("rm", "-f", "ovl-errors")
