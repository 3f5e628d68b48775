"""Compiling seccomp profiles in Docker's JSON format to BPF with libseccomp (ctypes).

Only ``seccomp.program`` calls this, on a cache miss: a container start with a cached
program never imports it (nor loads libseccomp).  See ``seccomp.py`` for the format and the
cache.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from typing import NamedTuple

from .seccomp_base import BPF_MAXINSNS, ProfileError, _cap_name, _library_path


SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000


def SCMP_ACT_ERRNO(code: int) -> int:          # noqa: N802 - libseccomp's name
    return 0x00050000 | (code & 0xFFFF)


def SCMP_ACT_TRACE(code: int) -> int:          # noqa: N802
    return 0x7FF00000 | (code & 0xFFFF)


_ACTIONS = {
    "SCMP_ACT_ALLOW": lambda ret: SCMP_ACT_ALLOW,
    "SCMP_ACT_ERRNO": SCMP_ACT_ERRNO,
    "SCMP_ACT_KILL": lambda ret: SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": lambda ret: SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": lambda ret: SCMP_ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": lambda ret: SCMP_ACT_TRAP,
    "SCMP_ACT_LOG": lambda ret: SCMP_ACT_LOG,
    "SCMP_ACT_TRACE": SCMP_ACT_TRACE,
}

OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
       "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

# The names a profile's "arches" may use for this machine (Docker uses Go's GOARCH names).
_ARCH_NAMES = {
    "x86_64": {"amd64", "x86_64"}, "aarch64": {"arm64", "aarch64"}, "armv7l": {"arm"}, "armv6l": {"arm"},
    "i686": {"386", "x86"}, "i386": {"386", "x86"}, "ppc64le": {"ppc64le"}, "s390x": {"s390x"},
    "riscv64": {"riscv64"}, "mips64": {"mips64"}, "loongarch64": {"loong64", "loongarch64"},
}
# libseccomp's name of this machine's architecture (SCMP_ARCH_<NAME> in profiles).
_SCMP_NATIVE = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "armv7l": "SCMP_ARCH_ARM",
                "armv6l": "SCMP_ARCH_ARM", "i686": "SCMP_ARCH_X86", "i386": "SCMP_ARCH_X86",
                "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64",
                "mips64": "SCMP_ARCH_MIPS64", "loongarch64": "SCMP_ARCH_LOONGARCH64"}



# --- selection: the rules that apply to this container ----------------------------------

class Rule(NamedTuple):
    names: tuple[str, ...]
    action: int
    args: tuple[tuple[int, int, int, int], ...] = ()   # (index, op, value, valueTwo)


class Selected(NamedTuple):
    default_action: int
    arches: tuple[str, ...]          # SCMP_ARCH_* names to add besides the native one
    rules: tuple[Rule, ...]


def _kernel_version(release: str) -> tuple[int, int]:
    parts = release.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (0, 0)




def _errno_value(entry: dict, num_key: str, name_key: str, where: str, fail) -> int:
    """``errnoRet`` (a number) or Podman's ``errno`` (a name such as "EPERM"); EPERM if neither."""
    if entry.get(num_key) is not None:
        value = entry[num_key]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
            fail(f"{where}{num_key} must be an errno number, not {value!r}")
        return value
    if entry.get(name_key):
        value = getattr(errno, str(entry[name_key]), None)
        if not isinstance(value, int):
            fail(f"{where}{name_key} '{entry[name_key]}' is not an errno name such as EPERM")
        return value
    return errno.EPERM


def _action(entry: dict, key: str, where: str, fail, num_key: str, name_key: str) -> int:
    name = entry.get(key)
    if not isinstance(name, str) or name not in _ACTIONS:
        if name == "SCMP_ACT_NOTIFY":
            fail(f"{where}{key} SCMP_ACT_NOTIFY is not supported (rootless runs no seccomp agent)")
        fail(f"{where}{key} {name!r} is unknown (use one of {', '.join(sorted(_ACTIONS))})")
    if name == "SCMP_ACT_ERRNO":
        return SCMP_ACT_ERRNO(_errno_value(entry, num_key, name_key, where, fail))
    if name == "SCMP_ACT_TRACE":
        return SCMP_ACT_TRACE(_errno_value(entry, num_key, name_key, where, fail))
    return _ACTIONS[name](0)


def _int_field(arg: dict, key: str, where: str, fail) -> int:
    value = arg.get(key, 0)
    if value is None:
        value = 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        fail(f"{where}.{key} must be a number from 0 to 2^64-1, not {value!r}")
    return value


