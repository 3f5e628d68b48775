"""The errors a user can meet, as one tree.  Each message names the problem and the fix.

    RootlessError                 exit 125 unless said otherwise
     ├── UsageError               a flag or argument is wrong
     │    └── DeviceError         a --device, --gpus or CDI spec that cannot be used here
     ├── NotFound                 what the user named does not exist (the API answers 404)
     ├── Conflict                 a name in use, an object in a state that forbids it (409)
     ├── StoreError               the image store cannot be read or written
     │    └── ImageNotFound       (also a NotFound)
     ├── SandboxError             the kernel refused part of the sandbox
     │    └── UserNamespaceUnavailable
     ├── CommandError             the container's command could not start (126, 127)
     └── BuildError               a build cannot go on: a COPY source missing, a URL unreachable (1)
          └── DockerfileError     FILE:LINE: what is wrong with the Dockerfile[; the fix]

The CLI prints ``rootless: <message>`` and exits with ``exit_code``; tracebacks are
shown only with ``--debug``.
"""

from __future__ import annotations


class RootlessError(Exception):
    exit_code = 125

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(RootlessError):
    pass


class NotFound(RootlessError):
    """The container, image, volume or network named does not exist."""


class Conflict(RootlessError):
    """A name already in use, or an object in a state that forbids the request (running, in use)."""


class StoreError(RootlessError):
    pass


class ImageNotFound(StoreError, NotFound):
    pass


class SandboxError(RootlessError):
    pass


class UserNamespaceUnavailable(SandboxError):
    pass


class DeviceError(UsageError):
    """A device the user cannot open, a CDI spec that is malformed or missing, a CDI hook that failed."""


class CommandError(RootlessError):
    """The container's own command could not be executed (Docker's 126/127)."""


class BuildError(RootlessError):
    """A build cannot go on (``docker build`` exits 1 for these)."""
    exit_code = 1


class DockerfileError(BuildError):
    """The Dockerfile itself is wrong: the message starts with ``FILE:LINE:``."""

    def __init__(self, filename: str, line: int | None, problem: str, fix: str | None = None):
        where = f"{filename}:{line}" if line else filename
        super().__init__(f"{where}: {problem}" + (f"; {fix}" if fix else ""))
        self.filename, self.line, self.problem, self.fix = filename, line, problem, fix
