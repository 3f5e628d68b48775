"""The container's mount table, built inside its own mount namespace.

Order matters:
1. ``/`` is made recursively private so nothing we mount leaks back to the host
   (mounts copied from a more privileged namespace are slaves already; this makes
   it explicit).
2. The new root is made a mount point (bind onto itself) — ``pivot_root(2)``
   requires one — and remounted read-only for ``--read-only``.
3. ``/proc`` (a fresh instance: this process is PID 1 of the new PID namespace,
   and procfs shows the mounter's PID namespace; with ``--pid host`` the host's, bound),
   ``/dev`` (a tmpfs with device
   nodes bind-mounted from the host: ``mknod`` is not allowed in a user
   namespace), a new ``devpts`` instance, ``/dev/shm`` (a tmpfs; with ``--ipc host``
   the host's, bound), ``/sys`` (a fresh sysfs,
   allowed because we own the network namespace), and the generated ``/etc``
   files are mounted under the new root.
   The OCI ``createContainer`` hooks (CDI's) run here, before pivot_root: host programs, run as
   root of the user namespace in the container's mount namespace (``Hook``).
4. ``pivot_root(".", ".")`` then a lazy unmount of the old root: the host's
   tree is no longer reachable (a bare ``chroot`` could be escaped).
5. The OCI runtime spec's default masked and read-only paths are applied.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from . import libc
from .libc import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, MS_PRIVATE

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

# The OCI runtime spec's defaults (as Docker, Podman and runc apply them).
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class Bind:
    """A mount into the container: a host path (``source``) bind-mounted, or a tmpfs."""
    target: str                    # absolute path in the container
    source: str = ""               # host path; "" with kind "tmpfs"
    readonly: bool = False
    kind: str = "bind"             # "bind" or "tmpfs"
    options: str = ""              # tmpfs mount data, e.g. "size=64m,mode=1777"


@dataclass(frozen=True)
class Hook:
    """An OCI hook run before pivot_root (createContainer): ``path`` with ``args`` and ``env``,
    the OCI state on its stdin (``state``: JSON, its ``pid`` filled in with PID 1's host pid)."""
    name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None
    state: str = "{}"


@dataclass(frozen=True)
class RootfsPlan:
    rootfs: str                      # host path of the container's root (already populated)
    readonly: bool = False
    etc_files: tuple[tuple[str, str], ...] = ()   # (container path, host file) bind-mounted
    ptmx_gid: int | None = 5         # gid for devpts' new ptys, when that gid is mapped
    binds: tuple[Bind, ...] = ()     # volumes, bind mounts, tmpfs: mounted after /etc files
    masked: tuple[str, ...] = MASKED_PATHS           # --security-opt mask=/unmask=, --privileged
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    devices: tuple[str, ...] = ()    # more host device nodes for /dev (--privileged): host paths
    device_nodes: tuple[tuple[str, str], ...] = ()   # --device, CDI: (host node, container path)
    sysctls: tuple[tuple[str, str], ...] = ()   # --sysctl: namespaced parameters, set before the masks
    shm_size: int = 64 << 20         # bytes of /dev/shm (--shm-size; Docker's default 64 MiB)
    host_proc: bool = False          # --pid host: the host's /proc (no procfs of our own may be made)
    host_shm: bool = False           # --ipc host: the host's /dev/shm, not a tmpfs of our own
    hooks: tuple[Hook, ...] = ()     # createContainer hooks, run just before pivot_root


def usable_host_devices() -> tuple[str, ...]:
    """The host's device nodes this user may open for reading and writing (--privileged):
    a user namespace cannot create device nodes, but may bind-mount the ones it can use."""
    found = []
    for base in ("/dev", "/dev/net", "/dev/dri"):
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            path = os.path.join(base, name)
            if base == "/dev" and name in DEVICES + ("ptmx", "console"):
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and os.access(path, os.R_OK | os.W_OK):
                found.append(path)
    return tuple(found)


def _ensure(root: str, path: str, kind: str, mode: int = 0o755) -> None:
    """Create a mount point (a dir or an empty file) under ``root`` when it is missing.

    Missing parents are made below ``root`` only, never ``root`` or above it: a container
    removed ('rm -f') while it starts has its directory renamed away, and its tree must not
    be made again at the old path (``makedirs`` would)."""
    if os.path.lexists(path):
        return
    parent = os.path.dirname(path)
    missing = []
    while parent != root and parent.startswith(root.rstrip("/") + "/") and not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            pass
    if kind == "dir":
        os.mkdir(path, mode)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))


