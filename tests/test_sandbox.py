"""The user-namespace sandbox, seen from inside and outside the container (both id-map modes)."""

from __future__ import annotations

import os
import socket

import pytest

from .conftest import RANGE_MODE, needs_range, needs_single, subid_range

pytestmark = pytest.mark.both_modes

DOCKER_DEFAULT_CAPS = 0xA80425FB  # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
                                  # NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP


def run_ok(rl, *args: str, **kw) -> str:
    proc = rl("run", "--rm", *args, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def parse_map(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in line.split()) for line in text.strip().splitlines()]


def test_id_maps_match_mode(rl):
    """Seen from the host, the container's ids are the caller's and its sub-ids; seen from
    inside, its user namespace maps the same ids of its parent (the one holding its mounts,
    see docs/architecture.md), line for line."""
    import json
    assert rl("run", "-d", "--name", "idmaps", "--network", "none", "busybox", "sleep", "30").returncode == 0
    try:
        pid = json.loads(rl("inspect", "idmaps").stdout)[0]["State"]["Pid"]
        with open(f"/proc/{pid}/uid_map") as f:
            uid_map = parse_map(f.read())
        with open(f"/proc/{pid}/gid_map") as f:
            gid_map = parse_map(f.read())
        inside = rl("exec", "idmaps", "sh", "-c", "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map").stdout
    finally:
        rl("rm", "-f", "idmaps")
    assert uid_map[0] == (0, os.getuid(), 1)
    assert gid_map[0] == (0, os.getgid(), 1)
    if RANGE_MODE:
        start, count = subid_range("uid")
        assert uid_map[1:] == [(1, start, count)]
        start, count = subid_range("gid")
        assert gid_map[1:] == [(1, start, count)]
    else:
        assert len(uid_map) == 1 and len(gid_map) == 1
    for seen, host in zip((parse_map(part) for part in inside.split("--")), (uid_map, gid_map)):
        assert seen == [(first, first, count) for first, _, count in host]


def test_single_mode_warns_once(rl):
    proc = rl("run", "--rm", "busybox", "true")
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    if RANGE_MODE:
        assert warnings == []
    else:
        assert len(warnings) == 1 and "single uid" in warnings[0] and "subuid" in warnings[0]


def test_root_inside(rl):
    assert run_ok(rl, "busybox", "id").startswith("uid=0(root) gid=0(root)")


