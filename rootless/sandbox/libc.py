"""Every ctypes call the sandbox makes, in one place.

libc is loaded once with ``use_errno=True``; each wrapper turns a failure into an
``OSError`` whose message names the system call and its argument, so that a
user reading an error sees e.g. ``mount proc on /x/proc: Operation not permitted``.
"""

from __future__ import annotations

import ctypes
import errno
import os


_libc = ctypes.CDLL(None, use_errno=True)

# clone(2) / unshare(2) flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}
_SYS_CLOSE_RANGE = 436     # the same number on every architecture (added after the unification)
KEYCTL_JOIN_SESSION_KEYRING = 1
CLOSE_RANGE_CLOEXEC = 1 << 2

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _fail(call: str, what: str | None = None) -> OSError:
    err = ctypes.get_errno()
    text = f"{call} {what}" if what else call
    return OSError(err, f"{text}: {os.strerror(err)}")


def _b(s: str | bytes | None) -> bytes | None:
    if s is None or isinstance(s, bytes):
        return s
    return os.fsencode(s)


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise _fail("unshare", hex(flags))


def setns(fd: int, nstype: int = 0) -> None:
    if _libc.setns(fd, nstype) != 0:
        raise _fail("setns", f"fd {fd}")


# ioctl_ns(2)
NS_GET_USERNS = 0xB701
NS_GET_PARENT = 0xB702


def ns_ioctl(fd: int, request: int) -> int:
    """``NS_GET_USERNS`` (the user namespace owning namespace ``fd``) or ``NS_GET_PARENT`` (the
    parent of user namespace ``fd``): a new close-on-exec fd of that namespace."""
    import fcntl
    try:
        return fcntl.ioctl(fd, request)
    except OSError as e:
        name = "NS_GET_USERNS" if request == NS_GET_USERNS else "NS_GET_PARENT"
        raise OSError(e.errno, f"ioctl {name}: {e.strerror}") from None


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        kind = fstype or ("bind" if flags & MS_BIND else "remount" if flags & MS_REMOUNT else "propagation")
        raise _fail("mount", f"{kind} {source or ''} on {target}".replace("  ", " "))


def umount2(target: str, flags: int = 0) -> None:
    if _libc.umount2(_b(target), flags) != 0:
        raise _fail("umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {os.uname().machine}")
    if _libc.syscall(nr, _b(new_root), _b(put_old)) != 0:
        raise _fail("pivot_root", new_root)


def join_session_keyring(name: str | None = None) -> int:
    """``keyctl(KEYCTL_JOIN_SESSION_KEYRING, name)``: a new session keyring (anonymous when
    ``name`` is None), so that a container never sees or changes the caller's keys."""
    nr = _SYS_KEYCTL.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"keyctl: unknown syscall number on {os.uname().machine}")
    arg = ctypes.c_char_p(name.encode()) if name else None
    serial = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), arg)
    if serial < 0:
        raise _fail("keyctl", "JOIN_SESSION_KEYRING")
    return serial


def close_range_cloexec(first: int) -> None:
    """Mark every descriptor from ``first`` on close-on-exec (close_range(2), Linux >= 5.11),
    so that none of them reaches the program that ``execve`` starts.  Falls back to closing
    each open one on older kernels."""
    if _libc.syscall(ctypes.c_long(_SYS_CLOSE_RANGE), ctypes.c_long(first), ctypes.c_long(0xFFFFFFFF),
                     ctypes.c_long(CLOSE_RANGE_CLOEXEC)) == 0:
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def close_fds_except(keep: set[int]) -> None:
    """In a forked child: close every descriptor from 3 on but ``keep`` (one left open would
    hold a pipe's end, or a way out of a container, for as long as the child lives)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass        # the listing's own descriptor, closed already


def sethostname(name: str) -> None:
    raw = name.encode()
    if _libc.sethostname(raw, len(raw)) != 0:
        raise _fail("sethostname", name)


def setdomainname(name: str) -> None:
    raw = name.encode()
    if _libc.setdomainname(raw, len(raw)) != 0:
        raise _fail("setdomainname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        raise _fail("prctl", str(option))
    return rc


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper(on: bool) -> None:
    """Orphaned descendants are reparented to us (not to init) while ``on``."""
    prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def capbset_drop(cap: int) -> None:
    prctl(PR_CAPBSET_DROP, cap)


def release_free_memory() -> None:
    """Collect garbage, then hand the C heap's free pages back to the kernel (malloc_trim):
    for processes that stay resident after a busy start (a container's monitor)."""
    import gc
    gc.collect()
    try:
        _libc.malloc_trim(0)
    except AttributeError:   # not glibc
        pass


def set_process_name(name: str) -> None:
    """The name ``ps`` shows for this process (15 bytes at most)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])   # alive until prctl has copied it
    prctl(PR_SET_NAME, ctypes.addressof(buf))
