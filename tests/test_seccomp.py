"""Seccomp: the default profile in force, custom profiles, exec, the program cache, profile errors.

Seccomp failures and missing capabilities both show as EPERM; the tests tell them apart with
calls the capability set allows but the profile refuses (``unshare(CLONE_NEWUSER)`` needs no
capability at all; ``mount`` with CAP_SYS_ADMIN under a profile without ``mount``), and with
``Seccomp:``/``Seccomp_filters:`` of /proc/self/status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rootless.sandbox import caps, seccomp, seccomp_compile

both_modes = pytest.mark.both_modes
PODMAN_PROFILE = Path("/usr/share/containers/seccomp.json")
NOT_PERMITTED = ("Operation not permitted", "permission denied")


def run(rl, *args: str, **kw) -> subprocess.CompletedProcess:
    return rl("run", "--rm", *args, **kw)


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.strip().splitlines() if ":\t" in line)


def default_without(tmp_path: Path, *names: str) -> Path:
    """Our default profile minus ``names``: a profile that differs from it in those calls only."""
    doc = json.loads(Path(seccomp.DEFAULT_PROFILE).read_text())
    for entry in doc["syscalls"]:
        entry["names"] = [n for n in entry["names"] if n not in names]
    doc["syscalls"] = [e for e in doc["syscalls"] if e["names"]]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    return path


# --- in a container ------------------------------------------------------------------------

@both_modes
def test_default_profile_is_in_force(rl):
    proc = run(rl, "busybox", "sh", "-c", "grep Seccomp /proc/self/status; unshare -U true; echo rc=$?")
    fields = status_fields(proc.stdout)
    assert fields["Seccomp"] == "2" and fields["Seccomp_filters"] == "1", proc.stdout
    # A user namespace needs no capability: only the filter refuses it.
    assert "rc=1" in proc.stdout and "Operation not permitted" in proc.stderr


@both_modes
def test_unconfined_and_privileged_have_no_filter(rl):
    proc = run(rl, "--security-opt", "seccomp=unconfined", "busybox", "sh", "-c",
               "grep Seccomp /proc/self/status; unshare -U true; echo rc=$?")
    fields = status_fields(proc.stdout)
    assert fields["Seccomp"] == "0" and "rc=0" in proc.stdout, proc.stdout + proc.stderr
    proc = run(rl, "--privileged", "busybox", "grep", "Seccomp:", "/proc/self/status")
    assert status_fields(proc.stdout)["Seccomp"] == "0", proc.stderr


@both_modes
def test_cap_sys_admin_group_follows_the_profile(rl, tmp_path):
    script = "mount -t tmpfs x /mnt && echo mounted"
    proc = run(rl, "--cap-add", "SYS_ADMIN", "busybox", "sh", "-c", script)
    assert "mounted" in proc.stdout, proc.stderr           # the default profile's CAP_SYS_ADMIN group
    profile = default_without(tmp_path, "mount")
    proc = run(rl, "--cap-add", "SYS_ADMIN", "--security-opt", f"seccomp={profile}", "busybox", "sh", "-c", script)
    assert "mounted" not in proc.stdout
    assert any(s in proc.stderr for s in NOT_PERMITTED), proc.stderr


@both_modes
def test_custom_profile_blocking_mkdir(rl, tmp_path):
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    proc = run(rl, "--security-opt", f"seccomp={profile}", "busybox", "sh", "-c",
               "mkdir /made; echo rc=$?; touch /touched && echo touched")
    assert "rc=1" in proc.stdout and "Operation not permitted" in proc.stderr, proc.stdout + proc.stderr
    assert "touched" in proc.stdout


@both_modes
def test_exec_gets_the_containers_filter(rl):
    for name, opts in (("sc-default", []), ("sc-unconfined", ["--security-opt", "seccomp=unconfined"])):
        assert rl("run", "-d", "--name", name, *opts, "busybox", "sleep", "60").returncode == 0
    try:
        out = rl("exec", "sc-default", "grep", "Seccomp", "/proc/self/status").stdout
        assert status_fields(out)["Seccomp"] == "2" and status_fields(out)["Seccomp_filters"] == "1"
        proc = rl("exec", "sc-default", "unshare", "-U", "true")
        assert proc.returncode != 0 and "Operation not permitted" in proc.stderr
        out = rl("exec", "sc-unconfined", "grep", "Seccomp:", "/proc/self/status").stdout
        assert status_fields(out)["Seccomp"] == "0"
    finally:
        rl("rm", "-f", "sc-default", "sc-unconfined")


@both_modes
def test_start_uses_the_cache(rl, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert run(rl, "busybox", "true", env=env).returncode == 0
    content = Path(seccomp.DEFAULT_PROFILE).read_bytes()
    cached = tmp_path / "rootless" / "seccomp" / (seccomp.cache_key(content, caps.DEFAULT) + ".bpf")
    assert cached.exists() and cached.stat().st_size % 8 == 0
    before = cached.stat().st_mtime_ns
    assert run(rl, "busybox", "true", env=env).returncode == 0
    assert cached.stat().st_mtime_ns == before and len(list(cached.parent.iterdir())) == 1


@pytest.mark.parametrize("text, problem", [
    ('{"defaultAction": ', "is not valid JSON"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOPE"}]}',
     "syscalls[0].action 'SCMP_ACT_NOPE' is unknown"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", '
     '"args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}', "syscalls[0].args[0].op 'SCMP_CMP_ALMOST'"),
    ('{"syscalls": []}', "defaultAction is missing"),
    (None, "cannot read it: No such file or directory"),
])
@both_modes
def test_profile_errors(rl, tmp_path, text, problem):
    profile = tmp_path / "profile.json"
    if text is not None:
        profile.write_text(text)
    proc = run(rl, "--security-opt", f"seccomp={profile}", "busybox", "true")
    assert proc.returncode == 125
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"seccomp profile {profile}" in lines[0] and problem in lines[0], proc.stderr


# --- the compiler and the cache, in this process -------------------------------------------

def test_program_cache_hit_does_not_load_libseccomp(tmp_path):
    code = ("import sys, time; from rootless.sandbox import caps, seccomp\n"
            "t = time.perf_counter(); p = seccomp.program('default', caps.DEFAULT)\n"
            "c = sys.modules.get('rootless.sandbox.seccomp_compile')\n"
            "print(len(p), c is not None and c._lib is not None, 'libseccomp' in open('/proc/self/maps').read())\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    size = first.stdout.split()[0]
    assert first.stdout.split() == [size, "True", "True"]      # a miss compiles with libseccomp
    assert second.stdout.split() == [size, "False", "False"]   # a hit never loads it
    assert [p.suffix for p in (tmp_path / "rootless" / "seccomp").iterdir()] == [".bpf"]


def test_cache_key_follows_profile_and_caps():
    a = seccomp.cache_key(b"{}", caps.DEFAULT)
    assert a == seccomp.cache_key(b"{}", frozenset(caps.DEFAULT))
    assert a != seccomp.cache_key(b"{ }", caps.DEFAULT)
    assert a != seccomp.cache_key(b"{}", caps.DEFAULT | {"SYS_ADMIN"})


def test_truncated_cache_entry_is_compiled_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    prog = seccomp.program("default", caps.DEFAULT)
    [entry] = (tmp_path / "rootless" / "seccomp").iterdir()
    entry.write_bytes(prog[:13])
    assert seccomp.program("default", caps.DEFAULT) == prog and entry.read_bytes() == prog


def select_default(have: frozenset[str] = caps.DEFAULT, kernel: str | None = None, machine: str = "x86_64"):
    doc = json.loads(Path(seccomp.DEFAULT_PROFILE).read_text())
    return seccomp_compile.select(doc, have, kernel=kernel, machine=machine)


def allowed(sel: seccomp_compile.Selected, unconditionally: bool = True) -> set[str]:
    return {n for r in sel.rules if r.action == seccomp_compile.SCMP_ACT_ALLOW and not (unconditionally and r.args)
            for n in r.names}


def test_default_profile_semantics():
    sel = select_default()
    assert sel.default_action == seccomp_compile.SCMP_ACT_ERRNO(1)
    assert sel.arches == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    plain = allowed(sel)
    assert {"read", "execve", "setresuid", "close_range", "chdir", "prctl", "arch_prctl", "ptrace"} <= plain
    refused = {"keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
               "mount", "umount2", "unshare", "setns", "reboot", "init_module", "settimeofday", "syslog",
               "bpf", "perf_event_open", "kexec_load", "userfaultfd", "open_by_handle_at", "mbind"}
    assert not refused & allowed(sel, unconditionally=False)
    # clone: only without namespace flags; clone3: ENOSYS so that libc falls back to clone.
    [clone] = [r for r in sel.rules if "clone" in r.names]
    assert clone.args == ((0, seccomp_compile.OPS["SCMP_CMP_MASKED_EQ"], 0x7E020000, 0),)
    [clone3] = [r for r in sel.rules if "clone3" in r.names]
    assert clone3.action == seccomp_compile.SCMP_ACT_ERRNO(38)
    # socket: every family but AF_ALG (38) and AF_VSOCK (40).
    sockets = [r.args for r in sel.rules if r.names == ("socket",)]
    assert sockets == [((0, 2, 38, 0),), ((0, 4, 39, 0),), ((0, 6, 40, 0),)]


def test_capability_groups_and_kernel_version():
    admin = select_default(caps.DEFAULT | {"SYS_ADMIN"})
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3", "sethostname"} <= allowed(admin)
    assert not any("clone3" in r.names and r.action != seccomp_compile.SCMP_ACT_ALLOW for r in admin.rules)
    for cap, calls in (("SYS_PTRACE", {"process_madvise", "kcmp", "pidfd_getfd"}), ("SYS_BOOT", {"reboot"}),
                       ("SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
                       ("SYS_TIME", {"settimeofday", "clock_settime"}), ("SYS_NICE", {"mbind", "set_mempolicy"}),
                       ("SYSLOG", {"syslog"}), ("BPF", {"bpf"}), ("PERFMON", {"perf_event_open"}),
                       ("DAC_READ_SEARCH", {"open_by_handle_at"})):
        assert not calls & allowed(select_default()), cap
        assert calls <= allowed(select_default(caps.DEFAULT | {cap})), cap
    assert "ptrace" not in allowed(select_default(kernel="4.4.0"))
    assert "ptrace" in allowed(select_default(kernel="4.8.0-1-amd64"))
    assert "arch_prctl" not in allowed(select_default(machine="aarch64"))
    s390 = select_default(machine="s390x")
    assert [r.args[0][0] for r in s390.rules if r.names == ("clone",)] == [1]


def test_conditions_on_one_argument_are_ored():
    assert seccomp_compile._condition_sets(((0, 4, 1, 0), (1, 4, 2, 0))) == [((0, 4, 1, 0), (1, 4, 2, 0))]
    assert seccomp_compile._condition_sets(((0, 4, 1, 0), (0, 4, 2, 0))) == [((0, 4, 1, 0),), ((0, 4, 2, 0),)]


def test_unknown_syscalls_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
        {"names": ["read", "no_such_call_anywhere"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["write"], "action": "SCMP_ACT_LOG"},
        {"names": ["getpid"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
        {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["tkill"], "action": "SCMP_ACT_TRAP"},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}))
    assert len(seccomp.program(str(profile), caps.DEFAULT)) % 8 == 0


@pytest.mark.skipif(not PODMAN_PROFILE.exists(), reason="no /usr/share/containers/seccomp.json on this host")
def test_podmans_profile_compiles_and_ours_differs_only_deliberately(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert seccomp.program(str(PODMAN_PROFILE), caps.DEFAULT)
    podman = seccomp_compile.select(json.loads(PODMAN_PROFILE.read_text()), frozenset(), str(PODMAN_PROFILE))
    # Docker's choices, which we follow, where Podman's variant is more permissive:
    deliberate = {
        # namespaces and mounts only with CAP_SYS_ADMIN (clone: without CLONE_NEW* flags)
        "clone", "clone3", "mount", "umount", "umount2", "mount_setattr", "move_mount", "open_tree",
        "fsopen", "fsconfig", "fsmount", "fspick", "unshare", "setns", "pivot_root",
        # the kernel keyring is not namespaced
        "keyctl",
        # CAP_SYS_BOOT, CAP_SYSLOG, CAP_SYS_NICE (NUMA), CAP_SYS_PTRACE
        "reboot", "syslog", "get_mempolicy", "set_mempolicy", "mbind", "pidfd_getfd",
        # obsolete 32-bit entry points Docker's profile no longer lists
        "readdir", "sigaction", "signal", "sigpending", "sigsuspend", "syscall", "timerfd",
    }
    missing = allowed(podman) - allowed(select_default(frozenset())) - deliberate
    assert not missing, f"allowed by Podman's profile, not by ours: {sorted(missing)}"


def test_cache_is_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = tmp_path / "rootless" / "seccomp"
    d.mkdir(parents=True)
    for i in range(seccomp.CACHE_ENTRIES + 5):
        (d / f"{i:064x}.bpf").write_bytes(b"\0" * 8)
        os.utime(d / f"{i:064x}.bpf", ns=(i * 10**9, i * 10**9))
    prog = seccomp.program("default", caps.DEFAULT)
    left = sorted(p.name for p in d.iterdir())
    assert len(left) == seccomp.CACHE_ENTRIES and f"{0:064x}.bpf" not in left
    assert seccomp.program("default", caps.DEFAULT) == prog


@both_modes
def test_relative_profile_path_is_kept_absolute_for_exec(rl, tmp_path):
    from .conftest import ROOTLESS
    (tmp_path / "no-mkdir.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    proc = subprocess.run([*ROOTLESS, "run", "-d", "--name", "sc-relative", "--security-opt",
                           "seccomp=no-mkdir.json", "busybox", "sleep", "60"],
                          cwd=tmp_path, env=rl.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    try:
        proc = rl("exec", "sc-relative", "mkdir", "/made")       # from another directory
        assert proc.returncode != 0 and "Operation not permitted" in proc.stderr, proc.stderr
    finally:
        rl("rm", "-f", "sc-relative")


@pytest.mark.parametrize("entry, problem", [
    ({"names": ["read"], "action": ["SCMP_ACT_ALLOW"]}, "syscalls[0].action ['SCMP_ACT_ALLOW'] is unknown"),
    ({"names": "read", "action": "SCMP_ACT_ALLOW"}, "syscalls[0].names must be a non-empty list"),
    ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]},
     "syscalls[0].args[0].index must be 0 to 5"),
    ({"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}, "syscalls[0].errnoRet must be an errno number"),
    ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_BPF"], "minKernel": "new"}},
     "syscalls[0].includes.minKernel 'new' is not a kernel version"),
    ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": [{"amd64": 1}]}},
     "syscalls[0].excludes.arches must be a list of names"),
    ({"names": ["read"], "action": "SCMP_ACT_NOTIFY"}, "SCMP_ACT_NOTIFY is not supported"),
])
def test_select_errors_name_the_place(entry, problem):
    with pytest.raises(seccomp.ProfileError) as e:
        seccomp_compile.select({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [entry]}, caps.DEFAULT, "/p.json")
    assert str(e.value).startswith("seccomp profile /p.json: ") and problem in str(e.value)
