"""Where rootless keeps things.

* The store (images, layers, containers): ``--root``, else ``$ROOTLESS_ROOT``, else
  ``$XDG_DATA_HOME/rootless``, else ``~/.local/share/rootless``.
* Run-time state: ``$XDG_RUNTIME_DIR/rootless``.  Without ``XDG_RUNTIME_DIR`` (su, cron,
  Slurm jobs, ssh without a systemd session) a private ``/tmp/rootless-run-UID`` is used,
  created mode 0700 and refused if someone else owns it or it is open to others: a
  shared /tmp must not let another user plant or read our state.
"""

from __future__ import annotations

import os
import stat

from .errors import StoreError


def store_root(override: str | None = None) -> str:
    root = override or os.environ.get("ROOTLESS_ROOT")
    if not root:
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        root = os.path.join(data, "rootless")
    return os.path.abspath(root)


def _usable_runtime_dir(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and os.access(path, os.W_OK | os.X_OK)


def runtime_dir() -> str:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _usable_runtime_dir(xdg):
        path = os.path.join(xdg, "rootless")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path
    return private_tmp_dir(f"/tmp/rootless-run-{os.getuid()}")


def private_tmp_dir(path: str) -> str:
    """Create (or check) a directory only we can use, in a world-writable parent."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(f"cannot create the run-time directory {path}: {e.strerror}. "
                         "Set XDG_RUNTIME_DIR to a directory you own (mode 0700)") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise StoreError(f"{path} is not a directory owned by you (uid {os.getuid()}): someone else "
                         "created it. Remove it, or set XDG_RUNTIME_DIR to a directory you own (mode 0700)")
    if st.st_mode & 0o077:
        raise StoreError(f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):o}): "
                         f"run 'chmod 700 {path}', or set XDG_RUNTIME_DIR to a directory you own (mode 0700)")
    return path
