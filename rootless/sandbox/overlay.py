"""Mounting the kernel's overlay filesystem from inside a user namespace.

mount(2) copies one page of options (4096 bytes), and the layers of an image are long paths:
absolute ones fill the page at about 30 layers, names relative to the store's ``layers/`` at
about 60, while an image may have 127.  So each lower directory is opened (``O_PATH``) and
named by its descriptor, relative to ``/proc/self/fd`` as the working directory during the
mount: ``lowerdir=5:6:7``, a few bytes a layer, resolved by the kernel at the mount and held
by the mount from then on.  The container's ``/proc/mounts`` so shows no host path of a layer.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator

from . import libc

MOUNT_DATA_MAX = 4096         # mount(2) copies one page of options


def mount(target: str, lowers: list[str], upper: str | None, work: str | None, extra: str = "userxattr") -> str:
    """The kernel's overlay on ``target``: ``lowers`` top first (as ``lowerdir`` lists them),
    ``upper`` and ``work`` (None: read-only), ``extra`` options; the options it was given
    (``OSError`` as from mount(2))."""
    fds: list[int] = []
    try:
        for d in lowers:
            fds.append(os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        options = f"lowerdir={':'.join(map(str, fds))}"
        if upper is not None:
            options += f",upperdir={upper},workdir={work}"
        if extra:
            options += f",{extra}"
        if len(options) >= MOUNT_DATA_MAX:
            raise OSError(errno.E2BIG, f"the options of its {len(lowers)} layers are longer than the "
                                       f"{MOUNT_DATA_MAX} bytes mount(2) takes")
        with working_directory("/proc/self/fd"):
            libc.mount("overlay", target, "overlay", 0, options)
        return options
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def working_directory(path: str) -> Iterator[None]:
    """``path`` as the working directory, the previous one again after (by an O_PATH fd: it
    may be a directory this process may not read, or no longer has a name)."""
    back = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(path)
        yield
    finally:
        os.fchdir(back)
        os.close(back)
