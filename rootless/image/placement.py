"""Where the store may live: a network or cluster filesystem is found out before it fails halfway.

The store needs, of its filesystem: file locks (flock(2): the store's and each container's
lock), user xattrs (whiteouts and opaque directories of the overlays, owners in single-uid
mode) and, with a subordinate id range, files given to sub-ids (lchown as root of the user
namespace: an NFS server refuses it, whatever the client's namespace).  NFS, Lustre, GPFS, CIFS
and 9p refuse one or more of them, depending on the server and its mount options.

``check(root)`` runs when a store is opened (``Store.__init__``).  On a local filesystem it
costs one read of /proc/self/mountinfo.  On a network filesystem it tries each thing once, in
``ROOT/tmp``, and records success in ``ROOT/placement`` (filesystem type and device), so that
a store that works there is probed again only if it moves; a failure is a ``StoreError`` that
names the filesystem, what it refused and the fix: a local directory in storage.conf, --root
or ROOTLESS_ROOT.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import StoreError

# mountinfo's filesystem types that are shared over a network, as users know them
NETWORK_FS = {
    "nfs": "NFS", "nfs4": "NFS", "lustre": "Lustre", "gpfs": "GPFS (IBM Storage Scale)",
    "cifs": "CIFS/SMB", "smb3": "SMB", "smbfs": "SMB", "9p": "9p", "beegfs": "BeeGFS",
    "ceph": "CephFS", "afs": "AFS", "panfs": "PanFS", "fuse.sshfs": "sshfs", "glusterfs": "GlusterFS",
    "fuse.glusterfs": "GlusterFS", "fuse.gcsfuse": "gcsfuse", "wekafs": "WekaFS", "fuse.beegfs": "BeeGFS",
}
MARKER = "placement"
LOCAL_CANDIDATES = ("$TMPDIR", "/tmp", "/var/tmp")


def mount_of(path: str) -> tuple[str, str]:
    """(filesystem type, mount point) of ``path``, or of its nearest existing parent."""
    path = os.path.realpath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    dev = os.stat(path).st_dev
    want = f"{os.major(dev)}:{os.minor(dev)}"
    found = ("", "")
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 10 or fields[2] != want:
                    continue
                sep = fields.index("-")
                point = fields[4].replace("\\040", " ")
                # bind mounts share the device: keep the one that holds the path (the longest)
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(found[1]):
                    found = (fields[sep + 1], point)
                elif not found[0]:
                    found = (fields[sep + 1], point)
    except OSError:
        pass
    return found


def check(root: str) -> None:
    """Refuse a store on a filesystem that lacks what the store needs (see the module)."""
    fstype, point = mount_of(root)
    if fstype not in NETWORK_FS:
        return
    stamp = f"{fstype} {os.stat(root).st_dev}\n"
    marker = os.path.join(root, MARKER)
    try:
        with open(marker) as f:
            if f.read() == stamp:
                return
    except OSError:
        pass
    failures = probe(root)
    if failures:
        raise StoreError(explain(root, fstype, point, failures))
    try:
        with open(marker, "w") as f:
            f.write(stamp)
    except OSError:
        pass


def probe(root: str, single: bool | None = None) -> list[str]:
    """What the store needs that the filesystem of ``root`` refuses, in words; [] if nothing.
    ``single``: no sub-ids to try (default: as ``idmap.detect`` finds)."""
    tmp = os.path.join(root, "tmp")
    os.makedirs(tmp, mode=0o700, exist_ok=True)
    path = os.path.join(tmp, f".probe-{os.getpid()}")
    failures = []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as e:
            failures.append(f"file locks (flock: {_why(e)})")
        try:
            os.setxattr(path, "user.rootless.probe", b"1")
        except OSError as e:
            failures.append(f"user xattrs (setxattr user.*: {_why(e)})")
        from ..sandbox import idmap
        maps = idmap.detect()
        if not (maps.single if single is None else single):
            failures += _chown_to_subid(maps, path)
    finally:
        os.close(fd)
        _unlink(path)
    return failures


def _chown_to_subid(maps, path: str) -> list[str]:
    from ..sandbox import channel
    from ..sandbox.userns import run_as_root
    try:
        run_as_root(maps, lambda: os.lchown(path, 1, 1), name="rootless-probe")
    except channel.ChildError as e:
        return [f"files owned by your subordinate ids (lchown as root of the user namespace: {e})"]
    return []


def _why(e: OSError) -> str:
    return (os.strerror(e.errno) if e.errno else str(e)).lower() + (
        " (mounted without -o flock?)" if e.errno in (errno.ENOSYS, errno.ENOLCK) else "")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def local_suggestion() -> str:
    """A node-local directory for the store: under $TMPDIR, /tmp or /var/tmp, the first on a
    local filesystem that we may write in (as storage.conf would spell it)."""
    for cand in LOCAL_CANDIDATES:
        real = os.environ.get("TMPDIR", "") if cand == "$TMPDIR" else cand
        if not real or not os.path.isdir(real) or not os.access(real, os.W_OK | os.X_OK):
            continue
        if mount_of(real)[0] not in NETWORK_FS:
            return f"{cand}/$USER/rootless"
    return "/tmp/$USER/rootless"


def explain(root: str, fstype: str, point: str, failures: list[str]) -> str:
    from ..paths import config_file, expand
    name = NETWORK_FS.get(fstype, fstype)
    spelled = local_suggestion()
    concrete = expand(spelled, "the suggestion")
    return (f"the store {root} is on {name} ({fstype} mounted at {point}), which refuses what the store "
            f"needs: {'; '.join(failures)}. Put the store on a node-local filesystem: add "
            f"'[storage]' and 'root = \"{spelled}\"' to {config_file()}, or give --root {concrete} "
            "(or ROOTLESS_ROOT); a squashfs image on the shared filesystem runs without a copy "
            "('rootless save --format squashfs', see docs/hpc.md)")


__all__ = ["NETWORK_FS", "mount_of", "check", "probe", "explain", "local_suggestion"]
