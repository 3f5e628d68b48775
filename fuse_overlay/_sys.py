"""All ctypes use of fuse_overlay lives here.

Only the few system calls the standard library lacks are wrapped.  Every
wrapper raises ``OSError`` whose message names the call and the path.
"""
from __future__ import annotations

import ctypes
import os

MNT_DETACH = 2

_libc = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # the C library already loaded (as rootless/sandbox/libc.py): find_library("c") runs
        # ldconfig -p, a fork and exec per mount in a daemon forked by the fork server
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def umount2(path: str, flags: int = MNT_DETACH) -> None:
    """umount2(2) ``path``; raises OSError naming the call and path."""
    if _lib().umount2(os.fsencode(path), ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount2({path!r}): {os.strerror(err)}", path)


CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000


def setns(fd: int, nstype: int, what: str) -> None:
    """setns(2) into the namespace open at ``fd`` (``what`` names it in the error)."""
    if _lib().setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


def unshare(flags: int, what: str) -> None:
    """unshare(2) (``os.unshare`` is Python 3.12+)."""
    if _lib().unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({what}): {os.strerror(err)}")


def malloc_trim() -> None:
    """Return the C heap's free pages to the kernel (glibc); a no-op elsewhere."""
    try:
        _lib().malloc_trim(ctypes.c_size_t(0))
    except AttributeError:
        pass
