"""Sizes: as Docker prints them (decimal units: kB, MB, GB) and as people write them in flags
(``512m``, ``1.5g``, ``100kb``, ``2GiB``: powers of 1024) — the one parser for --memory,
--memory-swap, --tmpfs size=, --mount tmpfs-size= and inspect's HostConfig."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$", re.IGNORECASE)


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}TB"


def human_binary(n: float | None) -> str:
    """Memory as Docker's ``stats`` prints it (binary units: KiB, MiB, GiB); ``--`` unknown."""
    if n is None:
        return "--"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n:.4g}TiB"


def parse_size(value: str, what: str) -> int:
    """Bytes in ``value`` ('512m', '1g', '1.5g', '1024', '100kb', '2GiB'); ``what`` names the
    flag or key in the error, e.g. "--memory"."""
    m = _SIZE.match(str(value).strip())
    if not m:
        raise UsageError(f"invalid size '{value}' for {what}: use a number of bytes with an optional "
                         "unit b, k, m, g, t or p (e.g. 512m, 1g)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


__all__ = ["human_binary", "human_size", "parse_size"]
