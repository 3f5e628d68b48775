"""Sizes as Docker prints them (decimal units: kB, MB, GB)."""

from __future__ import annotations


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}TB"
