"""``--storage-driver auto``: the kernel's overlay where it shows what fuse-overlay would, fuse-overlay
where only it shows the right owners (single-uid mode, ``--userns keep-id``) or where the kernel
refuses the mount; and info, inspect and ``ps --format json`` name the driver actually mounted."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid

import pytest

from .conftest import RANGE_MODE as RANGE, needs_range

pytestmark = pytest.mark.both_modes

# What / is mounted as, seen from inside the container (/proc/mounts' first field and type).
ROOT_MOUNT = "awk '$2 == \"/\" {print $3}' /proc/mounts | tail -1"
MOUNT_TYPE = {"overlay": "overlay", "fuse-overlay": "fuse.fuse-overlay"}


def _reported(rl, name: str) -> tuple[str, str, str]:
    """(inspect's Driver, GraphDriver.Name, ps --format json's Driver) of container ``name``."""
    [c] = json.loads(rl("inspect", "--type", "container", name, check=True).stdout)
    rows = json.loads(rl("ps", "-a", "--filter", f"name={name}", "--format", "json", check=True).stdout)
    return c["Driver"], c["GraphDriver"]["Name"], rows[0]["Driver"]


def _run(rl, *args: str) -> tuple[str, str]:
    """Run busybox (or what ARGS name) with ARGS; (its name, what / is mounted as inside)."""
    name = f"auto-{uuid.uuid4().hex[:8]}"
    proc = rl("run", "--name", name, "--network", "none", *args, "sh", "-c", ROOT_MOUNT)
    assert proc.returncode == 0, proc.stderr
    return name, proc.stdout.strip()


def test_auto_takes_the_kernel_overlay_with_a_range_and_fuse_overlay_in_single_uid_mode(rl):
    expected = "overlay" if RANGE else "fuse-overlay"
    name, seen = _run(rl, "busybox")
    try:
        assert seen == MOUNT_TYPE[expected]
        assert _reported(rl, name) == (expected, expected, expected)
        [c] = json.loads(rl("inspect", "--type", "container", name, check=True).stdout)
        assert ("id map" if RANGE else "single-uid mode") in c["GraphDriver"]["Data"]["Why"]
        info = json.loads(rl("info", "--format", "json", check=True).stdout)["StorageDriver"]
        assert info["Auto"] == expected and info["Why"]
    finally:
        rl("rm", "-f", name)


@needs_range
def test_keep_id_takes_fuse_overlay(rl):
    name, seen = _run(rl, "--userns", "keep-id", "busybox")
    try:
        assert seen == MOUNT_TYPE["fuse-overlay"]
        assert _reported(rl, name) == ("fuse-overlay",) * 3
    finally:
        rl("rm", "-f", name)


@pytest.mark.parametrize("driver", ["overlay", "fuse-overlay"])
def test_either_driver_can_be_forced(rl, driver):
    name, seen = _run(rl, "--storage-driver", driver, "busybox")
    try:
        assert seen == MOUNT_TYPE[driver]
        assert _reported(rl, name) == (driver,) * 3
        [c] = json.loads(rl("inspect", "--type", "container", name, check=True).stdout)
        assert "Why" not in c["GraphDriver"]["Data"]            # asked for, not chosen
    finally:
        rl("rm", "-f", name)
    env = {"ROOTLESS_STORAGE_DRIVER": driver}
    name = f"auto-{uuid.uuid4().hex[:8]}"
    try:
        assert rl("run", "--name", name, "--network", "none", "busybox", "true", env=env).returncode == 0
        assert _reported(rl, name) == (driver,) * 3
    finally:
        rl("rm", "-f", name)


def test_a_container_never_started_reports_what_it_asked_for(rl):
    name = f"auto-{uuid.uuid4().hex[:8]}"
    rl("create", "--name", name, "--network", "none", "busybox", "true", check=True)
    try:
        assert _reported(rl, name) == ("auto", "auto", "")
    finally:
        rl("rm", "-f", name)


def _many_layers_archive(path, busybox_tar, count: int, tag: str) -> None:
    """A docker-archive of busybox and ``count - 1`` one-file layers (/f1 ... /fN over it)."""
    layers = [busybox_tar.read_bytes()]
    for i in range(1, count):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = f"{i}\n".encode()
            info = tarfile.TarInfo(f"f{i}")
            info.size, info.mtime = len(data), 946684800
            tar.addfile(info, io.BytesIO(data))
        layers.append(buf.getvalue())
    ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": ids}}).encode()
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        names = []
        for layer, digest in zip(layers, ids):
            names.append(f"{digest[7:]}/layer.tar")
            add(names[-1], layer)
        add("config.json", config)
        add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": [tag],
                                          "Layers": names}]).encode())


@needs_range
def test_an_image_of_127_layers_is_served_by_the_kernel_overlay(rl, tmp_path, busybox_tar):
    """mount(2) takes one page of options, which the layers' 64-digit names filled at about 60
    layers (then fuse-overlay served instead); named by their descriptors the 127 layers of an
    image of Docker's most fit, and no layer's host path shows in the container's mounts.
    'cp' out of the stopped container mounts them the same way."""
    archive = tmp_path / "many.tar"
    _many_layers_archive(archive, busybox_tar, 127, "autodrv/tall:1")
    assert rl("load", "-i", str(archive)).returncode == 0
    name = f"auto-{uuid.uuid4().hex[:8]}"
    try:
        proc = rl("run", "--name", name, "--network", "none", "autodrv/tall:1", "sh", "-c",
                  f"{ROOT_MOUNT}; cat /f1 /f126; cat /proc/mounts")
        assert proc.returncode == 0, proc.stderr
        mounted, first, last = proc.stdout.split()[:3]
        assert mounted == MOUNT_TYPE["overlay"] and (first, last) == ("1", "126")
        assert "/layers/" not in proc.stdout          # /proc/mounts: the lower layers as descriptors
        assert _reported(rl, name) == ("overlay",) * 3
        assert rl("cp", f"{name}:/f126", str(tmp_path / "f126")).returncode == 0
        assert (tmp_path / "f126").read_text() == "126\n"
    finally:
        rl("rm", "-f", name)
        rl("rmi", "autodrv/tall:1")


@needs_range
def test_a_refused_kernel_mount_falls_back_to_fuse_overlay_and_leaves_nothing(rl, tmp_path, busybox_tar):
    """An image of more layers than the kernel's overlay stacks (500): the kernel refuses, and
    auto serves the container with fuse-overlay instead, noting why; the kernel's refusal
    leaves nothing in work/."""
    count = 510
    archive = tmp_path / "many.tar"
    _many_layers_archive(archive, busybox_tar, count, "autodrv/many:1")
    assert rl("load", "-i", str(archive), timeout=300).returncode == 0
    name = f"auto-{uuid.uuid4().hex[:8]}"
    try:
        proc = rl("run", "--name", name, "--network", "none", "autodrv/many:1", "sh", "-c",
                  f"{ROOT_MOUNT}; cat /f1 /f{count - 1}")
        assert proc.returncode == 0, proc.stderr
        mounted, first, last = proc.stdout.split()
        assert mounted == MOUNT_TYPE["fuse-overlay"] and (first, last) == ("1", str(count - 1))
        assert _reported(rl, name) == ("fuse-overlay",) * 3
        [c] = json.loads(rl("inspect", "--type", "container", name, check=True).stdout)
        assert "the kernel refused the overlay mount" in c["GraphDriver"]["Data"]["Why"]
        work = rl.container_dir(name) / "work"
        assert sorted(os.listdir(work)) == ["fuse-overlay.work"]
        # detached: the fork server was not asked for a daemon (fuse-overlay was not the first
        # choice), so the container's intermediate process serves it with one of its own
        bg = f"{name}-d"
        rl("run", "-d", "--name", bg, "--network", "none", "autodrv/many:1", "sleep", "60", check=True)
        try:
            assert rl("exec", bg, "sh", "-c", f"{ROOT_MOUNT}; cat /f1").stdout.split() == [
                MOUNT_TYPE["fuse-overlay"], "1"]
            assert _reported(rl, bg) == ("fuse-overlay",) * 3
        finally:
            rl("rm", "-f", bg)
        forced = rl("run", "--rm", "--storage-driver", "overlay", "--network", "none", "autodrv/many:1", "true")
        assert forced.returncode == 125 and "the kernel's overlay refused" in forced.stderr, forced.stderr
        assert "fuse-overlay" in forced.stderr
    finally:
        rl("rm", "-f", name)
        rl("rmi", "autodrv/many:1")


def test_driver_order_per_case():
    from rootless.container.rootfs import driver_order
    assert driver_order("auto", False, False, False)[0] == ("overlay", "fuse-overlay", "vfs")
    for single, translated, squashfs in ((True, False, False), (False, True, False), (False, False, True)):
        order, why = driver_order("auto", single, translated, squashfs)
        assert order[0] == "fuse-overlay" and why
    assert driver_order("fuse-overlay", False, False, False)[0] == ("fuse-overlay",)
    assert driver_order("overlay", True, False, False)[0] == ("overlay",)
    for fstype in ("nfs4", "fuse.sshfs", "overlay", "lustre"):
        order, why = driver_order("auto", False, False, False, fstype)
        assert order[0] == "fuse-overlay" and "the store is on" in why
    assert driver_order("auto", False, False, False, "ext4")[0][0] == "overlay"
