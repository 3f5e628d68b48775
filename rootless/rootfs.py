"""A container's root filesystem, prepared in the container's user and mount namespace.

``CopyRootfs`` is the stepping stone until the overlay mount lands: each container
gets a private copy of its image's layers (``cp -a`` run as root of the user
namespace, so sub-id owners are kept).  Its ``prepare``/``cleanup`` run in the
intermediate process (see ``sandbox.container``).
"""

from __future__ import annotations

import os
import shutil
import subprocess


class CopyRootfs:
    def __init__(self, layer_dirs: list[str], target: str, remove_after: bool):
        self.layer_dirs = layer_dirs
        self.target = target
        self.remove_after = remove_after

    def prepare(self) -> None:
        os.makedirs(self.target, mode=0o755, exist_ok=True)
        for layer in self.layer_dirs:
            proc = subprocess.run(["cp", "-a", "--reflink=auto", f"{layer}/.", self.target],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise OSError(f"copying the image into the container failed: {proc.stderr.strip()}")

    def cleanup(self) -> None:
        if self.remove_after:
            shutil.rmtree(self.target, ignore_errors=True)
