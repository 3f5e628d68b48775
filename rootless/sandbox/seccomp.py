"""Seccomp filters: Docker's default profile and profiles in Docker's JSON format.

``program(profile, caps)`` returns the compiled BPF program for a profile ("default" or a
path) and the container's capability set; ``load(program)`` installs it in the calling
process (the container's process, just before ``execve``).

Three steps, the first two only on a cache miss:

* ``select``: the profile's JSON checked and reduced to the rules that apply here — its
  ``includes``/``excludes`` (``caps``, ``arches``, ``minKernel``) decided against the
  container's capabilities, this machine and this kernel, as Docker does.  Pure Python.
* ``_compile``: libseccomp (``libseccomp.so.2``, through ctypes, loaded only here) turns the
  rules into a BPF program (``seccomp_export_bpf``).  Syscall names this libseccomp does not
  know are skipped, as Docker does.
* the program is cached in ``$XDG_CACHE_HOME/rootless/seccomp/KEY.bpf``, KEY a hash of the
  profile's bytes, the capabilities, the kernel release, the machine, the libseccomp library
  file and this module's source: a start with a cache hit reads two small files and never
  loads libseccomp.

Every ctypes call about seccomp lives in this module.  The default profile is our own file,
``seccomp-default.json`` next to this one, in Docker's format (a starting point for custom
profiles).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os

from .seccomp_base import BPF_MAXINSNS, ProfileError, _cap_name, _library_path  # noqa: F401 - ProfileError is the API

DEFAULT_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp-default.json")


# --- the cache ---------------------------------------------------------------------------

def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):     # unset, empty or relative: the XDG default
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rootless", "seccomp")


def _library_identity() -> str:
    path = _library_path()
    if path is None:
        return "none"
    try:
        st = os.stat(path)
    except OSError:
        return "none"
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def _own_source() -> bytes:
    """The source of this module, the compiler and what they share: a change to any compiles again."""
    out = b""
    for path in (__file__, *(os.path.join(os.path.dirname(__file__), f"seccomp_{m}.py") for m in ("base", "compile"))):
        try:
            with open(path, "rb") as f:
                out += f.read()
        except OSError:
            out += b"unknown"
    return out


def cache_key(content: bytes, caps: frozenset[str]) -> str:
    uname = os.uname()
    h = hashlib.sha256()
    for part in (content, ",".join(sorted(_cap_name(c) for c in caps)).encode(), uname.release.encode(),
                 uname.machine.encode(), _library_identity().encode(), _own_source()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _cache_read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            prog = f.read(BPF_MAXINSNS * 8 + 1)
    except OSError:
        return None
    if not prog or len(prog) % 8 or len(prog) > BPF_MAXINSNS * 8:
        return None                  # truncated or foreign: compile again
    return prog


CACHE_ENTRIES = 32           # kept on a miss: the newest ones (an evicted one is compiled again)


def _cache_write(path: str, prog: bytes) -> None:
    """Atomically (a temporary name, then rename); a cache that cannot be written costs only time.
    Entries left by other profiles, capability sets, kernels or versions are pruned here."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(prog)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return
    _prune(os.path.dirname(path))


def _prune(directory: str) -> None:
    entries = []
    try:
        with os.scandir(directory) as it:
            for e in it:
                if e.name.endswith(".bpf"):
                    try:
                        entries.append((e.stat().st_mtime_ns, e.path))
                    except OSError:
                        pass
    except OSError:
        return
    for _, old in sorted(entries, reverse=True)[CACHE_ENTRIES:]:
        try:
            os.unlink(old)
        except OSError:
            pass


# --- the API -------------------------------------------------------------------------------

def read_profile(profile: str) -> tuple[str, bytes]:
    """(the name to show, the bytes) of "default" or a path."""
    path = DEFAULT_PROFILE if profile == "default" else profile
    try:
        with open(path, "rb") as f:
            return path, f.read()
    except OSError as e:
        raise ProfileError(f"seccomp profile {path}: cannot read it: {e.strerror}") from None


def program(profile: str, caps: frozenset[str]) -> bytes | None:
    """The BPF program (struct sock_filter array) for ``profile`` ("default" or a path) and a
    container with ``caps``; None: unconfined.  Cached: see the module's docstring."""
    if profile == "unconfined":
        return None
    source, content = read_profile(profile)
    cached = os.path.join(cache_dir(), cache_key(content, caps) + ".bpf")
    prog = _cache_read(cached)
    if prog is not None:
        return prog
    from . import seccomp_compile       # only on a miss: the compiler and libseccomp stay off the start path
    prog = seccomp_compile.compile_profile(content, caps, source)
    _cache_write(cached, prog)
    return prog


# --- installing it -------------------------------------------------------------------------

class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def load(prog: bytes) -> None:
    """Install ``prog`` as this process's seccomp filter (kept across execve, inherited by children).

    Without no_new_privs the kernel asks for CAP_SYS_ADMIN in our user namespace: call it as
    the namespace's root.  The process must be single-threaded (no TSYNC is asked for)."""
    if not prog or len(prog) % 8 or len(prog) // 8 > BPF_MAXINSNS:
        raise OSError(errno.EINVAL, f"prctl PR_SET_SECCOMP: a filter of {len(prog)} bytes is not a BPF program")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl PR_SET_SECCOMP (install the seccomp filter): {os.strerror(err)}")
