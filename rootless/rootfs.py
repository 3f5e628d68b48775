"""A container's root filesystem, prepared in the container's user and mount namespace.

Drivers (``--storage-driver``, or ``ROOTLESS_STORAGE_DRIVER``):

* ``overlay``: the kernel's overlayfs, mounted as root of the user namespace with the
  ``userxattr`` option (Linux 5.11+): the image's layers are the read-only lower dirs,
  shared by every container; ``upper/`` and ``work/`` are the container's own.
* ``vfs``: a private copy of the layers per container (``cp -a`` as root of the user
  namespace, so sub-id owners are kept) — slow and large, but works everywhere.
* ``auto`` (default): ``overlay`` when the kernel allows it, else ``vfs``.

``prepare``/``cleanup`` run in the intermediate process (see ``sandbox.container``):
its mount namespace holds the mount, and it removes the container's writable layer
for ``--rm`` once the container has ended.
"""

from __future__ import annotations

import errno
import os
import shutil

from .errors import UsageError
from .sandbox import libc

DRIVERS = ("auto", "overlay", "vfs")


class ContainerRootfs:
    """The root filesystem of one container under ``directory`` (the container's store dir)."""

    def __init__(self, layer_dirs: list[str], directory: str, driver: str, remove_after: bool):
        if driver not in DRIVERS:
            raise UsageError(f"unknown storage driver '{driver}': use one of {', '.join(DRIVERS)}")
        self.layer_dirs = layer_dirs            # bottom first
        self.directory = directory
        self.target = os.path.join(directory, "rootfs")
        self.driver = driver
        self.remove_after = remove_after
        self.used = ""                          # the driver that served (set by prepare)

    def prepare(self) -> None:
        os.makedirs(self.target, mode=0o755, exist_ok=True)
        if self.driver in ("auto", "overlay"):
            try:
                self._mount_overlay()
                self.used = "overlay"
                return
            except OSError as e:
                if self.driver == "overlay" or e.errno not in (errno.EINVAL, errno.EPERM, errno.ENODEV):
                    raise
        self._copy()
        self.used = "vfs"

    def _mount_overlay(self) -> None:
        upper, work = os.path.join(self.directory, "upper"), os.path.join(self.directory, "work")
        os.makedirs(upper, mode=0o755, exist_ok=True)
        os.makedirs(work, mode=0o700, exist_ok=True)
        lower = ":".join(reversed(self.layer_dirs))  # overlayfs lists the top layer first
        libc.mount("overlay", self.target, "overlay", 0,
                   f"lowerdir={lower},upperdir={upper},workdir={work},userxattr")

    def _copy(self) -> None:
        import subprocess
        for layer in self.layer_dirs:
            proc = subprocess.run(["cp", "-a", "--reflink=auto", f"{layer}/.", self.target],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise OSError(f"copying the image into the container failed: {proc.stderr.strip()}")

    def cleanup(self) -> None:
        if self.used == "overlay":
            try:
                libc.umount2(self.target, libc.MNT_DETACH)
            except OSError:
                pass
        if self.remove_after:
            for name in ("rootfs", "upper", "work"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    @staticmethod
    def changes_dir(directory: str) -> str:
        """Where a stopped container's own files are: the overlay's upper dir, or the copy."""
        upper = os.path.join(directory, "upper")
        return upper if os.path.isdir(upper) else os.path.join(directory, "rootfs")
