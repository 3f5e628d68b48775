"""MPI ranks in containers, started by the host's launcher (docs/hpc.md, "MPI").

The host's ``mpirun`` (Debian's Open MPI) starts one ``rootless run --rm --mpi IMAGE /ring``
per rank; the image holds the same Open MPI, copied from the host's installed Debian packages
(tests/host_packages.py: there is no network to install it from), and ``/ring`` is compiled in
the image by its ``mpicc`` (tests/mpi/Dockerfile: a two-stage build, the compiler stays in the
first).  A token goes round the ring of ranks once through shared memory only (``--mca btl
self,vader``) and once through TCP only (``--mca btl self,tcp``).

In single-uid mode the ranks are uid 0 inside, which PMIx's native security refuses (it
compares the client's uid with the server's): ``mpirun`` is started with
``PMIX_MCA_psec=none``, as docs/hpc.md tells such users to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from .conftest import RANGE_MODE, ROOTLESS, needs_single
from .host_packages import packages_context

pytestmark = pytest.mark.both_modes

HERE = Path(__file__).resolve().parent
RANKS = 3
# What a rank runs (libopenmpi3's libraries and plugins, openmpi-common's help texts), and what
# compiling needs on top (the compiler, C library headers, mpi.h and the mpicc wrapper).
RUNTIME = ["libopenmpi3", "openmpi-common"]
BUILD = ["libopenmpi-dev", "openmpi-bin", "gcc", "gcc-12", "cpp-12", "binutils", "binutils-x86-64-linux-gnu",
         "libc6-dev", "linux-libc-dev", "libcrypt-dev", "libgcc-12-dev"]


def _missing() -> str:
    if not shutil.which("mpirun"):
        return "mpirun is not installed (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    if not shutil.which("dpkg-query"):
        return "not a Debian host: the image is made of the host's installed Debian packages"
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *RUNTIME, *BUILD],
                         capture_output=True, text=True, timeout=30)
    absent = sorted(set(RUNTIME + BUILD) - {line.split()[0] for line in out.stdout.splitlines()
                                            if line.endswith(" installed")})
    if absent:
        return f"Debian packages not installed: {' '.join(absent)}"
    return ""


needs_mpi = pytest.mark.skipif(bool(_missing()), reason=_missing() or "-")


@pytest.fixture(scope="session")
def mpi_image(rl_session, tmp_path_factory) -> str:
    """The ring image, built once per test session."""
    ctx = tmp_path_factory.mktemp("mpi-context")
    runtime = packages_context(ctx / "runtime", RUNTIME)
    packages_context(ctx / "build", BUILD, without=set(runtime))
    for name in ("Dockerfile", "ring.c"):
        shutil.copy(HERE / "mpi" / name, ctx / name)
    rl_session("build", "-q", "-t", "mpi-ring", str(ctx), timeout=300, check=True)
    shutil.rmtree(ctx, ignore_errors=True)
    return "mpi-ring"


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _mpirun(rl, btl: str, *run_args: str, rank: list[str] | None = None,
            timeout: float = 150) -> subprocess.CompletedProcess:
    """mpirun -np RANKS rootless run --rm RUN_ARGS (or the command RANK), as this user, in its
    own session; on a timeout mpirun and every process under it are killed (mpirun may hang
    once a rank died)."""
    env = dict(rl.env)
    if not RANGE_MODE:
        env["PMIX_MCA_psec"] = "none"
    args = ["mpirun", "--oversubscribe", "-np", str(RANKS), "--mca", "btl", btl,
            *(rank or [*ROOTLESS, "run", "--rm", *run_args])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"mpirun did not end in {timeout}s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _check_ring(result: subprocess.CompletedProcess) -> None:
    said = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, said
    uid = os.getuid() if RANGE_MODE else 0        # keep-id; in single-uid mode root inside is us
    host = socket.gethostname()
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith(("rank ", "ring ")))
    token = {r: sum(range(1, r + 1)) for r in range(1, RANKS)}
    token[0] = sum(range(RANKS))
    assert lines == sorted([f"rank {r} of {RANKS} on {host} (uid {uid}) received {token[r]}" for r in range(RANKS)]
                           + [f"ring done: {token[0]}"]), said


@needs_mpi
def test_ring_through_shared_memory(rl, mpi_image):
    """Only the shared-memory transport between the ranks: they map each other's segments in the
    host's /dev/shm and tell them apart by pid (--ipc host, --pid host)."""
    _check_ring(_mpirun(rl, "self,vader", "--mpi", mpi_image, "/ring"))


