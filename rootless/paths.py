"""Where rootless keeps things.

* The store (images, layers, containers): ``--root``, else ``$ROOTLESS_ROOT``, else ``root`` in
  ``[storage]`` of ``~/.config/rootless/storage.conf`` (``configured_root``), else
  ``$XDG_DATA_HOME/rootless``, else ``~/.local/share/rootless``.
* Run-time state: ``$XDG_RUNTIME_DIR/rootless``.  Without ``XDG_RUNTIME_DIR`` (su, cron,
  Slurm jobs, ssh without a systemd session) a private ``/tmp/rootless-run-UID`` is used,
  created mode 0700 and refused if someone else owns it or it is open to others: a
  shared /tmp must not let another user plant or read our state.  Inside a Slurm job step,
  its subdirectory ``slurm-JOB.STEP`` (rootless/slurm.py; those of jobs gone from the node are
  swept when a step makes its own).
"""

from __future__ import annotations

import os
import stat

from .errors import StoreError


def store_root(override: str | None = None) -> str:
    root = override or os.environ.get("ROOTLESS_ROOT") or configured_root()
    if not root:
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        root = os.path.join(data, "rootless")
    return os.path.abspath(root)


def config_file() -> str:
    """``$XDG_CONFIG_HOME/rootless/storage.conf`` (default ``~/.config/rootless/storage.conf``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "rootless", "storage.conf")


# containers-storage.conf(5) keys accepted (a copy of that file works) but not used, but graphroot
CONTAINERS_KEYS = ("graphroot", "runroot", "driver", "rootless_storage_path", "transient_store",
                   "imagestore", "options")


def configured_root(path: str | None = None) -> str | None:
    """The store's directory that storage.conf sets (TOML, containers' own key names)::

        [storage]
        root = "/tmp/$USER/rootless"      # or graphroot = ..., as in containers-storage.conf

    ``$USER``, ``$UID``, ``$HOME``, ``$TMPDIR`` (default /tmp) and other environment variables
    are expanded, ``~`` too.  None when the file does not exist or sets no root."""
    import tomllib
    path = path or config_file()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise StoreError(f"{path} is not valid TOML ({e}): fix it, or remove it") from None
    storage = data.get("storage")
    if storage is None:
        return None
    if not isinstance(storage, dict):
        raise StoreError(f"{path}: 'storage' must be a table ([storage])")
    unknown = sorted(set(storage) - {"root", *CONTAINERS_KEYS})
    if unknown:
        raise StoreError(f"{path}: unknown key '{unknown[0]}' in [storage]: use root = \"DIR\"")
    value = storage.get("root", storage.get("graphroot"))
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise StoreError(f"{path}: [storage] root must be a directory, as a string")
    return expand(value, path)


def expand(value: str, source: str) -> str:
    """``value`` with ``~`` and ``$VAR``/``${VAR}`` expanded; USER, UID, HOME and TMPDIR always
    have a value.  An unknown variable is an error naming it (a path with '$X' in it is surely
    not meant)."""
    import pwd
    import re
    env = dict(os.environ)
    try:
        me = pwd.getpwuid(os.getuid())
        env.setdefault("USER", me.pw_name)
        env.setdefault("HOME", me.pw_dir)
    except KeyError:
        env.setdefault("USER", str(os.getuid()))
    env.setdefault("UID", str(os.getuid()))
    env.setdefault("TMPDIR", "/tmp")
    if not env.get("TMPDIR"):
        env["TMPDIR"] = "/tmp"

    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise StoreError(f"{source}: [storage] root uses ${name}, which is not set")
        return env[name]
    out = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", var, value)
    if out.startswith("~"):
        out = os.path.expanduser(out)
    if not os.path.isabs(out):
        raise StoreError(f"{source}: [storage] root must be an absolute path (got '{value}')")
    return out


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
    else:
        path = private_tmp_dir(f"/tmp/rootless-run-{os.getuid()}")
    from . import slurm
    step = slurm.current()
    if step is None:
        return path
    # A Slurm job step's own: what it starts there (a squashfs mount, a namespace holder) ends
    # with it, and no other job's container may come to depend on it (rootless/slurm.py).
    # The step that makes its directory removes those of jobs that have left the node.
    base, path = path, os.path.join(path, f"slurm-{step.name}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return path
    if step.tracked:
        slurm.sweep(base, slurm.live_jobs() | {step.job})
    return path


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
