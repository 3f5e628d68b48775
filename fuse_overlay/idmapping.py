"""``uidmapping=`` / ``gidmapping=``: owners as stored on disk vs. as the mount shows them.

fuse-overlayfs's options, with its format and meaning: ``DISK:SHOWN:COUNT[:DISK2:SHOWN2:COUNT2...]``
— the backing files' id DISK+i (as this daemon sees it, in its user namespace) is shown as
SHOWN+i, and an owner set through the mount (chown, or the creator of a new file) is stored
as the reverse.  Ids outside every range are shown as the overflow id (65534) and cannot be
set (EINVAL, as the kernel answers for an unmapped id).

What it is for: a container whose user namespace maps ids differently from the one the image
was unpacked in (Podman's and rootless's ``--userns keep-id``) still sees the image's owners.
Without the options the mapping is the identity.
"""
from __future__ import annotations

import errno

OVERFLOW = 65534


class IdMapping:
    def __init__(self, ranges: list[tuple[int, int, int]]):
        self.ranges = ranges            # (disk, shown, count)

    @classmethod
    def parse(cls, text: str) -> "IdMapping":
        """``DISK:SHOWN:COUNT[:...]``; ValueError with the reason."""
        parts = text.split(":")
        if not text or len(parts) % 3:
            raise ValueError("it needs DISK:SHOWN:COUNT triples, separated by ':'")
        nums = [int(p) for p in parts]
        if any(n < 0 for n in nums):
            raise ValueError("ids and counts cannot be negative")
        ranges = [(nums[i], nums[i + 1], nums[i + 2]) for i in range(0, len(nums), 3)]
        if any(count == 0 for _, _, count in ranges):
            raise ValueError("a count of 0 maps nothing")
        return cls(ranges)

    def shown(self, disk: int) -> int:
        for d, s, n in self.ranges:
            if d <= disk < d + n:
                return s + disk - d
        return OVERFLOW

    def disk(self, shown: int) -> int:
        """The id to store for ``shown``; OSError(EINVAL) if no range covers it."""
        if shown == -1:                 # "leave unchanged" in chown(2)
            return -1
        for d, s, n in self.ranges:
            if s <= shown < s + n:
                return d + shown - s
        raise OSError(errno.EINVAL, f"id {shown} has no mapping in this mount")