def select(doc: object, caps: frozenset[str], source: str = "the profile", machine: str | None = None,
           kernel: str | None = None) -> Selected:
    """Check a profile in Docker's JSON format and keep what applies to a container with
    ``caps`` on ``machine`` (``uname -m``) running ``kernel`` (a release string)."""
    def fail(problem: str):
        raise ProfileError(f"seccomp profile {source}: {problem}")

    machine = machine or os.uname().machine
    kver = _kernel_version(kernel or os.uname().release)
    have = {_cap_name(c) for c in caps}
    my_arches = _ARCH_NAMES.get(machine, {machine})
    if not isinstance(doc, dict):
        fail("it must be a JSON object with defaultAction and syscalls")
    if "defaultAction" not in doc:
        fail("defaultAction is missing")
    default = _action(doc, "defaultAction", "", fail, "defaultErrnoRet", "defaultErrno")

    arches: list[str] = []
    if doc.get("architectures") and doc.get("archMap"):
        fail("use either architectures or archMap, not both")
    for i, a in enumerate(doc.get("architectures") or []):
        if not isinstance(a, str):
            fail(f"architectures[{i}] must be a name such as SCMP_ARCH_X86_64")
        arches.append(a)
    native = _SCMP_NATIVE.get(machine)
    for i, m in enumerate(doc.get("archMap") or []):
        if not isinstance(m, dict) or not isinstance(m.get("architecture"), str):
            fail(f"archMap[{i}] must be an object with architecture and subArchitectures")
        if m["architecture"] == native:
            arches += [m["architecture"], *[s for s in (m.get("subArchitectures") or []) if isinstance(s, str)]]

    rules: list[Rule] = []
    syscalls = doc.get("syscalls") or []
    if not isinstance(syscalls, list):
        fail("syscalls must be a list")
    for i, entry in enumerate(syscalls):
        where = f"syscalls[{i}]"
        if not isinstance(entry, dict):
            fail(f"{where} must be an object with names and action")
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            fail(f"{where}.names must be a non-empty list of syscall names")
        if "action" not in entry:
            fail(f"{where}.action is missing")
        action = _action(entry, "action", f"{where}.", fail, "errnoRet", "errno")
        args = []
        raw_args = entry.get("args") or []
        if not isinstance(raw_args, list):
            fail(f"{where}.args must be a list")
        for j, arg in enumerate(raw_args):
            aw = f"{where}.args[{j}]"
            if not isinstance(arg, dict):
                fail(f"{aw} must be an object with index, value and op")
            index = arg.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
                fail(f"{aw}.index must be 0 to 5, not {index!r}")
            op = arg.get("op")
            if not isinstance(op, str) or op not in OPS:
                fail(f"{aw}.op {op!r} is unknown (use one of {', '.join(OPS)})")
            args.append((index, OPS[op], _int_field(arg, "value", aw, fail), _int_field(arg, "valueTwo", aw, fail)))
        if _applies(entry.get("includes") or {}, entry.get("excludes") or {}, have, my_arches, kver,
                    where, fail):
            rules.append(Rule(tuple(names), action, tuple(args)))
    return Selected(default, tuple(arches), tuple(rules))


def _applies(inc: object, exc: object, have: set[str], my_arches: set[str], kver: tuple[int, int],
             where: str, fail) -> bool:
    """Docker's rules: every included cap present, no excluded cap present; this machine among
    the included arches and not among the excluded ones; the kernel at least the included
    minKernel (below the excluded one).  Checked whole first, so that an error shows whatever
    the container's capabilities."""
    minimum = {}
    for key, part in (("includes", inc), ("excludes", exc)):
        if not isinstance(part, dict):
            fail(f"{where}.{key} must be an object")
        for k in ("caps", "arches"):
            value = part.get(k) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                fail(f"{where}.{key}.{k} must be a list of names")
        if part.get("minKernel"):
            minimum[key] = _kernel_version(str(part["minKernel"]))
            if minimum[key] == (0, 0):
                fail(f"{where}.{key}.minKernel '{part['minKernel']}' is not a kernel version such as 4.8")
    if inc.get("arches") and not my_arches & set(inc["arches"]):
        return False
    if exc.get("arches") and my_arches & set(exc["arches"]):
        return False
    if any(_cap_name(c) not in have for c in inc.get("caps") or []):
        return False
    if any(_cap_name(c) in have for c in exc.get("caps") or []):
        return False
    if "includes" in minimum and kver < minimum["includes"]:
        return False
    if "excludes" in minimum and kver >= minimum["excludes"]:
        return False
    return True


