"""Removing trees that may hold files owned by sub-ids."""

from __future__ import annotations

import os
import shutil

from ..errors import StoreError
from . import channel, idmap
from .userns import run_as_root


def remove_tree(maps: idmap.IdMaps, path: str) -> None:
    """Remove ``path``; files owned by sub-ids are removed as root of the user namespace."""
    if not os.path.lexists(path):
        return
    try:
        shutil.rmtree(path)
        return
    except PermissionError:
        pass
    try:
        run_as_root(maps, lambda: shutil.rmtree(path), name="rootless-rm")
    except channel.ChildError as e:
        raise StoreError(f"cannot remove {path}: {e}") from None