@pytest.mark.parametrize("driver, changes", [("fuse-overlay", "upper"), ("overlay", "upper"), ("vfs", "rootfs")])
def test_files_created_inside_are_owned_by_mapped_ids_on_host(rl, driver, changes):
    script = "touch /by-root" + ("; touch /by-1000; chown 1000:1000 /by-1000" if RANGE_MODE else "")
    proc = rl("run", "--storage-driver", driver, "--name", "owner-check", "busybox", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    try:
        rootfs = rl.container_dir("owner-check") / changes
        st = os.lstat(rootfs / "by-root")
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        if RANGE_MODE:
            st = os.lstat(rootfs / "by-1000")
            assert st.st_uid == subid_range("uid")[0] + 999
            assert st.st_gid == subid_range("gid")[0] + 999
    finally:
        assert rl("rm", "owner-check").returncode == 0
    assert not rootfs.exists()


@pytest.mark.parametrize("driver", ["fuse-overlay", "overlay", "vfs"])
def test_storage_drivers_serve_the_root(rl, driver):
    script = ("mount | head -1; echo data > /new; mkdir -p /a/b; mv /a /c; ln -s /c/b /l; "
              "rm /bin/true; ls /c /l; cat /new; test -e /bin/true || echo true-removed")
    out = run_ok(rl, "--storage-driver", driver, "busybox", "sh", "-c", script)
    first = out.splitlines()[0]
    kind = {"fuse-overlay": "fuse.fuse-overlay", "overlay": "type overlay", "vfs": "on / type"}[driver]
    assert kind in first, first
    assert "data" in out and "true-removed" in out
    # The image itself is unchanged.
    assert "true-removed" not in run_ok(rl, "--storage-driver", driver, "busybox", "sh", "-c",
                                        "test -e /bin/true || echo true-removed")


@pytest.mark.parametrize("driver", ["fuse-overlay", "overlay"])
def test_trees_deeper_than_path_max(rl, driver):
    """20 levels of 250-byte names (about 5000 bytes, beyond PATH_MAX), made, used and removed
    with relative paths (busybox's own ``rm -r`` cannot: it uses whole paths): the fuse-overlay daemon, started by the engine's server, reaches such
    backing files as the kernel overlay does (docs/fuse-overlay.md)."""
    name = "x" * 246
    down = "; ".join(f"mkdir {name}{i:02d} && cd -P {name}{i:02d}" for i in range(20))
    up = " && ".join(f"cd -P .. && rmdir {name}{i:02d}" for i in reversed(range(20)))
    script = (f"cd / && {down} && echo deep > f && mv f g && ln -s g l && cat l && ls && "
              f"rm g l && {up} && ls -d /{name}00 2>&1 | grep -c 'No such'")
    out = run_ok(rl, "--storage-driver", driver, "busybox", "sh", "-c", script)
    assert out.split() == ["deep", "g", "l", "1"], out


def test_fuse_overlay_owners(rl):
    out = rl("run", "--rm", "--storage-driver", "fuse-overlay", "busybox", "sh", "-c",
             "touch /f; chown 1000:100 /f 2>&1; ls -ln /f; cp -a /f /g; ls -ln /g").stdout
    lines = out.splitlines()
    if RANGE_MODE:
        assert lines[0].split()[2:4] == ["1000", "100"], out
        assert lines[1].split()[2:4] == ["1000", "100"], out
    else:
        # Must differ from a full range: with one uid mapped, the kernel refuses chown to an id
        # the namespace does not have (EINVAL) before the filesystem is asked (docs/fuse-overlay.md).
        assert "Invalid argument" in lines[0], out
        assert lines[1].split()[2:4] == ["0", "0"], out


def test_pid_namespace(rl):
    out = run_ok(rl, "busybox", "sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'")
    pid, count = out.split()
    assert pid == "1"
    assert int(count) <= 3  # sh, ls, grep: nothing of the host


def test_hostname_is_isolated(rl):
    assert run_ok(rl, "--hostname", "box1", "busybox", "sh", "-c", "hostname; cat /etc/hostname").split() \
        == ["box1", "box1"]
    default = run_ok(rl, "busybox", "hostname").strip()
    assert len(default) == 12 and default != socket.gethostname()
    assert rl("run", "--rm", "busybox", "hostname", "changed").returncode == 1  # no CAP_SYS_ADMIN by default
    proc = rl("run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "hostname", "changed")
    assert proc.returncode == 0
    assert socket.gethostname() != "changed"


def test_host_mounts_are_invisible(rl, tmp_path):
    canary = tmp_path / "canary"
    canary.write_text("host secret")
    out = run_ok(rl, "busybox", "sh", "-c", f"cat /proc/self/mountinfo; ls {canary} 2>&1; ls /home")
    mount_points = [line.split()[4] for line in out.splitlines() if line[:1].isdigit()]
    host_points = [line.split()[4] for line in open("/proc/self/mountinfo")]
    assert set(mount_points) & set(host_points) <= {"/", "/proc", "/dev", "/sys", "/dev/pts", "/dev/shm",
                                                     "/dev/mqueue", "/proc/sys", "/sys/firmware"}
    assert not any(p.startswith(("/tmp", "/home", "/work", "/var", "/sys/fs/cgroup")) for p in mount_points)
    assert "host secret" not in out
    assert "No such file" in out
    assert out.strip().endswith("user")


def test_no_new_privs_and_bounding_set(rl):
    out = run_ok(rl, "busybox", "grep", "-E", "NoNewPrivs|CapBnd", "/proc/self/status")
    fields = dict(line.split(":\t") for line in out.strip().splitlines())
    assert fields["NoNewPrivs"] == "0"       # Docker's default; --security-opt no-new-privileges sets it
    assert int(fields["CapBnd"], 16) == DOCKER_DEFAULT_CAPS


def test_cap_add_and_drop(rl):
    out = run_ok(rl, "--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN", "busybox", "grep", "CapBnd",
                 "/proc/self/status")
    assert int(out.split()[1], 16) == 1 << 21
    out = run_ok(rl, "--cap-drop", "chown", "busybox", "grep", "CapBnd", "/proc/self/status")
    assert int(out.split()[1], 16) == DOCKER_DEFAULT_CAPS & ~1
    proc = rl("run", "--rm", "--cap-add", "NOT_A_CAP", "busybox", "true")
    assert proc.returncode == 125 and "unknown capability 'NOT_A_CAP'" in proc.stderr


def test_container_cannot_write_outside_its_root(rl):
    script = ("{ mount -t tmpfs none /mnt; echo x > /proc/sys/kernel/hostname; "
              "echo x > /sys/kernel/uevent_helper; } 2>&1")
    out = rl("run", "--rm", "busybox", "sh", "-c", script).stdout.lower()
    assert "permission denied" in out or "not permitted" in out  # no CAP_SYS_ADMIN: no mounts
    assert out.count("read-only file system") == 2


def test_dev_is_minimal(rl):
    out = run_ok(rl, "busybox", "sh", "-c", "ls /dev; echo; ls /dev/pts; head -c 4 /dev/zero | wc -c")
    names = set(out.split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm"} <= names
    assert "sda" not in names and "vda" not in names and "kmsg" not in names
    assert "4" in names


def test_masked_and_readonly_paths(rl):
    out = run_ok(rl, "busybox", "sh", "-c",
                 "cat /proc/keys 2>&1 | wc -c; ls /sys/firmware | wc -l; grep ' /proc/sys ' /proc/self/mountinfo")
    lines = out.splitlines()
    assert lines[0].strip() == "0" and lines[1].strip() == "0"
    assert " ro," in lines[2] or "ro," in lines[2].split()[5]


def test_loopback_is_up(rl):
    out = run_ok(rl, "--network", "none", "busybox", "sh", "-c", "ip -o link; cat /proc/net/dev | grep -c :")
    assert "lo:" in out and "UP" in out
    assert out.strip().endswith("1")  # loopback only: a network namespace of its own


@needs_range
def test_user_flag_with_range(rl):
    assert run_ok(rl, "-u", "1000", "busybox", "id").startswith("uid=1000(user) gid=1000(user)")
    out = run_ok(rl, "-u", "nobody:nogroup", "-w", "/tmp", "busybox", "sh", "-c", "id -u; id -g; pwd; echo $HOME")
    assert out.split() == ["65534", "65534", "/tmp", "/nonexistent"] or out.split()[:3] == ["65534", "65534", "/tmp"]


@needs_single
def test_user_flag_without_range_says_why(rl):
    proc = rl("run", "--rm", "-u", "1000", "busybox", "id")
    assert proc.returncode == 125
    assert "uid 1000 does not exist in this container" in proc.stderr
    assert "subuid" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_user(rl):
    proc = rl("run", "--rm", "-u", "nosuchuser", "busybox", "id")
    assert proc.returncode == 125
    assert "unable to find user nosuchuser" in proc.stderr


def test_read_only(rl):
    proc = rl("run", "--rm", "--read-only", "busybox", "sh", "-c", "touch /x; echo ok > /dev/shm/y && echo shm-ok")
    assert "Read-only file system" in proc.stderr
    assert "shm-ok" in proc.stdout


def test_generated_etc_files(rl):
    out = run_ok(rl, "--hostname", "web", "busybox", "sh", "-c", "cat /etc/hosts; ls -l /etc/resolv.conf")
    assert "127.0.0.1\tlocalhost" in out and "web" in out