@needs_mpi
def test_ring_through_tcp(rl, mpi_image):
    """Only TCP between the ranks, on the host's network (--network host)."""
    _check_ring(_mpirun(rl, "self,tcp", "--mpi", mpi_image, "/ring"))


@needs_mpi
def test_ring_with_the_flags_mpi_stands_for(rl, mpi_image, tmp_path):
    """The long form docs/hpc.md gives: each flag written out, the launcher's variables passed
    by name (a script per rank, as a user without --mpi would write it)."""
    script = tmp_path / "rank.sh"
    keep = "--userns keep-id" if RANGE_MODE else ""
    script.write_text(
        "#!/bin/sh\n"
        'set -- $(env | sed -n "s/^\\(OMPI_[^=]*\\|PMIX_[^=]*\\)=.*/-e \\1/p")\n'
        f'exec {" ".join(ROOTLESS)} run --rm --network host --pid host --ipc host {keep} -h "$(hostname)" '
        '-v "$OMPI_MCA_orte_top_session_dir:$OMPI_MCA_orte_top_session_dir" '
        f'-e OMPI_MCA_btl_vader_single_copy_mechanism=none "$@" {mpi_image} /ring\n')
    script.chmod(0o755)
    _check_ring(_mpirun(rl, "self,vader", rank=[str(script)]))


def test_pid_and_ipc_host(rl, tmp_path):
    """--pid host: the host's PID namespace and /proc (the command is not PID 1); --ipc host: the
    host's /dev/shm.  Without them, a PID namespace and a /dev/shm of the container's own."""
    probe = Path("/dev/shm") / f"rootless-test-{uuid.uuid4().hex[:12]}"
    probe.write_text("from the host\n")
    try:
        script = f'echo pid=$$; cat {probe} 2>/dev/null || echo no-probe; grep -c " /proc " /proc/self/mountinfo'
        shared = rl("run", "--rm", "--pid", "host", "--ipc", "host", "busybox", "sh", "-c", script, check=True)
        lines = shared.stdout.split("\n")
        assert lines[0] != "pid=1" and lines[1] == "from the host", shared.stdout
        own = rl("run", "--rm", "busybox", "sh", "-c", script, check=True)
        assert own.stdout.split("\n")[:2] == ["pid=1", "no-probe"], own.stdout
    finally:
        probe.unlink()


def test_exec_into_a_container_of_the_host_pid_namespace(rl):
    """exec joins the container's namespaces but the host's own (it may not setns into them)."""
    name = f"pidhost-{uuid.uuid4().hex[:8]}"
    rl("run", "-d", "--name", name, "--pid", "host", "--ipc", "host", "busybox", "sleep", "60", check=True)
    try:
        out = rl("exec", name, "sh", "-c", "echo $$; pidof sleep", check=True).stdout.split()
        assert out[0] != "1" and len(out) >= 2, out
        host_config = json.loads(rl("inspect", name, check=True).stdout)[0]["HostConfig"]
        assert (host_config["PidMode"], host_config["IpcMode"]) == ("host", "host")
    finally:
        rl("rm", "-f", name, timeout=60)


