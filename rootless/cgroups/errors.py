"""The cgroup errors, and the sentences that tell an administrator how to delegate."""

from __future__ import annotations

from ..errors import SandboxError

SYSTEMD_FIX = (
    "with systemd, an administrator enables delegation for every user with "
    "'mkdir -p /etc/systemd/system/user@.service.d && printf \"[Service]\\nDelegate=yes\\n\" "
    "> /etc/systemd/system/user@.service.d/delegate.conf && systemctl daemon-reload'; then log in "
    "again and start rootless inside your user manager (e.g. 'systemd-run --user --scope rootless run ...')")


def v1_fix(controller: str, user: str = "USER") -> str:
    d = f"/sys/fs/cgroup/{controller}/{user}"
    return (f"on cgroup v1 an administrator hands a subtree to you with 'mkdir {d} && chown {user} {d} "
            f"{d}/cgroup.procs {d}/tasks', and you pass it with --cgroup-parent or ROOTLESS_CGROUP_PARENT "
            f"(directories separated by ':', one per hierarchy)")


class CgroupError(SandboxError):
    """A cgroup could not be created, joined, changed or removed."""


class LimitUnavailable(CgroupError):
    """A resource limit was asked for but cannot be enforced here."""
