"""Escape probes: what a container must not reach, tried the way an attacker would.

Descriptors the caller holds (runc's CVE-2024-21626 class), the host's keyring, the fork
server holding its starter's pipes, masked /proc and /sys paths, and the system calls that
Docker's default seccomp profile refuses (mount, unshare, mknod, ptrace of host processes,
keyctl, bpf, perf, userfaultfd, io_uring).  The probes are a small static program
(tests/probes/escape_probe.c) bind-mounted into the busybox test image.  Both id-map modes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO, ROOTLESS, Rootless, stop_background

pytestmark = pytest.mark.both_modes


@pytest.fixture(scope="session")
def probe_dir(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (scripts/test installs it): the escape probe cannot be built")
    d = tmp_path_factory.mktemp("probe")
    proc = subprocess.run([gcc, "-static", "-O1", "-o", str(d / "probe"), str(REPO / "tests/probes/escape_probe.c")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    d.chmod(0o755)
    return d


def probe(rl, probe_dir: Path, *args: str, run_args: tuple[str, ...] = ()) -> str:
    proc = rl("run", "--rm", "-v", f"{probe_dir}:/probe:ro", *run_args, "busybox", "/probe/probe", *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.strip()


# --- descriptors -------------------------------------------------------------------------

class HostFds:
    """Descriptors a careless or hostile caller holds when it starts rootless: a host
    directory, a pipe and a socket, all inheritable, at fixed numbers."""
    NUMBERS = (7, 8, 9)

    def __init__(self, directory: Path):
        self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self.r, self.w = os.pipe()
        self.a, self.b = socket.socketpair()
        self.sources = (self.dir_fd, self.w, self.a.fileno())

    def popen_kwargs(self) -> dict:
        """For subprocess: our descriptors at NUMBERS in the child (a shell-like redirection)."""
        sources, numbers = self.sources, self.NUMBERS

        def place() -> None:
            for src, num in zip(sources, numbers):
                os.dup2(src, num)
        return {"preexec_fn": place, "pass_fds": numbers}

    def close(self) -> None:
        for fd in (self.dir_fd, self.r, self.w):
            os.close(fd)
        self.a.close()
        self.b.close()


def rl_with_fds(rl: Rootless, fds: HostFds, *args: str, env: dict[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ROOTLESS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**rl.env, **(env or {})}, stdin=subprocess.DEVNULL, **fds.popen_kwargs())


# The shell's own descriptors, each as "N -> target", and the attack of CVE-2024-21626.
LIST_FDS = ("ls -l /proc/$$/fd; "
            "for n in 3 4 5 6 7 8 9 10; do echo x > /proc/self/fd/$n/pwned 2>/dev/null && echo WROTE $n; "
            "ls /proc/self/fd/$n/.. >/dev/null 2>&1 && echo LISTED $n; done; true")


def fds_seen(output: str) -> set[int]:
    return {int(line.split(" -> ")[0].split()[-1]) for line in output.splitlines() if " -> " in line}


@pytest.fixture
def host_fds(tmp_path):
    target = tmp_path / "hostdir"
    target.mkdir()
    target.chmod(0o777)
    fds = HostFds(target)
    yield fds, target
    fds.close()


@pytest.mark.parametrize("forkserver", ["1", "0"])
def test_run_passes_only_stdio(rl, host_fds, forkserver):
    fds, target = host_fds
    proc = rl_with_fds(rl, fds, "run", "--rm", "--storage-driver", "fuse-overlay", "busybox", "sh", "-c",
                       LIST_FDS, env={"ROOTLESS_FORKSERVER": forkserver})   # fuse-overlay: its daemon too
    assert proc.returncode == 0, proc.stderr
    assert fds_seen(proc.stdout) == {0, 1, 2}, proc.stdout
    assert "WROTE" not in proc.stdout and "LISTED" not in proc.stdout
    assert not (target / "pwned").exists()


def test_detached_exec_and_start_pass_only_stdio(rl, host_fds):
    fds, target = host_fds
    proc = rl_with_fds(rl, fds, "run", "-d", "--name", "fd-probe", "busybox", "sh", "-c",
                       LIST_FDS + "; echo first-done; sleep 30")
    assert proc.returncode == 0, proc.stderr
    try:
        out = _wait_log(rl, "fd-probe", "first-done")
        assert fds_seen(out) == {0, 1, 2}, out
        ex = rl_with_fds(rl, fds, "exec", "fd-probe", "sh", "-c", LIST_FDS)
        assert ex.returncode == 0, ex.stderr
        assert fds_seen(ex.stdout) == {0, 1, 2}, ex.stdout
        assert "WROTE" not in ex.stdout + out and "LISTED" not in ex.stdout + out
        rl("stop", "-t", "1", "fd-probe", check=True)
        st = rl_with_fds(rl, fds, "start", "fd-probe")
        assert st.returncode == 0, st.stderr
        out = _wait_log(rl, "fd-probe", "first-done", count=2)
        assert fds_seen(out.split("first-done")[1]) == {0, 1, 2}, out
    finally:
        rl("rm", "-f", "fd-probe")
    assert not (target / "pwned").exists()


def _wait_log(rl, name: str, marker: str, count: int = 1, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = rl("logs", name).stdout
        if out.count(marker) >= count:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{marker!r} x{count} never appeared in the log of {name}: {out!r}")


def test_preserve_fds_passes_exactly_those(rl, host_fds):
    fds, _ = host_fds
    # 7, 8, 9 are open here; --preserve-fds 2 asks for 3 and 4, which we place as well.
    kw = fds.popen_kwargs()
    place = kw["preexec_fn"]

    def place_more() -> None:
        place()
        os.dup2(7, 3)
        os.dup2(8, 4)
    kw.update(preexec_fn=place_more, pass_fds=(3, 4, 7, 8, 9))
    proc = subprocess.run([*ROOTLESS, "run", "--rm", "--preserve-fds", "2", "busybox", "sh", "-c", LIST_FDS],
                          capture_output=True, text=True, timeout=60, env=rl.env, stdin=subprocess.DEVNULL, **kw)
    assert proc.returncode == 0, proc.stderr
    assert fds_seen(proc.stdout) == {0, 1, 2, 3, 4}, proc.stdout
    bad = rl("run", "--rm", "--preserve-fds", "5", "busybox", "true")
    assert bad.returncode == 125 and "file descriptor 3 is not open" in bad.stderr


# --- the fork server ---------------------------------------------------------------------

def test_fork_server_does_not_hold_the_callers_pipe(rl):
    """`{ rootless run --rm IMG echo hi; } 3>&1 | cat` used to wait for the fork server's
    idle time: the server, started by that command, kept the pipe open."""
    import tempfile
    run_dir = Path(tempfile.mkdtemp(prefix="rl-run-"))      # short: unix socket paths hold 108 bytes
    env = {**rl.env, "XDG_RUNTIME_DIR": str(run_dir), "ROOTLESS_FORKSERVER_IDLE": "600"}
    # fuse-overlay: the root's daemon comes from the fork server (auto may take the kernel's overlay)
    cmd = " ".join(ROOTLESS) + " run --rm --network none --storage-driver fuse-overlay busybox echo hi"
    try:
        proc = subprocess.run(["bash", "-c", f"{{ {cmd}; }} 3>&1 | cat"], capture_output=True, text=True,
                              env=env, timeout=120, stdin=subprocess.DEVNULL)
        assert proc.stdout.strip() == "hi", proc.stderr
        assert list((run_dir / "rootless").glob("forkserver-*.sock")), "the fork server was not used"
    finally:
        stop_background(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_stuck_client_does_not_stall_the_fork_server(rl):
    assert rl("run", "--rm", "--storage-driver", "fuse-overlay", "busybox", "true").returncode == 0  # the server runs
    sockets = list((Path(rl.env["XDG_RUNTIME_DIR"]) / "rootless").glob("forkserver-*.sock"))
    assert sockets
    stuck = [socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(3)]
    try:
        for s in stuck:
            s.connect(str(sockets[0]))            # and never send a request
        proc = rl("run", "--rm", "--storage-driver", "fuse-overlay", "busybox", "echo", "served", timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == "served", proc.stderr
        proc = rl("run", "-d", "--rm", "busybox", "true", timeout=60)
        assert proc.returncode == 0, proc.stderr
    finally:
        for s in stuck:
            s.close()


# --- keyrings ----------------------------------------------------------------------------

def test_container_gets_a_fresh_session_keyring(rl, probe_dir):
    """A key on the host's session keyring is not visible inside; a key planted inside does
    not reach the host (seccomp unconfined: the default profile refuses keyctl outright)."""
    run = [*ROOTLESS, "run", "--rm", "--security-opt", "seccomp=unconfined", "-v", f"{probe_dir}:/probe:ro",
           "busybox", "/probe/probe", "keys"]
    proc = subprocess.run([str(probe_dir / "probe"), "hostkeys", *run], capture_output=True, text=True,
                          env=rl.env, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "host key hidden" in proc.stdout
    assert "plant done" in proc.stdout                  # it has a keyring of its own
    assert "planted key absent on the host" in proc.stdout


def test_exec_gets_a_fresh_session_keyring(rl, probe_dir):
    rl("run", "-d", "--name", "keys-probe", "--security-opt", "seccomp=unconfined",
       "-v", f"{probe_dir}:/probe:ro", "busybox", "sleep", "30", check=True)
    try:
        ex = [*ROOTLESS, "exec", "keys-probe", "/probe/probe", "keys"]
        proc = subprocess.run([str(probe_dir / "probe"), "hostkeys", *ex], capture_output=True, text=True,
                              env=rl.env, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        assert "host key hidden" in proc.stdout and "planted key absent on the host" in proc.stdout
    finally:
        rl("rm", "-f", "keys-probe")


# --- system calls the default profile and the user namespace refuse -----------------------

REFUSED = ["keyctl", "bpf", "perf", "userfaultfd", "io_uring", "unshare-user", "unshare-mnt",
           "mount-tmpfs", "mknod"]


@pytest.mark.parametrize("what", REFUSED)
def test_default_container_is_refused(rl, probe_dir, what):
    out = probe(rl, probe_dir, what)
    assert out.startswith("refused"), f"{what}: {out}"


def test_unconfined_allows_what_the_filter_refused(rl, probe_dir):
    """The refusals above come from the filter where the kernel alone would allow the call."""
    assert probe(rl, probe_dir, "unshare-user", run_args=("--security-opt", "seccomp=unconfined")) == "allowed"
    assert probe(rl, probe_dir, "io_uring", run_args=("--security-opt", "seccomp=unconfined")) == "allowed"


def test_host_processes_are_out_of_reach(rl, probe_dir):
    out = probe(rl, probe_dir, "ptrace", str(os.getpid()), run_args=("--cap-add", "SYS_PTRACE"))
    assert out == "refused ESRCH"          # no host pid is visible in the container's PID namespace


def test_masked_paths_read_empty(rl):
    proc = rl("run", "--rm", "--cap-add", "ALL", "busybox", "sh", "-c",
              "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; cat /proc/keys | wc -l; "
              "echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo WROTE-SYS; true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:3] == ["0", "0", "0"]
    assert "WROTE-SYS" not in proc.stdout


# --- the security options --------------------------------------------------------------

def _status(rl, *run_args: str) -> dict[str, str]:
    proc = rl("run", "--rm", *run_args, "busybox", "cat", "/proc/self/status")
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(":\t", 1) for line in proc.stdout.splitlines() if ":\t" in line)


def test_no_new_privileges_only_when_asked(rl):
    assert _status(rl)["NoNewPrivs"].strip() == "0"          # Docker's default
    assert _status(rl, "--security-opt", "no-new-privileges")["NoNewPrivs"].strip() == "1"
    assert _status(rl, "--security-opt", "no-new-privileges=false")["NoNewPrivs"].strip() == "0"


def test_privileged(rl):
    fields = _status(rl, "--privileged")
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    assert int(fields["CapEff"], 16) == (1 << (last + 1)) - 1
    assert fields["Seccomp"].strip() == "0"
    proc = rl("run", "--rm", "--privileged", "busybox", "sh", "-c", "cat /proc/self/mountinfo; ls /dev")
    mounted = {line.split()[4] for line in proc.stdout.splitlines() if len(line.split()) > 4}
    assert "/proc/timer_list" not in mounted and "/sys/firmware" not in mounted
    if os.access("/dev/fuse", os.R_OK | os.W_OK):
        assert "fuse" in proc.stdout.split()


def test_mask_and_unmask(rl):
    proc = rl("run", "--rm", "--security-opt", "unmask=/proc/timer_list", "--security-opt", "mask=/proc/cpuinfo",
              "busybox", "sh", "-c", "cat /proc/self/mountinfo; echo; wc -c < /proc/cpuinfo")
    assert proc.returncode == 0, proc.stderr
    mounted = {line.split()[4] for line in proc.stdout.splitlines() if len(line.split()) > 4}
    assert "/proc/timer_list" not in mounted and "/proc/keys" in mounted and "/proc/cpuinfo" in mounted
    assert proc.stdout.split()[-1] == "0"
    bad = rl("run", "--rm", "--security-opt", "mask=relative", "busybox", "true")
    assert bad.returncode == 125 and "must be absolute" in bad.stderr
    bad = rl("run", "--rm", "--security-opt", "nonsense=1", "busybox", "true")
    assert bad.returncode == 125 and "unknown --security-opt" in bad.stderr


def test_read_only_tmpfs(rl):
    proc = rl("run", "--rm", "--read-only", "busybox", "sh", "-c", "touch /tmp/x 2>&1; echo rc=$?")
    assert "rc=1" in proc.stdout
    proc = rl("run", "--rm", "--read-only", "--read-only-tmpfs", "busybox", "sh", "-c",
              "touch /tmp/x /run/y /var/tmp/z && echo ok; touch /etc/nope 2>&1")
    assert proc.returncode == 1 and "ok" in proc.stdout and "Read-only" in proc.stdout


def test_tests_leave_no_fork_server_pipes(rl):
    """The fork server started by these tests holds no descriptor of the test runner."""
    for pidfile in (Path(rl.env["XDG_RUNTIME_DIR"]) / "rootless").glob("forkserver-*.sock.pid"):
        pid = int(pidfile.read_text())
        fds = {int(n) for n in os.listdir(f"/proc/{pid}/fd")} if Path(f"/proc/{pid}").exists() else set()
        targets = [os.readlink(f"/proc/{pid}/fd/{n}") for n in fds if n > 2 and Path(f"/proc/{pid}/fd/{n}").exists()]
        assert all(t.startswith("socket:") for t in targets), targets
