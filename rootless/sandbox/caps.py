"""Linux capabilities by name, and the container's bounding set.

The default set is Docker's (and Podman's): what a typical image needs to install
packages and run services, without e.g. CAP_SYS_ADMIN.  Capabilities are those of
the container's user namespace only: even CAP_SYS_ADMIN there grants nothing over
the host.
"""

from __future__ import annotations

from ..errors import UsageError
from . import libc

NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
NUMBER = {name: i for i, name in enumerate(NAMES)}

DEFAULT = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})


def parse_name(raw: str) -> str:
    name = raw.strip().upper()
    if name.startswith("CAP_"):
        name = name[4:]
    if name != "ALL" and name not in NUMBER:
        raise UsageError(f"unknown capability '{raw}': use a name from capabilities(7) such as "
                         "NET_ADMIN or CAP_SYS_PTRACE, or ALL")
    return name


def resolve(add: list[str], drop: list[str]) -> frozenset[str]:
    """Docker's rule: start from the default set, drop (ALL empties it), then add (ALL fills it)."""
    adds = {parse_name(c) for c in add}
    drops = {parse_name(c) for c in drop}
    caps = set() if "ALL" in drops else set(DEFAULT) - drops
    caps |= set(NAMES) if "ALL" in adds else adds
    return frozenset(caps)


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(NAMES) - 1


def limit_bounding_set(keep: frozenset[str]) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP: we are ns root)."""
    wanted = {NUMBER[n] for n in keep}
    for cap in range(last_cap() + 1):
        if cap not in wanted:
            libc.capbset_drop(cap)