@pytest.mark.parametrize("args, words", [
    (["--pid", "container:x"], "invalid --pid 'container:x'"),
    (["--ipc", "none"], "invalid --ipc 'none'"),
    (["--ipc", "host", "--shm-size", "1g"], "--shm-size cannot be used with --ipc host"),
    (["--ipc", "host", "--sysctl", "kernel.shmmax=1000"], "--sysctl kernel.shmmax cannot be used with --ipc host"),
])
def test_pid_and_ipc_refusals(rl, args, words):
    proc = rl("run", "--rm", *args, "busybox", "true")
    assert proc.returncode == 125 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_mpi_outside_a_launcher_warns_and_runs(rl):
    """--mpi with none of a launcher's variables: a warning that says where --mpi belongs."""
    proc = rl("run", "--rm", "--mpi", "busybox", "sh", "-c", "echo $OMPI_MCA_btl_vader_single_copy_mechanism",
              check=True)
    assert "--mpi: no MPI launcher's variables" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "none"


def test_mpi_flags_given_win(rl):
    """A flag given with --mpi wins over what --mpi would set; the launcher's variables pass,
    under -e."""
    env = {"OMPI_COMM_WORLD_RANK": "5", "PMIX_RANK": "5", "OMPI_MCA_btl_vader_single_copy_mechanism": "cma"}
    proc = rl("run", "--rm", "--mpi", "-h", "rank5", "-e", "PMIX_RANK=6", "busybox", "sh", "-c",
              "hostname; echo $OMPI_COMM_WORLD_RANK $PMIX_RANK $OMPI_MCA_btl_vader_single_copy_mechanism; "
              "echo pid=$$", env=env, check=True)
    assert proc.stdout.split("\n")[:2] == ["rank5", "5 6 cma"], proc.stdout
    assert proc.stdout.split("\n")[2] != "pid=1"


def test_mpi_expansion(tmp_path):
    """What --mpi stands for, from a launcher's environment: its variables, the outermost of
    the directories they name (not system directories), and the defaults it did not set."""
    from rootless.container.runflags import mpi
    top = tmp_path / "ompi.node.1000"
    (top / "pid.7" / "pmix").mkdir(parents=True)
    environ = {"OMPI_MCA_orte_top_session_dir": str(top), "OMPI_MCA_orte_jobfam_session_dir": str(top / "pid.7"),
               "PMIX_SERVER_TMPDIR": str(top / "pid.7" / "pmix"), "PMIX_SYSTEM_TMPDIR": "/tmp",
               "PRTE_MCA_prte_top_session_dir": "/tmp", "OMPI_MCA_smsc": "xpmem", "HOME": "/home/u", "PATH": "/bin"}
    m = mpi(False, environ)
    assert m.volumes == [f"{top}:{top}"]
    assert sorted(m.env) == sorted(f"{k}={v}" for k, v in environ.items() if k not in ("HOME", "PATH"))
    assert m.defaults == ["OMPI_MCA_btl_vader_single_copy_mechanism=none"]
    assert (m.network, m.pid, m.ipc, m.userns, m.launcher_found) == ("host", "host", "host", "keep-id", True)
    single = mpi(True, {"HOME": "/home/u"})
    assert (single.userns, single.launcher_found, single.volumes, single.env) == ("", False, [], [])


@needs_single
def test_mpi_single_uid_names_the_launcher_setting(rl):
    """In single-uid mode a PMIx server that checks uids refuses the rank (uid 0 inside): said
    before it happens, with the setting that lets it in."""
    proc = rl("run", "--rm", "--mpi", "busybox", "true", env={"PMIX_SECURITY_MODE": "munge,native"}, check=True)
    assert "start mpirun with PMIX_MCA_psec=none" in proc.stderr, proc.stderr
    proc = rl("run", "--rm", "--mpi", "busybox", "true", env={"PMIX_SECURITY_MODE": "none"}, check=True)
    assert "PMIX_MCA_psec" not in proc.stderr, proc.stderr
