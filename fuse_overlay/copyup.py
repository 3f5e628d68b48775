"""Copy-up: build the upper copy of a lower object in the work directory.

The functions here are synchronous and touch only the source (read) and a
temporary name in the work directory (write); the caller renames the result
into the upper layer, which makes copy-up atomic.  On any error the
temporary object is removed and the OSError propagates, naming the call and
path.  Regular files are copied with holes kept (SEEK_DATA/SEEK_HOLE +
copy_file_range, falling back to read/write); ownership, mode, xattrs (except
overlay-private ones) and timestamps are preserved.
"""
from __future__ import annotations

import errno
import os
import stat as stat_mod

from .layers import NOCOPY_XATTR_PREFIXES

INO_XATTR = b"user.fuse_overlay.ino"
_CHUNK = 1 << 20


def _named(e: OSError, call: str, path: bytes) -> OSError:
    return OSError(e.errno, f"{call}({os.fsdecode(path)!r}): {e.strerror}", os.fsdecode(path))


def copy_xattrs(src: bytes, dst: bytes | int, follow: bool = False) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise _named(e, "listxattr", src)
    for name in names:
        bname = os.fsencode(name)
        if bname.startswith(NOCOPY_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(src, bname, follow_symlinks=follow)
            if isinstance(dst, int):
                os.setxattr(dst, bname, value)
            else:
                os.setxattr(dst, bname, value, follow_symlinks=False)
        except OSError as e:
            # trusted.*/security.* may be unwritable in a user namespace.
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.ENODATA):
                continue
            raise _named(e, "setxattr", src)


def _copy_data(fin: int, fout: int, size: int) -> None:
    off = 0
    while off < size:
        try:
            data = os.lseek(fin, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        hole = os.lseek(fin, data, os.SEEK_HOLE)
        pos = data
        while pos < hole:
            n = 0
            try:
                n = os.copy_file_range(fin, fout, min(hole - pos, 1 << 30), pos, pos)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
            if n <= 0:
                buf = os.pread(fin, min(_CHUNK, hole - pos), pos)
                if not buf:
                    break
                n = os.pwrite(fout, buf, pos)
            pos += n
        off = hole
    os.ftruncate(fout, size)


def copy_up(src: bytes, tmp: bytes, st: os.stat_result, ino: int | None, data: bool = True) -> None:
    """Create at ``tmp`` a copy of ``src`` (whose lstat is ``st``).

    Directories are copied without their entries; with ``data`` False a
    regular file is copied empty (it is about to be truncated).  ``ino`` (if
    given) is stored in the ``user.fuse_overlay.ino`` xattr so that the
    object keeps its inode number."""
    mode = st.st_mode
    try:
        if stat_mod.S_ISREG(mode):
            fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    if data:
                        _copy_data(fin, fout, st.st_size)
                    os.fchown(fout, st.st_uid, st.st_gid)
                    os.fchmod(fout, stat_mod.S_IMODE(mode))
                    copy_xattrs(src, fout)
                    if ino is not None:
                        os.setxattr(fout, INO_XATTR, b"%d" % ino)
                    os.utime(fout, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(fout)
            finally:
                os.close(fin)
            return
        if stat_mod.S_ISDIR(mode):
            os.mkdir(tmp, 0o700)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, stat_mod.S_IMODE(mode))
            copy_xattrs(src, tmp)
            if ino is not None:
                os.setxattr(tmp, INO_XATTR, b"%d" % ino)
        elif stat_mod.S_ISLNK(mode):
            os.symlink(os.readlink(src), tmp)
            os.lchown(tmp, st.st_uid, st.st_gid)
            copy_xattrs(src, tmp)
        else:
            os.mknod(tmp, mode, st.st_rdev)
            os.lchown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, stat_mod.S_IMODE(mode))
            copy_xattrs(src, tmp)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    except OSError as e:
        remove_tree(tmp)
        if e.filename is None:
            raise _named(e, "copy-up", src) from None
        raise


def remove_tree(path: bytes) -> None:
    """Remove ``path`` whatever it is; missing is fine.  Never raises."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    try:
        if stat_mod.S_ISDIR(st.st_mode):
            import shutil       # rarely needed: not at start-up
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
