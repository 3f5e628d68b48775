"""``--filter`` where Docker takes one: images, ps, network ls (volume ls has its own tests)."""

from __future__ import annotations

import json
import time
import uuid

import pytest

pytestmark = pytest.mark.both_modes


def _images(rl, *filters: str) -> set[str]:
    args = [a for f in filters for a in ("--filter", f)]
    proc = rl("images", "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return {f"{r['Repository']}:{r['Tag']}" for r in json.loads(proc.stdout)}


def test_images_filters(rl, busybox_tar):
    tag = uuid.uuid4().hex[:6]
    old, new = f"filt-old-{tag}:1", f"filt-new-{tag}:2"
    assert rl("import", "-c", "LABEL team=hpc", str(busybox_tar), old).returncode == 0
    time.sleep(1.1)                                        # 'created' has second precision at least
    assert rl("import", "-c", "LABEL team=web", str(busybox_tar), new).returncode == 0
    try:
        assert _images(rl, f"reference=filt-*-{tag}") == {old, new}
        assert _images(rl, f"reference=filt-old-{tag}:1") == {old}
        assert old in _images(rl, "label=team=hpc") and new not in _images(rl, "label=team=hpc")
        assert {old, new} <= _images(rl, "label=team")
        assert _images(rl, f"reference=filt-*-{tag}", f"before={new}") == {old}
        assert _images(rl, f"reference=filt-*-{tag}", f"since={old}") == {new}
        assert not any(i.startswith("filt-") for i in _images(rl, "dangling=true"))
        bad = rl("images", "--filter", "colour=red")
        assert bad.returncode == 125 and "dangling=" in bad.stderr
    finally:
        rl("rmi", old)
        rl("rmi", new)


def test_ps_label_filter(rl):
    a = rl("create", "-l", "tier=front", "--network", "none", "busybox", "true").stdout.strip()
    b = rl("create", "-l", "tier=back", "--network", "none", "busybox", "true").stdout.strip()
    try:
        def ids(*f):
            return {r["Id"] for r in json.loads(rl("ps", "-a", "--format", "json",
                                                  *[x for y in f for x in ("--filter", y)]).stdout)}
        assert ids("label=tier=front") == {a[:12]} and ids("label=tier") >= {a[:12], b[:12]}
        assert ids("label=nope") == set()
    finally:
        rl("rm", "-f", a, b)


def test_network_ls_filters(rl):
    name = f"filtnet-{uuid.uuid4().hex[:6]}"
    assert rl("network", "create", "--internal", "--label", "env=test", name).returncode == 0
    try:
        def names(*f):
            out = rl("network", "ls", "-q", *[x for y in f for x in ("--filter", y)])
            assert out.returncode == 0, out.stderr
            return set(out.stdout.split())
        assert name in names("name=filtnet-") and name in names("label=env=test") and name in names("dangling=true")
        assert name not in names("label=env=prod") and name not in names("dangling=false")
    finally:
        rl("network", "rm", name)
