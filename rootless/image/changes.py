"""Dockerfile instructions accepted by ``import --change`` and ``commit --change`` (as Docker's ``-c``)."""

from __future__ import annotations

import json
import shlex
from typing import Any

from ..errors import UsageError

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "LABEL", "EXPOSE", "STOPSIGNAL", "VOLUME")


def _command(value: str) -> list[str]:
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return parsed
    return ["/bin/sh", "-c", value]


def _list(value: str) -> list[str]:
    """A JSON array of strings, or words."""
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return parsed
    return value.split()


def _pairs(value: str, instruction: str) -> list[tuple[str, str]]:
    words = shlex.split(value)
    if len(words) >= 2 and "=" not in words[0]:
        return [(words[0], value.split(None, 1)[1])]  # legacy form: ENV KEY some value
    pairs = []
    for w in words:
        key, sep, val = w.partition("=")
        if not sep or not key:
            raise UsageError(f"{instruction} needs KEY=VALUE, got '{w}'")
        pairs.append((key, val))
    return pairs


def apply(config: dict[str, Any], change: str) -> None:
    """Apply one instruction such as ``CMD ["/bin/sh"]`` to an image's ``config`` section."""
    instruction, _, value = change.strip().partition(" ")
    instruction, value = instruction.upper(), value.strip()
    if instruction not in SUPPORTED:
        raise UsageError(f"--change '{change}': {instruction or 'nothing'} is not supported here; "
                         f"use one of {', '.join(SUPPORTED)}")
    if not value:
        raise UsageError(f"--change '{change}': {instruction} needs a value")
    if instruction == "CMD":
        config["Cmd"] = _command(value)
    elif instruction == "ENTRYPOINT":
        config["Entrypoint"] = _command(value)
    elif instruction == "ENV":
        env = [e for e in config.get("Env", [])]
        for key, val in _pairs(value, "ENV"):
            env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={val}"]
        config["Env"] = env
    elif instruction == "WORKDIR":
        config["WorkingDir"] = value
    elif instruction == "USER":
        config["User"] = value
    elif instruction == "LABEL":
        config.setdefault("Labels", {}).update(dict(_pairs(value, "LABEL")))
    elif instruction == "EXPOSE":
        for port in value.split():
            config.setdefault("ExposedPorts", {})[port if "/" in port else f"{port}/tcp"] = {}
    elif instruction == "STOPSIGNAL":
        config["StopSignal"] = value
    elif instruction == "VOLUME":
        paths = _list(value)
        if not paths or not all(p.startswith("/") for p in paths):
            raise UsageError(f"--change '{change}': VOLUME needs absolute paths, as VOLUME /data or "
                             'VOLUME ["/data"]')
        for path in paths:
            config.setdefault("Volumes", {})[path] = {}
