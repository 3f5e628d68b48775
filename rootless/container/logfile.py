"""A container's log file: its format (Docker's json-file, or Podman's k8s-file), its bound
(``--log-opt max-size=``, ``max-file=``: the file is rotated to ``ctr.log.1``... and the oldest
dropped), and reading it back for ``logs``.

json-file lines: ``{"log": "text\\n", "stream": "stdout", "time": "RFC 3339"}``.
k8s-file lines: ``RFC3339NANO stdout F text`` (``P`` for a line cut without its newline).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Iterator

from ..errors import UsageError

DRIVERS = ("json-file", "k8s-file", "none")
DEFAULT_MAX_SIZE = 20 << 20           # a chatty container cannot fill the disk: 2 x 20 MiB
DEFAULT_MAX_FILE = 2


@dataclass(frozen=True)
class LogConfig:
    driver: str = "json-file"
    max_size: int = DEFAULT_MAX_SIZE   # 0: unbounded
    max_file: int = DEFAULT_MAX_FILE


def parse(driver: str | None, opts: list[str]) -> LogConfig:
    """--log-driver and --log-opt KEY=VALUE (max-size=SIZE, -1 for unbounded; max-file=N)."""
    from ..units import parse_size
    driver = driver or "json-file"
    if driver not in DRIVERS:
        raise UsageError(f"unknown --log-driver '{driver}': use json-file, k8s-file or none")
    max_size, max_file = DEFAULT_MAX_SIZE, DEFAULT_MAX_FILE
    for item in opts:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"invalid --log-opt '{item}': use max-size=SIZE or max-file=N")
        if key == "max-size":
            max_size = 0 if value.strip() == "-1" else parse_size(value, "--log-opt max-size")
        elif key == "max-file":
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"invalid --log-opt '{item}': max-file is a whole number of at least 1")
            max_file = int(value)
        else:
            raise UsageError(f"unknown --log-opt '{key}': rootless knows max-size and max-file")
    return LogConfig(driver, max_size, max_file)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogWriter:
    """Appends lines to ``path`` in ``cfg``'s format, rotating at ``cfg.max_size``.  Not
    thread-safe: the caller serialises (LogPump holds a lock)."""

    def __init__(self, path: str, cfg: LogConfig) -> None:
        self.path, self.cfg = path, cfg
        self.out = open(path, "ab", buffering=0) if cfg.driver != "none" else None

    def write(self, stream: str, lines: list[bytes]) -> None:
        if self.out is None:
            return                                    # --log-driver none
        now = _now()
        if self.cfg.driver == "k8s-file":
            entries = [f"{now} {stream} ".encode() + (b"F " if line.endswith(b"\n") else b"P ")
                       + line.rstrip(b"\n") + b"\n" for line in lines]
        else:
            entries = [json.dumps({"log": line.decode(errors="replace"), "stream": stream,
                                   "time": now}).encode() + b"\n" for line in lines]
        if not self.cfg.max_size:
            self.out.write(b"".join(entries))
            return
        batch: list[bytes] = []
        size = self.out.tell()
        for entry in entries:          # a file never passes max-size (but for one longer line)
            if size and size + len(entry) > self.cfg.max_size:
                self.out.write(b"".join(batch))
                self._rotate()
                batch, size = [], 0
            batch.append(entry)
            size += len(entry)
        self.out.write(b"".join(batch))

    def _rotate(self) -> None:
        self.out.close()
        keep = self.cfg.max_file - 1                 # rotated files kept beside the current one
        if keep < 1:
            os.unlink(self.path)
        else:
            for n in range(keep, 0, -1):
                older = f"{self.path}.{n}"
                if os.path.exists(older):
                    if n == keep:
                        os.unlink(older)
                    else:
                        os.rename(older, f"{self.path}.{n + 1}")
            os.rename(self.path, f"{self.path}.1")
        self.out = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


def files(path: str) -> list[str]:
    """The log's files, oldest first (rotated ones, then the current one)."""
    rotated = []
    n = 1
    while os.path.exists(f"{path}.{n}"):
        rotated.append(f"{path}.{n}")
        n += 1
    return list(reversed(rotated)) + ([path] if os.path.exists(path) else [])


def parse_line(raw: bytes) -> tuple[str, str, str] | None:
    """(stream, time, text) of one line of either format; None for a line that is neither."""
    if raw.startswith(b"{"):
        try:
            entry = json.loads(raw)
            return entry.get("stream") or "stdout", entry["time"], entry["log"]
        except (ValueError, KeyError, TypeError):
            return None
    parts = raw.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
        return None
    text = (parts[3] if len(parts) > 3 else b"").decode(errors="replace")
    return parts[1].decode(), parts[0].decode(), text + ("\n" if parts[2] == b"F" else "")


def read_all(path: str) -> Iterator[bytes]:
    """Every line of the log's files, oldest first."""
    for name in files(path):
        try:
            with open(name, "rb") as f:
                yield from f
        except FileNotFoundError:      # rotated away while we read
            continue
