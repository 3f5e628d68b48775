"""Mounting, readiness, daemonizing and clean shutdown.

:func:`serve` mounts (pyfuse3.init, which calls mount(2) directly when the
process is root in its user namespace and falls back to fusermount3
otherwise), reports readiness, runs the FUSE loop until SIGTERM/SIGINT/SIGHUP
or an external unmount, then unmounts.  Readiness is reported by writing
``ready\\n`` to the notify fd and closing it; on failure the fd is closed
without data (the reader sees EOF) and the error goes to stderr.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable


WORK_SUBDIR = b"fuse-overlay.work"
ERRORS_FILE = b"fuse-overlay.errors"     # in the workdir: one line per internal error

# Called with the mount point once mounted, before readiness is reported (the server
# uses it to stop holding the mount; see server.py).
after_mount: Callable[[str], None] | None = None


class MountError(Exception):
    """A problem that stops the mount; its message is a sentence for users."""


def prepare_workdir(workdir: bytes) -> bytes:
    """Create ``workdir/fuse-overlay.work`` and empty it of leftovers from a
    previous daemon (half-done copy-ups).  Returns its path."""
    from .copyup import remove_tree
    work = workdir + b"/" + WORK_SUBDIR
    try:
        os.mkdir(work, 0o700)
    except FileExistsError:
        for name in os.listdir(work):
            remove_tree(work + b"/" + name)
    except OSError as e:
        raise MountError(f"cannot create work directory {os.fsdecode(work)}: {e.strerror}") from None
    return work


def clear_stale_mount(mountpoint: str) -> None:
    """Detach a dead FUSE mount (ENOTCONN) left at ``mountpoint`` by a daemon
    that died, so the same directories can be mounted again."""
    try:
        os.stat(mountpoint)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
        try:
            from . import _sys      # ctypes: imported only when needed (start-up time)
            _sys.umount2(mountpoint, _sys.MNT_DETACH)
        except OSError as e2:
            raise MountError(f"{mountpoint} has a dead FUSE mount that cannot be detached: "
                             f"{e2.strerror}") from None


def _in_initial_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def fuse_options(read_only: bool, fsname: str) -> set[str]:
    opts = {"default_permissions", f"fsname={fsname}", "subtype=fuse-overlay", "noatime"}
    # Every uid of the container must reach the files, not only the mounting one: as root, or
    # in a user namespace of our own (mount(2) directly, no fusermount and its fuse.conf) —
    # with --userns keep-id the daemon is the user's uid there, not root.
    if os.geteuid() == 0 or not _in_initial_user_namespace():
        opts.add("allow_other")
    if read_only:
        opts.add("ro")
    return opts


def serve(ops: object, mountpoint: str, options: set[str], ready: Callable[[], None],
          spin_us: int | None = None) -> int:
    """Mount ``ops`` at ``mountpoint``, call ``ready()``, serve until told to
    stop, unmount.  Returns the exit status."""
    from . import loop
    pyfuse3 = loop.import_pyfuse3()

    clear_stale_mount(mountpoint)
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as e:
        raise MountError(f"cannot mount on {mountpoint}: {e}") from None
    setattr(ops, "kernel_notify", True)
    if after_mount is not None:
        try:
            after_mount(mountpoint)
        except OSError as e:
            pyfuse3.close(unmount=True)
            raise MountError(f"cannot detach from the mount namespace: {e}") from None
    ready()
    _release_free_memory()

    loop.install(loop.SPIN_US if spin_us is None else spin_us)

    async def main() -> None:
        loop.stop_on_signals()
        await pyfuse3.main(**loop.MAIN_ARGS)

    status = 0
    try:
        loop.run(main)
    except BaseException as e:  # the loop failed: still unmount
        print(f"fuse-overlay: main loop ended with an error: {e!r}", file=sys.stderr)
        status = 1
    finally:
        pyfuse3.close(unmount=True)
    return status


def _release_free_memory() -> None:
    """The daemon idles from here on in most containers: give back what the start freed."""
    import gc
    gc.collect()
    from . import _sys
    _sys.malloc_trim()


def notify(fd: int | None) -> None:
    """Write the readiness line to ``fd`` and close it.  Never raises."""
    if fd is None:
        return
    try:
        os.write(fd, b"ready\n")
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


def daemonize() -> tuple[int, int]:
    """Fork; the parent waits for the child's readiness and exits.

    Returns (write end of the status pipe, ) in the child.  The parent exits
    0 once the child wrote a byte, 1 (with the child's message already on
    stderr) if the pipe closed without one."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        data = b""
        while True:
            chunk = os.read(r, 64)
            if not chunk:
                break
            data += chunk
        os._exit(0 if data.startswith(b"ready") else 1)
    os.close(r)
    os.setsid()
    return w, os.getpid()


def detach_stdio() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
