"""Progress lines on stderr for long work (pull, push): a redrawn block on a terminal,
one line per finished item otherwise (logs, CI)."""

from __future__ import annotations

import sys
import threading
from typing import Callable, Protocol


class ProgressSink(Protocol):
    def update(self, key: str, done: int, total: int | None = None) -> None: ...


# What the engine's long transfers take: (verb, [(key, size)]) -> a sink of their progress
ProgressFactory = Callable[[str, list[tuple[str, int | None]]], ProgressSink]


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}MB"


class Progress:
    def __init__(self, verb: str, items: list[tuple[str, int | None]]):
        self.verb = verb
        self.items = {key: [0, size, False] for key, size in items}
        self.tty = sys.stderr.isatty()
        self.lock = threading.Lock()
        self.drawn = 0

    def update(self, key: str, done: int, total: int | None = None) -> None:
        with self.lock:
            item = self.items[key]
            item[0] = done
            if total is not None:
                item[1] = total
            if item[1] is not None and done >= item[1] and not item[2]:
                item[2] = True
                if not self.tty:
                    print(f"{key[7:19]}: {self.verb} complete ({_mb(item[1])})", file=sys.stderr)
            if self.tty:
                self._draw()

    def _draw(self) -> None:
        out = "\x1b[A" * self.drawn
        for key, (done, total, finished) in self.items.items():
            bar = ""
            if total:
                filled = int(24 * min(done, total) / total)
                bar = "[" + "=" * filled + " " * (24 - filled) + "] "
            state = "complete" if finished else f"{bar}{_mb(done)}/{_mb(total)}"
            out += f"\x1b[2K{key[7:19]}: {self.verb} {state}\n"
        done = sum(i[0] for i in self.items.values())
        total = sum(i[1] or 0 for i in self.items.values())
        out += f"\x1b[2Ktotal: {_mb(done)}/{_mb(total)}\n"
        self.drawn = len(self.items) + 1
        sys.stderr.write(out)
        sys.stderr.flush()