def _inside(root: str, path: str) -> str:
    """``path`` (absolute, in the container) under ``root``, refusing symlinks that leave it.

    The image controls its own tree; a symlinked ``/etc`` or ``/proc`` pointing to
    ``/`` on the host would otherwise make us mount over host paths.
    """
    full = os.path.join(root, path.lstrip("/"))
    real = os.path.realpath(full)
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        raise OSError(f"{path} in the image is a symlink leading out of the container ({real})")
    return full


def enter_rootfs(plan: RootfsPlan) -> None:
    """Build the container's mounts under ``plan.rootfs`` and pivot into it (see module doc)."""
    root = os.path.realpath(plan.rootfs)
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    libc.mount(root, root, None, MS_BIND | MS_REC)

    proc = _inside(root, "/proc")
    _ensure(root, proc, "dir")
    if plan.host_proc:
        # The host's PID namespace is owned by the host's user namespace: a procfs for it may
        # not be mounted from ours, but the host's may be bound (its masks are added below).
        libc.mount("/proc", proc, None, MS_BIND | MS_REC)
        _restrict(proc)
    else:
        libc.mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    _mount_dev(root, plan.ptmx_gid, plan.devices, plan.shm_size, plan.host_shm)
    for source, target in plan.device_nodes:
        _mount_device(root, source, target)

    sys_dir = _inside(root, "/sys")
    _ensure(root, sys_dir, "dir")
    try:
        libc.mount("sysfs", sys_dir, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    except OSError:
        # No sysfs of our own (e.g. sharing the host's network namespace): the host's, read-only.
        libc.mount("/sys", sys_dir, None, MS_BIND | MS_REC)
        libc.mount(None, sys_dir, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)

    for target, source in plan.etc_files:
        dest = os.path.join(_inside(root, os.path.dirname(target)), os.path.basename(target))
        if os.path.islink(dest):
            os.unlink(dest)  # e.g. /etc/resolv.conf -> ../run/...: replace with our file
        _ensure(root, dest, "file")
        libc.mount(source, dest, None, MS_BIND)

    for bind in plan.binds:
        _mount_bind(root, bind)

    if plan.readonly:
        libc.mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY)

    if plan.hooks:
        _run_hooks(plan.hooks)
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    for key, value in plan.sysctls:     # /proc/sys is made read-only below
        _set_sysctl(key, value)
    _mask_paths(plan.masked, plan.readonly_paths)


def _set_sysctl(key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        raise OSError(f"--sysctl {key}: this kernel has no such parameter") from None
    except OSError as e:
        raise OSError(f"--sysctl {key}={value}: {_why(e)}") from None


def _mount_bind(root: str, bind: Bind) -> None:
    """Mount ``bind`` at its target under ``root`` (created when missing, as Docker does)."""
    parent = _inside(root, os.path.dirname(bind.target.rstrip("/")) or "/")
    dest = os.path.join(parent, os.path.basename(bind.target.rstrip("/")))
    if os.path.islink(dest):
        dest = _inside(root, bind.target)
    # Errors name the container path: the user never saw where the root filesystem is on the host.
    what = "a tmpfs" if bind.kind == "tmpfs" else bind.source
    try:
        _ensure(root, dest, "dir" if bind.kind == "tmpfs" or os.path.isdir(bind.source) else "file")
    except OSError as e:
        why = {errno.EROFS: "that part of the container's tree is read-only",
               errno.ENOTDIR: "a parent of it is not a directory in the image",
               errno.EACCES: "a parent of it may not be written"}.get(e.errno, _why(e))
        raise OSError(f"cannot mount {what} on {bind.target}: the mount point does not exist and cannot be "
                      f"created ({why}); choose another container path") from None
    try:
        if bind.kind == "tmpfs":
            libc.mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NODEV, bind.options or "mode=1777")
            return
        libc.mount(bind.source, dest, None, MS_BIND | MS_REC)
    except OSError as e:
        why = {errno.ENOTDIR: "a directory cannot be mounted on a file",
               errno.EISDIR: "a file cannot be mounted on a directory"}.get(e.errno, _why(e))
        raise OSError(f"cannot mount {what} on {bind.target}: {why}; choose another container path") from None
    if bind.readonly:
        # A remount keeps the flags the kernel locked on the source mount (nosuid, nodev...).
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        st = os.statvfs(dest)
        for bit, flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC)):
            if st.f_flag & bit:
                flags |= flag
        libc.mount(None, dest, None, flags)


