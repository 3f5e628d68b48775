"""Making small trees on disk for the builder's tests."""

from __future__ import annotations

import os


def make(root, files: dict) -> str:
    """``files``: path -> text or bytes (a file), None (a directory), (target,) (a symlink)."""
    for path, content in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if content is None:
            os.makedirs(full, exist_ok=True)
        elif isinstance(content, tuple):
            os.symlink(content[0], full)
        else:
            with open(full, "wb" if isinstance(content, bytes) else "w") as f:
                f.write(content)
    return str(root)
