"""The command line: click commands only, each one engine call (rootless.image, rootless.container, ...)."""

from .commands import main

__all__ = ["main"]