def _why(e: OSError) -> str:
    return os.strerror(e.errno).lower() if e.errno else str(e)


def _restrict(path: str) -> None:
    """Add nosuid, nodev and noexec to the bind mount at PATH, as the container's own /proc
    and /dev/shm have them.  Its atime flags are kept: the kernel refuses to change them on a
    mount that came from a more privileged namespace."""
    st = os.statvfs(path)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC | (MS_RDONLY if st.f_flag & os.ST_RDONLY else 0)
    for bit, flag in ((os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21)):
        if st.f_flag & bit:
            flags |= flag
    libc.mount(None, path, None, flags)


def _mount_dev(root: str, ptmx_gid: int | None, extra: tuple[str, ...] = (), shm_size: int = 64 << 20,
               host_shm: bool = False) -> None:
    dev = _inside(root, "/dev")
    _ensure(root, dev, "dir")
    libc.mount("tmpfs", dev, "tmpfs", MS_NOSUID | libc.MS_STRICTATIME, "mode=755,size=65536k")
    for name in DEVICES:
        target = os.path.join(dev, name)
        _ensure(root, target, "file")
        libc.mount(f"/dev/{name}", target, None, MS_BIND)
    for source in extra:                 # --privileged: e.g. /dev/fuse, /dev/net/tun
        target = os.path.join(dev, os.path.relpath(source, "/dev"))
        if not os.path.lexists(target):
            _ensure(root, target, "file")
            libc.mount(source, target, None, MS_BIND)
    pts = os.path.join(dev, "pts")
    os.mkdir(pts, 0o755)
    opts = "newinstance,ptmxmode=0666,mode=0620" + (f",gid={ptmx_gid}" if ptmx_gid is not None else "")
    libc.mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, opts)
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    shm = os.path.join(dev, "shm")
    os.mkdir(shm, 0o1777)
    if host_shm:
        libc.mount("/dev/shm", shm, None, MS_BIND | MS_REC)
        _restrict(shm)
    else:
        libc.mount("shm", shm, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=1777,size={shm_size}")
    mqueue = os.path.join(dev, "mqueue")
    os.mkdir(mqueue, 0o755)
    try:
        libc.mount("mqueue", mqueue, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        os.rmdir(mqueue)  # optional: POSIX message queues are rarely used
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("core", "/proc/kcore")):
        os.symlink(target, os.path.join(dev, name))


def _mount_device(root: str, source: str, target: str) -> None:
    """--device: the host's node bound onto a file made at ``target`` (a user namespace may not
    mknod; the node keeps its host owner and mode, so access is what the host gives the user)."""
    try:
        dest = _inside(root, target)
        if os.path.islink(dest):
            os.unlink(dest)
        _ensure(root, dest, "file")
        libc.mount(source, dest, None, MS_BIND)
    except OSError as e:
        raise OSError(f"cannot give the container the device {source} at {target}: {_why(e)}") from None


def _run_hooks(hooks: tuple[Hook, ...]) -> None:
    """Run ``hooks`` in turn, as the OCI runtime spec runs createContainer hooks; an error names
    the first that fails.  This process's host pid: ``/proc`` is still the host's procfs here."""
    import json
    import subprocess
    pid = int(os.readlink("/proc/self"))
    for hook in hooks:
        state = json.loads(hook.state)
        state["pid"] = pid
        try:
            proc = subprocess.run(list(hook.args) or [hook.path], executable=hook.path, capture_output=True,
                                  input=json.dumps(state).encode(), timeout=hook.timeout, check=False,
                                  env=dict(e.partition("=")[::2] for e in hook.env))
        except subprocess.TimeoutExpired:
            raise OSError(f"the {hook.name} hook {hook.path} did not end within {hook.timeout} s") from None
        except OSError as e:
            raise OSError(f"cannot run the {hook.name} hook {hook.path}: {_why(e)}") from None
        if proc.returncode != 0:
            said = proc.stderr.decode(errors="replace").strip().splitlines()
            raise OSError(f"the {hook.name} hook {hook.path} failed with status {proc.returncode}"
                          + (f": {said[-1]}" if said else ""))


def _mask_paths(masked: tuple[str, ...], readonly: tuple[str, ...]) -> None:
    for path in masked:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            libc.mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
        else:
            libc.mount("/dev/null", path, None, MS_BIND)
    for path in readonly:
        if not os.path.exists(path):
            continue
        libc.mount(path, path, None, MS_BIND | MS_REC)
        libc.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