# --- compilation with libseccomp -------------------------------------------------------

class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_NR_SCMP_ERROR = -1
_SCMP_FLTATR_CTL_OPTIMIZE = 8     # 2: a binary tree of syscall numbers (libseccomp >= 2.5)
_lib = None


def _libseccomp():
    global _lib
    if _lib is not None:
        return _lib
    path = _library_path()
    if path is None:
        from ctypes.util import find_library
        path = find_library("seccomp")
    if path is None:
        raise ProfileError("cannot compile a seccomp profile: libseccomp.so.2 is not installed (install the "
                           "libseccomp2 package, or run with --security-opt seccomp=unconfined)")
    lib = ctypes.CDLL(path, use_errno=True)
    vp, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    lib.seccomp_init.argtypes, lib.seccomp_init.restype = [u32], vp
    lib.seccomp_release.argtypes, lib.seccomp_release.restype = [vp], None
    lib.seccomp_arch_resolve_name.argtypes, lib.seccomp_arch_resolve_name.restype = [ctypes.c_char_p], u32
    lib.seccomp_arch_add.argtypes, lib.seccomp_arch_add.restype = [vp, u32], i
    lib.seccomp_attr_set.argtypes, lib.seccomp_attr_set.restype = [vp, i, u32], i
    lib.seccomp_syscall_resolve_name.argtypes, lib.seccomp_syscall_resolve_name.restype = [ctypes.c_char_p], i
    lib.seccomp_rule_add_array.argtypes = [vp, u32, i, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_rule_add_array.restype = i
    lib.seccomp_export_bpf.argtypes, lib.seccomp_export_bpf.restype = [vp, i], i
    _lib = lib
    return lib


def _check(rc: int, call: str, source: str) -> None:
    if rc < 0:
        raise ProfileError(f"seccomp profile {source}: {call} failed: {os.strerror(-rc)}")


def _compile(sel: Selected, source: str) -> bytes:
    lib = _libseccomp()
    ctx = lib.seccomp_init(sel.default_action)
    if not ctx:
        raise ProfileError(f"seccomp profile {source}: seccomp_init failed (bad default action?)")
    try:
        for name in sel.arches:
            token = lib.seccomp_arch_resolve_name(name.removeprefix("SCMP_ARCH_").lower().encode())
            if token == 0:
                continue              # an architecture this libseccomp does not know
            rc = lib.seccomp_arch_add(ctx, token)
            if rc != -errno.EEXIST:   # the native one is there from the start
                _check(rc, f"seccomp_arch_add {name}", source)
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, 2)   # older libseccomp: a linear list
        for rule in sel.rules:
            if rule.action == sel.default_action:
                continue              # libseccomp refuses those; they change nothing
            for cond_set in _condition_sets(rule.args):
                arr = (_ArgCmp * max(len(cond_set), 1))(*[_ArgCmp(i, op, a, b) for i, op, a, b in cond_set])
                for name in rule.names:
                    nr = lib.seccomp_syscall_resolve_name(name.encode())
                    if nr == _NR_SCMP_ERROR:
                        continue      # unknown to this libseccomp: skipped, as Docker does
                    _check(lib.seccomp_rule_add_array(ctx, rule.action, nr, len(cond_set), arr),
                           f"seccomp_rule_add for {name}", source)
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf", source)
            size = os.lseek(fd, 0, os.SEEK_END)
            prog = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not prog or len(prog) % 8 or len(prog) // 8 > BPF_MAXINSNS:
        raise ProfileError(f"seccomp profile {source}: the compiled filter has {len(prog) // 8} instructions; "
                           f"the kernel accepts at most {BPF_MAXINSNS}")
    return prog


def _condition_sets(args: tuple) -> list[tuple]:
    """runc's rule: the conditions of one entry are ANDed in one rule, unless one argument is
    compared more than once — then each condition is a rule of its own (ORed)."""
    if not args:
        return [()]
    indexes = [a[0] for a in args]
    if len(set(indexes)) != len(indexes):
        return [(a,) for a in args]
    return [tuple(args)]


def parse(content: bytes, source: str) -> object:
    try:
        return json.loads(content)
    except UnicodeDecodeError:
        raise ProfileError(f"seccomp profile {source}: it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ProfileError(f"seccomp profile {source} is not valid JSON: {e.msg} at line {e.lineno} "
                           f"column {e.colno}") from None


def compile_profile(content: bytes, caps: frozenset[str], source: str) -> bytes:
    """The BPF program of a profile's text for a container with ``caps``."""
    return _compile(select(parse(content, source), caps, source), source)
