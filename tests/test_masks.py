"""Masked and read-only paths hold for every capability set (both id-map modes).

The masks are mounts made in a mount namespace owned by a more privileged user namespace
than the container's, so the container sees them *locked* (mount_namespaces(7)): even with
``--cap-add ALL`` (CAP_SYS_ADMIN in its user namespace) it cannot unmount them, remount
them read-write, or reveal what they hide with a non-recursive bind or a fresh procfs.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.both_modes

# What the default masks and read-only paths look like when in force (/proc/kcore and others
# may not exist on a kernel; /proc/keys and /proc/interrupts are readable and not empty).
CHECK = ("wc -c < /proc/keys; wc -c < /proc/interrupts; ls /sys/firmware | wc -l; "
         "(echo 0 > /proc/sys/net/ipv4/ip_forward) 2>&1 | grep -c 'Read-only'; "
         "awk '$5 == \"/proc/fs\" {print $6}' /proc/self/mountinfo | grep -c '^ro'")
IN_FORCE = ["0", "0", "0", "1", "1"]


def run(rl, *args: str):
    return rl("run", "--rm", *args)


def attempts(script: str) -> str:
    """Each line of ``script`` run as an attack, printing ATTACK-OK when the kernel let it through."""
    return "; ".join(f"({line}) >/dev/null 2>&1 && echo ATTACK-OK: {line!r}" for line in script.strip().splitlines())


UNDO = attempts("""
umount /proc/sys
umount -l /proc/sys
umount /proc/keys
umount -l /proc/keys
umount -l /proc/interrupts
umount /sys/firmware
umount -l /sys/firmware
umount -l /proc/fs
umount -l /proc
umount -l /sys
mount -o remount,rw /proc/sys
mount -o remount,rw,bind /proc/sys
mount -o remount,rw /proc/fs
mount -o remount,rw,bind /sys/firmware
""")


def test_masks_cannot_be_undone_with_all_capabilities(rl):
    proc = run(rl, "--cap-add", "ALL", "busybox", "sh", "-c", f"{UNDO}; echo --; {CHECK}")
    assert proc.returncode == 0, proc.stderr
    attacks, after = proc.stdout.split("--\n")
    assert attacks == ""
    assert after.split() == IN_FORCE


def test_masks_cannot_be_revealed_through_new_mounts(rl):
    tricks = attempts("""
mkdir -p /m1 && mount --bind /proc /m1 && [ $(wc -c < /m1/keys) -gt 0 ]
mkdir -p /m2 && mount -t proc proc /m2
mkdir -p /m3 && mount -t sysfs sysfs /m3
mkdir -p /m4 && mount --bind /proc/sys /m4 && mount -o remount,rw,bind /m4
mkdir -p /m5 && mount --rbind /proc /m5 && [ $(wc -c < /m5/keys) -gt 0 ]
mkdir -p /m6 && mount --rbind /proc /m6 && umount -l /m6/keys && [ $(wc -c < /m6/keys) -gt 0 ]
mkdir -p /m7 && mount --rbind /sys /m7 && umount -l /m7/firmware
""")
    proc = run(rl, "--cap-add", "ALL", "busybox", "sh", "-c", f"{tricks}; echo --; {CHECK}")
    assert proc.returncode == 0, proc.stderr
    attacks, after = proc.stdout.split("--\n")
    assert attacks == ""
    assert after.split() == IN_FORCE


def test_exec_cannot_undo_the_masks(rl):
    name = "masks-exec"
    assert rl("run", "-d", "--network", "none", "--name", name, "--cap-add", "ALL",
              "busybox", "sleep", "60").returncode == 0
    try:
        proc = rl("exec", name, "sh", "-c", f"{UNDO}; echo --; {CHECK}")
        assert proc.returncode == 0, proc.stderr
        attacks, after = proc.stdout.split("--\n")
        assert attacks == ""
        assert after.split() == IN_FORCE
    finally:
        rl("rm", "-f", name)


def test_read_only_root_cannot_be_remounted_read_write(rl):
    proc = run(rl, "--read-only", "--cap-add", "ALL", "busybox", "sh", "-c",
               "mount -o remount,rw / 2>/dev/null && echo ATTACK-OK; touch /x 2>/dev/null && echo WROTE; echo done")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["done"]


def test_the_container_keeps_its_own_mounts_and_powers(rl):
    """What CAP_SYS_ADMIN is still good for: mounts of its own, which it may unmount again;
    and root keeps its rights over its UTS and network namespaces."""
    proc = run(rl, "--cap-add", "ALL", "--network", "none", "busybox", "sh", "-c",
               "mkdir /t && mount -t tmpfs none /t && umount /t && echo own-mount-ok; "
               "hostname inside && hostname; ip link set lo down && ip link set lo up && echo link-ok; "
               "echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo sysctl-refused")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["own-mount-ok", "inside", "link-ok", "sysctl-refused"]


@pytest.mark.parametrize("flag", [["--privileged"], ["--security-opt", "unmask=ALL", "--cap-add", "NET_ADMIN"]])
def test_privileged_and_unmask_all_leave_the_paths_alone(rl, flag):
    proc = run(rl, *flag, "busybox", "sh", "-c",
               "[ $(wc -c < /proc/keys) -gt 0 ] && echo keys-visible; "
               "grep -c ' /proc/sys ' /proc/self/mountinfo; "
               "echo 1 > /proc/sys/net/ipv4/ip_forward && cat /proc/sys/net/ipv4/ip_forward")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["keys-visible", "0", "1"]


def test_unmask_one_path(rl):
    proc = run(rl, "--security-opt", "unmask=/proc/interrupts", "busybox", "sh", "-c",
               "[ $(wc -c < /proc/interrupts) -gt 0 ] && echo interrupts-visible; wc -c < /proc/keys")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["interrupts-visible", "0"]


def test_extra_masks_hold_too(rl):
    proc = run(rl, "--cap-add", "ALL", "--security-opt", "mask=/etc/hostname:/etc/ssl", "busybox", "sh", "-c",
               "wc -c < /etc/hostname; ls /etc/ssl 2>/dev/null | wc -l; "
               "umount /etc/hostname 2>/dev/null && echo ATTACK-OK; umount -l /etc/hostname 2>/dev/null && echo ATTACK-OK; "
               "echo x > /etc/hostname 2>/dev/null; wc -c < /etc/hostname")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "0", "0"]
