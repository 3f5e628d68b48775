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


def human_duration(seconds: float) -> str:
    """A duration as Docker words it ('Up 3 minutes', 'Exited (0) 2 seconds ago')."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        n = int(seconds)
        return "1 second" if n == 1 else f"{n} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds // 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration ('30s', '1m30s', '500ms'), in nanoseconds; ValueError if it is not one."""
    if text == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if not m:
            raise ValueError(text)
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if not text:
        raise ValueError(text)
    return int(total)


__all__ = ["human_binary", "human_duration", "human_size", "parse_duration", "parse_size"]
