"""Sizes as Docker prints them (decimal units: kB, MB, GB)."""

from __future__ import annotations


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
