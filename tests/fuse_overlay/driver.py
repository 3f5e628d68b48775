"""Test driver run inside a user + mount namespace (``unshare ... --mount``).

It builds lower layers from a JSON spec, mounts the kernel overlayfs (the
oracle, with ``userxattr``) and fuse-overlay on the same lowers with separate
upper/work dirs, then executes operations read as JSON lines on stdin against
both mounts and answers one JSON line per request: ``{"k": result, "f":
result}``, where result is ``{"ok": value}`` or ``{"err": "ENOENT"}``.

Requests: ``{"op": NAME, "args": [...]}``; see :data:`OPS`.  Special ops:
``snapshot`` (observations of the whole tree), ``remount``, ``quit``.
On quit, EOF or error everything is unmounted, the fuse daemon is stopped by
PID, and the base directory removed (from inside the namespace, so files
owned by subuids can be deleted).
"""
from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRIVATE = ("user.overlay.", "trusted.overlay.", "user.fuseoverlayfs.", "user.fuse_overlay.",
           "user.containers.")


def build_layer(root: str, entries: list[dict], oci: bool) -> None:
    """Create one lower layer.  With ``oci`` False, OCI whiteouts in the spec
    are translated to the kernel format (for the oracle)."""
    os.makedirs(root, exist_ok=True)
    links = []
    for e in entries:
        if e["type"] == "deep":
            build_deep(root, e, oci)
            continue
        p = os.path.join(root, e["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        t = e["type"]
        if t == "dir":
            os.makedirs(p, exist_ok=True)
        elif t == "file":
            with open(p, "wb") as f:
                data = e.get("data", "").encode()
                if e.get("sparse"):
                    f.truncate(e["sparse"])
                    f.seek(e["sparse"] // 2)
                f.write(data)
        elif t == "symlink":
            os.symlink(e["target"], p)
        elif t == "fifo":
            os.mkfifo(p)
        elif t == "hardlink":
            links.append((os.path.join(root, e["target"]), p))
            continue
        elif t == "whiteout":
            if oci:
                d, n = os.path.split(p)
                open(os.path.join(d, ".wh." + n), "wb").close()
            else:
                os.mknod(p, stat.S_IFCHR, os.makedev(0, 0))
            continue
        elif t == "opaque":
            os.makedirs(p, exist_ok=True)
            if oci and e.get("style") == "marker":
                open(os.path.join(p, ".wh..wh..opq"), "wb").close()
            else:
                os.setxattr(p, "user.overlay.opaque", b"y")
            continue
        if "mode" in e and t != "symlink":
            os.chmod(p, e["mode"])
        for k, v in e.get("xattrs", {}).items():
            os.setxattr(p, k, v.encode(), follow_symlinks=False)
        if "uid" in e or "gid" in e:
            try:
                os.lchown(p, e.get("uid", 0), e.get("gid", 0))
            except OSError as err:  # single-uid namespace: owner not mapped
                if err.errno != errno.EINVAL:
                    raise
    for target, p in links:
        os.link(target, p)


def deep_name(i: int, namelen: int) -> str:
    """The name of level ``i`` of a deep tree: ``namelen`` bytes."""
    return ("d%02d-" % i).ljust(namelen, "x")


def build_deep(root: str, e: dict, oci: bool) -> None:
    """``{"type": "deep", "path": TOP, "levels": N, "namelen": L, "entries": [...]}``: a chain
    of N directories of L-byte names under TOP, built one level at a time (chdir) because the
    whole path is longer than PATH_MAX; ``entries`` (files, symlinks, dirs, whiteouts, one
    component each) are created at the bottom."""
    here = os.open(".", os.O_PATH)
    try:
        os.makedirs(os.path.join(root, e["path"]), exist_ok=True)
        os.chdir(os.path.join(root, e["path"]))
        for i in range(e["levels"]):
            name = deep_name(i, e["namelen"])
            os.makedirs(name, exist_ok=True)
            os.chdir(name)
        for sub in e["entries"]:
            t, n = sub["type"], sub["path"]
            if t == "file":
                with open(n, "wb") as f:
                    f.write(sub.get("data", "").encode())
            elif t == "dir":
                os.mkdir(n)
            elif t == "symlink":
                os.symlink(sub["target"], n)
            elif t == "whiteout":
                if oci:
                    open(".wh." + n, "wb").close()
                else:
                    os.mknod(n, stat.S_IFCHR, os.makedev(0, 0))
            for k, v in sub.get("xattrs", {}).items():
                os.setxattr(n, k, v.encode(), follow_symlinks=False)
    finally:
        os.fchdir(here)
        os.close(here)


def observe_at(dirfd: int, name: str) -> dict:
    """What a process sees of ``name`` in the directory open at ``dirfd`` (any depth)."""
    st = os.lstat(name, dir_fd=dirfd)
    o: dict = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
               "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink}
    if stat.S_ISREG(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dirfd)
        with os.fdopen(fd, "rb") as f:
            o["sha"] = hashlib.sha1(f.read()).hexdigest()[:12]
        o["size"] = st.st_size
    elif stat.S_ISLNK(st.st_mode):
        o["target"] = os.readlink(name, dir_fd=dirfd)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        o["rdev"] = st.st_rdev
    path = f"/proc/self/fd/{dirfd}/{name}"      # no *at call for xattrs: a short path
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        names = []
    xs = {}
    for n in sorted(names):
        if n.startswith(PRIVATE):
            continue
        try:
            xs[n] = os.getxattr(path, n, follow_symlinks=False).decode("latin1")
        except OSError as e:
            xs[n] = "E" + errno.errorcode.get(e.errno, str(e.errno))
    if xs:
        o["xattrs"] = xs
    return o


def observe_path(path: str) -> dict:
    """What a process sees of ``path``: type, mode, owners, links, content digest, xattrs."""
    path = os.path.abspath(path)
    dirfd = os.open(os.path.dirname(path) or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return observe_at(dirfd, os.path.basename(path) or ".")
    finally:
        os.close(dirfd)


def snapshot(root: str) -> dict:
    """Observations of every object under ``root``, walked with directory fds so that trees
    deeper than PATH_MAX are seen whole; an error is recorded as what was seen."""
    out: dict = {}

    def walk(dirfd: int, rel: str) -> None:
        try:
            names = sorted(os.listdir(dirfd))
        except OSError as e:
            out[(rel or ".") + " (listing)"] = {"err": errno.errorcode.get(e.errno, str(e.errno))}
            return
        for n in names:
            p = os.path.join(rel, n)
            try:
                out[p] = observe_at(dirfd, n)
            except FileNotFoundError:
                # Kernel quirk: a whiteout with nothing below it, in a
                # directory that is not merged, is listed but cannot be
                # looked up.  fuse-overlay does not list it; compare what
                # can be reached.
                continue
            except OSError as e:       # shown, to be compared
                out[p] = {"err": errno.errorcode.get(e.errno, str(e.errno))}
                continue
            if out[p]["type"] == stat.S_IFDIR:
                try:
                    fd = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
                except OSError as e:
                    out[p + " (open)"] = {"err": errno.errorcode.get(e.errno, str(e.errno))}
                    continue
                try:
                    walk(fd, p)
                finally:
                    os.close(fd)

    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk(top, "")
    finally:
        os.close(top)
    out["."] = observe_path(root)
    del out["."]["nlink"]   # root link count: both report real counts, but differ in merging
    return out


# ------------------------------------------------------------------ ops

# O_NONBLOCK everywhere: opening a fifo must not wait for a partner.
NB = os.O_NONBLOCK


def op_read(m, path):
    fd = os.open(os.path.join(m, path), os.O_RDONLY | NB)
    try:
        out = b""
        while True:
            chunk = os.read(fd, 1 << 16)     # EISDIR for a directory
            if not chunk:
                return out.decode("latin1")
            out += chunk
    finally:
        os.close(fd)


def op_write(m, path, data, how="w"):
    flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
             "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL, "r+": os.O_RDWR}[how]
    fd = os.open(os.path.join(m, path), flags | NB, 0o644)
    try:
        return os.write(fd, data.encode())
    finally:
        os.close(fd)


def op_pwrite(m, path, off, data):
    fd = os.open(os.path.join(m, path), os.O_WRONLY | NB)
    try:
        return os.pwrite(fd, data.encode(), off)
    finally:
        os.close(fd)


def op_truncate(m, path, size):
    os.truncate(os.path.join(m, path), size)


def op_rename(m, a, b):
    os.rename(os.path.join(m, a), os.path.join(m, b))


def op_unlink(m, path):
    os.unlink(os.path.join(m, path))


def op_mkdir(m, path, mode=0o755):
    os.mkdir(os.path.join(m, path), mode)


def op_rmdir(m, path):
    os.rmdir(os.path.join(m, path))


def op_link(m, a, b):
    os.link(os.path.join(m, a), os.path.join(m, b))


def op_symlink(m, target, path):
    os.symlink(target, os.path.join(m, path))


def op_chmod(m, path, mode):
    os.chmod(os.path.join(m, path), mode)


def op_chown(m, path, uid, gid):
    os.lchown(os.path.join(m, path), uid, gid)


def op_setxattr(m, path, name, value):
    os.setxattr(os.path.join(m, path), name, value.encode(), follow_symlinks=False)


def op_removexattr(m, path, name):
    os.removexattr(os.path.join(m, path), name, follow_symlinks=False)


def op_getxattr(m, path, name):
    return os.getxattr(os.path.join(m, path), name, follow_symlinks=False).decode("latin1")


def op_mkfifo(m, path):
    os.mkfifo(os.path.join(m, path))


def op_mknod(m, path, mode, major, minor):
    os.mknod(os.path.join(m, path), mode, os.makedev(major, minor))


def op_mmap_write(m, path, off, data):
    fd = os.open(os.path.join(m, path), os.O_RDWR | NB)
    try:
        size = os.fstat(fd).st_size
        if size < off + len(data):
            os.ftruncate(fd, off + len(data))
        mm = mmap.mmap(fd, off + len(data), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[off:off + len(data)] = data.encode()
        mm.flush()
        mm.close()
    finally:
        os.close(fd)


def op_listdir(m, path):
    return sorted(os.listdir(os.path.join(m, path)))


def op_stat(m, path):
    return observe_path(os.path.join(m, path))


def op_utime(m, path, atime, mtime):
    os.utime(os.path.join(m, path), (atime, mtime), follow_symlinks=False)
    st = os.lstat(os.path.join(m, path))
    return [int(st.st_atime), int(st.st_mtime)]


def op_raw_upper_xattr(m, path, name):
    """An xattr of the object in the upper dir behind mount ``m``."""
    up = m[:-1] + "u"
    return os.getxattr(os.path.join(up, path), name, follow_symlinks=False).decode()


def op_mtime(m, path):
    return os.lstat(os.path.join(m, path)).st_mtime_ns


def op_sh(m, cmd):
    p = subprocess.run(["sh", "-c", cmd], cwd=m, capture_output=True, timeout=120)
    return [p.returncode, p.stdout.decode("latin1")]


def op_open_unlink_rw(m, path, data):
    """open, unlink, write, fstat, read back through the same fd."""
    fd = os.open(os.path.join(m, path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.unlink(os.path.join(m, path))
        os.write(fd, data.encode())
        st = os.fstat(fd)
        return [st.st_size, st.st_nlink, os.pread(fd, 100, 0).decode()]
    finally:
        os.close(fd)


def op_unlinked_open_file(m, path, writable):
    """Open an existing file, unlink it, then use it only through the fd and /proc/self/fd:
    what dpkg and apt do with their temporary files."""
    import mmap as mmap_mod
    out = {}
    full = os.path.join(m, path)
    fd = os.open(full, os.O_RDWR if writable else os.O_RDONLY)
    try:
        os.unlink(full)
        out["fstat_nlink"] = os.fstat(fd).st_nlink
        re = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        try:
            out["reopen_read"] = os.pread(re, 100, 0).decode()
        finally:
            os.close(re)
        out["listxattr"] = sorted(n for n in os.listxattr(fd) if n.startswith("user."))
        if writable:
            os.pwrite(fd, b"written", 0)
            os.ftruncate(fd, 5)
            os.fchmod(fd, 0o640)
            os.fchown(fd, 0, 0)
            os.setxattr(fd, "user.t", b"v")
            out["getxattr"] = os.getxattr(fd, "user.t").decode()
            mm = mmap_mod.mmap(fd, 5)
            mm[0:1] = b"W"
            mm.flush()
            mm.close()
            st = os.fstat(fd)
            out["after"] = [st.st_size, oct(st.st_mode), st.st_nlink, os.pread(fd, 10, 0).decode()]
            rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
            try:
                os.pwrite(rw, b"X", 1)
            finally:
                os.close(rw)
            out["reopen_write"] = os.pread(fd, 10, 0).decode()
    finally:
        os.close(fd)
    return out


def op_ino_equal(m, a, b):
    return os.lstat(os.path.join(m, a)).st_ino == os.lstat(os.path.join(m, b)).st_ino


def op_ino(m, path):
    return os.lstat(os.path.join(m, path)).st_ino


def op_rw_old_fd(m, path, data):
    """Open read-only, then append through a second fd: the first fd must
    see the new data (overlay copies up under it)."""
    p = os.path.join(m, path)
    r = os.open(p, os.O_RDONLY)
    try:
        with open(p, "ab") as f:
            f.write(data.encode())
        return os.pread(r, 1 << 16, 0).decode("latin1")
    finally:
        os.close(r)


def op_deep(m, top, levels, namelen, steps):
    """Walk down (chdir, creating missing levels with mkdir) ``levels`` directories of
    ``namelen``-byte names under ``top``, then run ``steps`` there, each ``[op, args...]``
    with paths relative to that directory: the whole path from the mount's root is longer
    than PATH_MAX.  Returns each step's result or error name."""
    here = os.open(".", os.O_PATH)
    out = []
    try:
        os.chdir(os.path.join(m, top))
        for i in range(levels):
            name = deep_name(i, namelen)
            try:
                os.mkdir(name)
            except FileExistsError:
                pass
            os.chdir(name)
        for step in steps:
            op, args = step[0], step[1:]
            try:
                out.append({"ok": OPS[op](".", *args)})
            except OSError as e:
                out.append({"err": errno.errorcode.get(e.errno, str(e.errno))})
    finally:
        os.fchdir(here)
        os.close(here)
    return out


OPS = {k[3:]: v for k, v in globals().items() if k.startswith("op_")}


class Pair:
    def __init__(self, base: str, spec: dict) -> None:
        self.base = base
        self.spec = spec
        self.daemon: subprocess.Popen | None = None
        nlayers = len(spec["layers"])
        self.lowers_f, self.lowers_k = [], []
        for i, entries in enumerate(spec["layers"]):
            lf, lk = f"{base}/lf{i}", f"{base}/lk{i}"
            build_layer(lf, entries, oci=True)
            build_layer(lk, entries, oci=False)
            self.lowers_f.append(lf)
            self.lowers_k.append(lk)
        assert nlayers >= 1
        for side in "kf":
            for d in ("u", "w", "m"):
                os.makedirs(f"{base}/{side}{d}", exist_ok=True)
        self.fuse_opts = spec.get("fuse_opts", "")
        self.kernel = spec.get("kernel", True)

    def mount(self) -> None:
        b = self.base
        if self.kernel:
            opts = "lowerdir=%s,upperdir=%s/ku,workdir=%s/kw,userxattr" % (":".join(self.lowers_k), b, b)
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, f"{b}/km"], check=True,
                           timeout=30)
        r, w = os.pipe()
        opts = "lowerdir=%s,upperdir=%s/fu,workdir=%s/fw,notify_fd=%d" % (":".join(self.lowers_f), b, b, w)
        if self.fuse_opts:
            opts += "," + self.fuse_opts
        env = dict(os.environ, PYTHONPATH=REPO)
        self.daemon = subprocess.Popen([sys.executable, "-m", "fuse_overlay.cli", "-f", "-o", opts,
                                        f"{b}/fm"], pass_fds=(w,), env=env)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            line = f.readline()
        if line != b"ready\n":
            raise RuntimeError("fuse-overlay did not become ready")

    def umount(self) -> None:
        b = self.base
        if self.kernel:
            if subprocess.run(["umount", f"{b}/km"], timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", f"{b}/km"], timeout=30)
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(timeout=10)
                subprocess.run(["umount", "-l", f"{b}/fm"], timeout=30)
            self.daemon = None

    def mounts(self):
        out = {"f": f"{self.base}/fm"}
        if self.kernel:
            out["k"] = f"{self.base}/km"
        return out

    def run(self, op: str, args: list) -> dict:
        if op == "snapshot":
            return {s: {"ok": snapshot(m)} for s, m in self.mounts().items()}
        if op == "remount":
            self.umount()
            self.mount()
            return {s: {"ok": None} for s in self.mounts()}
        if op == "swap_uppers":
            # The kernel overlay takes over the upper directory fuse-overlay wrote and the
            # other way round (each keeps its own lowers and workdir): one on-disk format.
            self.umount()
            b = self.base
            os.rename(f"{b}/ku", f"{b}/swap")
            os.rename(f"{b}/fu", f"{b}/ku")
            os.rename(f"{b}/swap", f"{b}/fu")
            self.mount()
            return {s: {"ok": None} for s in self.mounts()}
        if op == "upper_listing":
            out = {}
            for s in self.mounts():
                up = f"{self.base}/{s}u"
                out[s] = {"ok": {os.path.relpath(os.path.join(d, n), up): observe_path(os.path.join(d, n))
                                 for d, ds, fs in os.walk(up) for n in ds + fs}}
            return out
        if op == "kill_daemon":
            assert self.daemon is not None
            self.daemon.kill()
            self.daemon.wait(timeout=10)
            self.daemon = None
            try:
                os.stat(f"{self.base}/fm")
                return {"f": {"ok": "no error"}}
            except OSError as e:
                return {"f": {"err": errno.errorcode.get(e.errno, str(e.errno))}}
        if op == "mount_fuse_only":
            # Remount only the fuse side (after kill_daemon): it must recover.
            k, self.kernel = self.kernel, False
            try:
                self.mount()
            finally:
                self.kernel = k
            return {"f": {"ok": None}}
        fn = OPS[op]
        out = {}
        for side, m in self.mounts().items():
            try:
                out[side] = {"ok": fn(m, *args)}
            except OSError as e:
                out[side] = {"err": errno.errorcode.get(e.errno, str(e.errno))}
        return out


def main() -> None:
    base = sys.argv[1]
    spec = json.loads(sys.stdin.readline())
    pair = Pair(base, spec)
    try:
        pair.mount()
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            if req["op"] == "quit":
                break
            try:
                res = pair.run(req["op"], req.get("args", []))
            except Exception as e:  # report, keep serving
                import traceback
                res = {"driver_error": repr(e) + " at " + "".join(traceback.format_tb(e.__traceback__)[-2:])}
            print(json.dumps(res), flush=True)
    finally:
        pair.umount()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
