"""A container's root filesystem, prepared in the container's user and mount namespace.

Drivers (``--storage-driver``, or ``ROOTLESS_STORAGE_DRIVER``):

* ``overlay``: the kernel's overlayfs, mounted as root of the user namespace with the
  ``userxattr`` option (Linux 5.11+): the image's layers are the read-only lower dirs,
  shared by every container; ``upper/`` and ``work/`` are the container's own.
* ``vfs``: a private copy of the layers per container (``cp -a`` as root of the user
  namespace, so sub-id owners are kept) — slow and large, but works everywhere.
* ``fuse-overlay``: our pyfuse3 overlay filesystem (``fuse_overlay/``), serving the same
  lower/upper/work layout, with ``xattr_permissions`` in single-uid mode so that owners other
  than root can be kept.  The daemon is forked by the per-user fork server
  (``forkserver.py``) into the intermediate process's user and mount namespaces; it holds no
  reference to the mount, which ends (and the daemon with it) when the container's processes
  are gone.  Without the server, the intermediate process starts ``fuse-overlay -f`` itself,
  with a parent-death signal, and stays until the container ends to unmount and stop it
  (``daemon``).
* ``auto`` (default): per container, the fastest driver that shows the same files
  (``driver_order``).  The kernel's overlay when nothing needs translating: a subordinate id
  range (the layers were unpacked through the same id map as the container's), no
  ``--userns keep-id``, not a squashfs image.  fuse-overlay otherwise: in single-uid mode
  (owners other than root are kept in xattrs only fuse-overlay reads), with keep-id (it shows
  the image's owners through the container's map), for squashfs images (the kernel's overlay
  does not take a FUSE mount as a lower layer), for a store on a network filesystem, FUSE or
an overlay.  The kernel's mount is the probe: when it
  refuses (an old kernel, a store filesystem it does not take as an upper directory, a
  lowerdir list longer than mount(2)'s page, hundreds of layers), fuse-overlay serves instead and the reason is
  noted next to the driver (``driver_reason``).

``prepare`` runs in the intermediate process (see ``sandbox.container``), in the container's
new mount namespace; ``cleanup`` runs there too when the intermediate process stays (a daemon
of its own), else the mount simply ends with the container and ``--rm`` is done by the engine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil

from ..errors import UsageError
from ..sandbox import libc, overlay

DRIVERS = ("auto", "fuse-overlay", "overlay", "vfs")
# The kernel's overlay first where it shows what fuse-overlay would (scripts/bench: file-system work
# inside the container at its speed, fuse-overlay's several times slower); fuse-overlay where only it
# shows the right owners; the copy as the last resort.
KERNEL_FIRST = ("overlay", "fuse-overlay", "vfs")
FUSE_FIRST = ("fuse-overlay", "overlay", "vfs")


def store_unfit_for_kernel_overlay(fstype: str) -> str:
    """Why the kernel's overlay is not to take an upper directory on a filesystem of type
    ``fstype`` (mountinfo's), or "".  It refuses some outright and mounts others with warnings
    in the kernel log only (NFS: no whiteouts by rename, xattrs as the server allows) — and
    files then differ from what fuse-overlay shows."""
    from ..image.placement import NETWORK_FS
    if fstype in NETWORK_FS or fstype == "overlay" or fstype.startswith("fuse"):
        return (f"the store is on {NETWORK_FS.get(fstype, fstype)}, which the kernel's overlay does not take "
                "as an upper directory")
    return ""


def driver_order(driver: str, single_uid: bool, translated: bool, squashfs: bool,
                 store_fs: str = "") -> tuple[tuple[str, ...], str]:
    """The drivers ``prepare`` tries for one container, in order, and why the first one:
    ``driver`` as asked (``auto`` or one driver); ``single_uid``: no subordinate id range;
    ``translated``: the container's id map is not the one the layers were unpacked through
    (``--userns keep-id``); ``squashfs``: the lower layer is a squashfuse mount; ``store_fs``:
    the type of the store's filesystem ("": not looked at)."""
    if driver != "auto":
        return (driver,), f"--storage-driver {driver}"
    if single_uid:
        return FUSE_FIRST, ("single-uid mode: owners other than root are kept in xattrs, which only "
                            "fuse-overlay reads")
    if translated:
        return FUSE_FIRST, ("--userns keep-id: fuse-overlay shows the image's owners through the "
                            "container's id map")
    if squashfs:
        return FUSE_FIRST, "a squashfs image: the kernel's overlay does not take its FUSE mount as a lower layer"
    unfit = store_unfit_for_kernel_overlay(store_fs)
    if unfit:
        return FUSE_FIRST, unfit
    return KERNEL_FIRST, ("the layers were unpacked through the container's id map: the kernel's overlay "
                          "shows them as they are")


READY_TIMEOUT = 30.0


DRIVER_FILE = "driver"        # in the container's directory: the driver that mounted its root, and why


def record_driver(directory: str, driver: str, why: str = "") -> None:
    """Note which driver serves the container's root (``auto`` decides in the process that
    mounts it), and why (``auto``: why that one, or why the ones before it failed), for
    inspect and ps."""
    with contextlib.suppress(OSError):       # removed while it started: nothing to note
        with open(os.path.join(directory, DRIVER_FILE), "w") as f:
            f.write(f"{driver}\n{why}\n" if why else driver)


def _driver_file(directory: str) -> list[str]:
    try:
        with open(os.path.join(directory, DRIVER_FILE)) as f:
            return f.read().splitlines()
    except OSError:
        return []


def driver_of(directory: str) -> str | None:
    """The driver that mounted the container's root at its last start (None: never started,
    or started by a version that did not note it)."""
    lines = _driver_file(directory)
    return lines[0].strip() or None if lines else None


def driver_reason(directory: str) -> str:
    """Why that driver served at the last start ("" when not noted)."""
    return " ".join(ln.strip() for ln in _driver_file(directory)[1:]).strip()


class ContainerRootfs:
    """The root filesystem of one container under ``directory`` (the container's store dir)."""

    def __init__(self, layer_dirs: list[str], directory: str, driver: str, remove_after: bool,
                 single_uid: bool = False, fuse_server: str | None = None,
                 id_translation: tuple[str, str] | None = None, squashfs: bool = False):
        if driver not in DRIVERS:
            raise UsageError(f"unknown storage driver '{driver}': use one of {', '.join(DRIVERS)}")
        self.layer_dirs = layer_dirs            # bottom first
        self.directory = directory
        self.target = os.path.join(directory, "rootfs")
        self.driver = driver
        self.remove_after = remove_after
        self.used = ""                          # the driver that served (set by prepare)
        self.single_uid = single_uid
        self.daemon = 0                         # fuse-overlay's pid, when our child
        self.serving = 0                        # the pid serving the root filesystem (fuse-overlay)
        self.fuse_server = fuse_server          # socket of the per-user fork server
        # (uidmapping, gidmapping) for fuse-overlay when the container's user namespace maps
        # ids otherwise than the one the layers were unpacked in (--userns keep-id)
        self.id_translation = id_translation
        self.squashfs = squashfs                # the lower layer is a squashfuse mount

    def prepare(self) -> None:
        _subdir(self.target, 0o755)
        store_fs = ""
        if self.driver == "auto":
            from ..image.placement import mount_of
            store_fs = mount_of(self.directory)[0]
        order, why = driver_order(self.driver, self.single_uid, self.id_translation is not None, self.squashfs,
                                  store_fs)
        failed: list[str] = []
        for driver in order:
            try:
                {"fuse-overlay": self._mount_fuse, "overlay": self._mount_overlay, "vfs": self._copy}[driver]()
                self.used = driver
                if self.driver == "auto":
                    why = "; ".join(failed) + f"; so {driver}" if failed else why
                record_driver(self.directory, driver, why if self.driver == "auto" else "")
                if self.id_translation and driver != "fuse-overlay":
                    os.write(2, f"rootless: warning: with --storage-driver {driver}, the image's files show "
                                "owners shifted by --userns keep-id (root's as yours); fuse-overlay shows "
                                "them as in the image\n".encode())
                return
            except _Unavailable as e:
                if driver == order[-1]:
                    raise OSError(f"storage driver {driver} cannot work here: {e}") from None
                failed.append(f"{driver}: {e}")
            except _Refused as e:         # the kernel's overlay, tried first by auto
                failed.append(f"the kernel refused the overlay mount ({e})")
            except OSError as e:
                if driver == order[-1] or e.errno not in (errno.EINVAL, errno.EPERM, errno.ENODEV):
                    raise
                failed.append(f"{driver}: {e.strerror or e}")

    def _dirs(self) -> tuple[str, str, str]:
        upper, work = os.path.join(self.directory, "upper"), os.path.join(self.directory, "work")
        _subdir(upper, 0o755)
        _subdir(work, 0o700)
        return ":".join(reversed(self.layer_dirs)), upper, work  # overlays list the top layer first

    def _mount_fuse(self) -> None:
        import select
        import sys
        from ..sandbox.spawn import spawn
        exe = os.path.join(os.path.dirname(sys.executable), "fuse-overlay")
        if not os.path.exists(exe):
            exe = shutil.which("fuse-overlay") or ""
        if not exe or not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise _Unavailable("fuse-overlay is not installed, or /dev/fuse is missing or not usable by you")
        lower, upper, work = self._dirs()
        opts = f"lowerdir={lower.replace(',', chr(92) + ',')},upperdir={upper},workdir={work}"
        if self.single_uid:
            opts += ",xattr_permissions=2"
        if self.id_translation:
            opts += f",uidmapping={self.id_translation[0]},gidmapping={self.id_translation[1]}"
        if self.fuse_server:
            from . import forkserver
            try:
                self.serving = forkserver.mount(self.fuse_server, ["-f", "-o", f"{opts},notify_fd=@", self.target],
                                                 READY_TIMEOUT)
                return
            except forkserver.Unavailable:
                pass  # start a daemon of our own below
        r, w = os.pipe()
        try:
            self.daemon, err = spawn([exe, "-f", "-o", f"{opts},notify_fd={w}", self.target],
                                     pass_fds=(w,), die_with_parent=True)
            self.serving = self.daemon
        finally:
            os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], READY_TIMEOUT)
            if not ready or not os.read(r, 16).startswith(b"ready"):
                detail = _drain(err) if err is not None else ""
                self._stop_daemon()
                raise OSError(f"fuse-overlay did not mount the root filesystem: "
                              f"{detail or 'no answer within %.0f s' % READY_TIMEOUT}")
        finally:
            os.close(r)
            if err is not None:
                os.close(err)

    def _mount_overlay(self) -> None:
        _, upper, work = self._dirs()
        try:
            # the layers by their descriptors (sandbox/overlay.py): an image's 127 fit in mount(2)'s page
            overlay.mount(self.target, list(reversed(self.layer_dirs)), upper, work)
        except OSError as e:
            # What the kernel made in the work dir before it refused (work/work, work/index,
            # empty) goes: the next driver finds the directories as they were.
            for made in ("work", "index"):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(work, made))
            why = e.strerror if e.errno == errno.E2BIG else os.strerror(e.errno) if e.errno else str(e)
            if self.driver == "auto":
                raise _Refused(why) from None
            raise OSError(f"the kernel's overlay refused to mount the container's root ({why}): use "
                          "--storage-driver auto or fuse-overlay") from None

    def _copy(self) -> None:
        """Layer by layer, bottom first, applying each layer's whiteouts as an overlay would.

        Once: a restarted container keeps its copy, with its changes."""
        import subprocess
        done = os.path.join(self.directory, "rootfs.copied")
        if os.path.exists(done):
            return
        from ..image import whiteouts
        for layer in self.layer_dirs:
            found = whiteouts.in_tree(layer)
            for rel in found.hidden:  # what the layer deletes; removed first: cp cannot put a file over a directory
                _remove(os.path.join(self.target, rel))
            for rel in found.opaque:   # an opaque dir hides everything below it in lower layers
                target = os.path.join(self.target, rel)
                if os.path.isdir(target) and not os.path.islink(target):
                    for entry in os.listdir(target):
                        _remove(os.path.join(target, entry))
            proc = subprocess.run(["cp", "-a", "--reflink=auto", f"{layer}/.", self.target],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise OSError(f"copying the image into the container failed: {proc.stderr.strip()}")
            for rel in found.markers + found.hidden:  # the whiteouts and markers copied with the layer
                _remove(os.path.join(self.target, rel))
        open(done, "w").close()

    def _stop_daemon(self) -> None:
        """Wait for fuse-overlay to exit after the unmount; SIGTERM, then SIGKILL, if it lingers."""
        import signal
        from ..sandbox.spawn import stop
        if self.daemon:
            stop(self.daemon, ((None, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))
            self.daemon = 0

    def cleanup(self) -> None:
        if self.used in ("overlay", "fuse-overlay"):
            try:
                libc.umount2(self.target, libc.MNT_DETACH)
            except OSError:
                pass
        if self.used == "fuse-overlay":
            self._stop_daemon()
        if self.remove_after:
            for name in ("rootfs", "upper", "work"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    @staticmethod
    def changes_dir(directory: str) -> str:
        """Where a stopped container's own files are: the overlay's upper dir, or the copy."""
        upper = os.path.join(directory, "upper")
        return upper if os.path.isdir(upper) else os.path.join(directory, "rootfs")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Unavailable(Exception):
    """This driver cannot work on this host; ``auto`` tries the next."""


class _Refused(Exception):
    """The kernel refused ``auto``'s overlay mount, whatever the reason: fuse-overlay serves
    instead (its options reach it whole, and it takes any local filesystem)."""


def _drain(fd: int) -> str:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536).decode(errors="replace").strip()
    except BlockingIOError:
        return ""


def internal_errors(container_dir: str) -> list[str]:
    """What the container's fuse-overlay daemon recorded as internal errors (requests it
    answered with EIO because of a bug in it), one line each; [] for other drivers."""
    from fuse_overlay.mount import ERRORS_FILE
    try:
        with open(os.path.join(container_dir, "work", os.fsdecode(ERRORS_FILE)), errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _subdir(path: str, mode: int) -> None:
    """Make ``path`` in the container's directory, which must still exist: a container removed
    ('rm -f') while it starts must not have its directory made again (makedirs would)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"the container was removed while it started ({os.path.dirname(path)} "
                      "is gone)") from None
