"""Containers in Slurm jobs, on a real one-node cluster (scripts/slurm-cluster, started as root by
scripts/test before the tests: slurmctld, slurmd and munge from Debian's packages).

The jobs run as the test user with the session's store (ROOTLESS_ROOT: Slurm passes the caller's
environment to the job) and without XDG_RUNTIME_DIR, as a batch system starts them.  Skipped with
the reason when no cluster answers (ROOTLESS_TEST_SLURM=0 skips them; =1, as scripts/test sets
when the node is idle, makes a missing cluster a failure).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from rootless.cgroups import slurm_job
from tests.conftest import stop_background

pytestmark = pytest.mark.both_modes

JOB_TIMEOUT = 120          # seconds any one srun/sbatch may take here
SLURM_TIME = "3"           # minutes: Slurm's own limit for each job


def _cluster_state() -> str:
    """'' when the node answers idle (or busy), else why the cluster cannot be used."""
    if not shutil.which("srun") or not shutil.which("sinfo"):
        return "Slurm's commands are not installed (apt-get install slurm-wlm)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    states = out.stdout.split()
    if out.returncode != 0 or not states:
        return f"no Slurm cluster answers (sinfo: {(out.stderr or out.stdout).strip()[:200]})"
    if not any(s.rstrip("*") in ("idle", "mix", "alloc") for s in states):
        return f"the Slurm node is not usable (state {' '.join(states)})"
    return ""


@pytest.fixture(scope="module")
def cluster():
    setting = os.environ.get("ROOTLESS_TEST_SLURM", "")
    if setting == "0":
        pytest.skip("ROOTLESS_TEST_SLURM=0")
    why = _cluster_state()
    if why:
        if setting == "1":
            pytest.fail(f"ROOTLESS_TEST_SLURM=1 but {why}")
        pytest.skip(f"{why}: start one as root with scripts/slurm-cluster start")


@pytest.fixture
def job_env(rl, cluster) -> dict[str, str]:
    """The environment jobs are submitted with: the tests' store and CLI, no XDG_RUNTIME_DIR."""
    env = {k: v for k, v in rl.env.items() if k != "XDG_RUNTIME_DIR" and not k.startswith("SLURM")}
    env["ROOTLESS_NO_SINGLE_UID_WARNING"] = "1"
    return env


def slurm(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = JOB_TIMEOUT,
          **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def rootless_cmd() -> str:
    from tests.conftest import ROOTLESS
    return " ".join(ROOTLESS)


def test_slurm_job_detected_from_cgroup_and_environment(tmp_path):
    f = tmp_path / "cgroup"
    f.write_text("6:freezer:/slurm_node1/uid_1001/job_42/step_0\n3:cpuset:/\n0::/\n")
    assert slurm_job(str(f), {}) == "42"
    f.write_text("0::/system.slice/slurmstepd.scope/job_7/step_batch/user/task_0\n")
    assert slurm_job(str(f), {}) == "7"
    f.write_text("0::/user.slice/user-1001.slice/session-3.scope\n")
    assert slurm_job(str(f), {}) is None
    # salloc's shell on a login node: SLURM_JOB_ID, but no SLURMD_NODENAME (not in the job)
    assert slurm_job(str(f), {"SLURM_JOB_ID": "9"}) is None
    assert slurm_job(str(f), {"SLURM_JOB_ID": "9", "SLURMD_NODENAME": "n1"}) == "9"


def test_sweep_keeps_only_live_jobs_directories(tmp_path):
    from rootless import slurm
    """A step's run-time directory goes once its job has left the node; nothing else is touched."""
    from rootless import slurm
    for name in ("slurm-5.0", "slurm-5.batch", "slurm-6.1", "slurm-7.0", "exits"):
        (tmp_path / name).mkdir()
    (tmp_path / "slurm-6.1" / "sqfs" / "k").mkdir(parents=True)
    (tmp_path / "forkserver.log").write_text("")
    slurm.sweep(str(tmp_path), {"5", "7"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exits", "forkserver.log", "slurm-5.0", "slurm-5.batch",
                                                         "slurm-7.0"]
    assert isinstance(slurm.live_jobs(), set)        # every process's cgroup read without failing
    proc = tmp_path / "proc"
    v1 = "6:freezer:/slurm_n1/uid_1001/job_4/step_batch\n3:cpuset:/slurm_n1/uid_1001/job_4\n0::/\n"
    for pid, text in (("10", v1),
                      ("11", "0::/system.slice/slurmstepd.scope/job_9/step_0/user/task_0\n"),
                      ("12", "0::/user.slice/user-1001.slice/session-2.scope\n")):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cgroup").write_text(text)
    (proc / "self").mkdir()
    assert slurm.live_jobs(str(proc)) == {"4", "9"}


def test_env_host_order(rl, busybox_tar):
    """--env-host (no Slurm needed): the caller's environment over the image's ENV, under -e;
    PATH, TMPDIR and the engine's ROOTLESS_* stay out."""
    rl("import", "-c", "ENV IMG=image HOSTV=image", str(busybox_tar), "envhost-img", check=True)
    try:
        out = rl("run", "--rm", "--env-host", "-e", "FLAG=flag", "envhost-img", "sh", "-c",
                 'echo "$IMG $HOSTV $FLAG $PATH ${TMPDIR-none} ${ROOTLESS_ROOT-none}"',
                 env={"HOSTV": "host", "FLAG": "host", "PATH": "/host/bin:" + os.environ["PATH"],
                      "TMPDIR": "/host/tmp"})
        assert out.returncode == 0, out.stderr
        default_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        assert out.stdout.split() == ["image", "host", "flag", default_path, "none", "none"]
    finally:
        rl("rmi", "envhost-img")


def test_srun_two_tasks_each_run_a_container(job_env):
    out = slurm("srun", "-n2", "-t", SLURM_TIME, "sh", "-c",
                f'test -z "$XDG_RUNTIME_DIR" || exit 9; exec {rootless_cmd()} run --rm busybox hostname',
                env=job_env)
    assert out.returncode == 0, out.stderr
    names = out.stdout.split()
    assert len(names) == 2 and len(set(names)) == 2, out.stdout
    assert all(re.fullmatch(r"[0-9a-f]{12}", n) for n in names), out.stdout   # each its own container


def test_env_host_passes_slurm_environment(job_env):
    out = slurm("srun", "-n2", "-t", SLURM_TIME, *rootless_cmd().split(), "run", "--rm", "--env-host", "busybox",
                "sh", "-c",
                'echo "$SLURM_JOB_ID $SLURM_PROCID $SLURM_NTASKS ${XDG_RUNTIME_DIR-unset} ${ROOTLESS_ROOT-unset}"',
                env=job_env)
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.splitlines())
    assert len(lines) == 2, out.stdout
    job = lines[0].split()[0]
    assert job.isdigit(), out.stdout
    assert lines == [f"{job} 0 2 unset unset", f"{job} 1 2 unset unset"]
    # without the flag the job's variables stay outside
    out = slurm("srun", "-n1", "-t", SLURM_TIME, *rootless_cmd().split(), "run", "--rm", "busybox",
                "sh", "-c", 'echo "${SLURM_JOB_ID-none}"', env=job_env)
    assert out.returncode == 0 and out.stdout.strip() == "none", (out.stdout, out.stderr)


def test_sbatch_container_writes_to_home(job_env, tmp_path):
    home = Path(os.path.expanduser("~"))
    name = f".rootless-slurm-test-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n"
                      f"exec {rootless_cmd()} run --rm --env-host -v \"$HOME:$HOME\" busybox "
                      f"sh -c 'echo job $SLURM_JOB_ID > \"$HOME/{name}\"'\n")
    try:
        out = slurm("sbatch", "--wait", "-t", SLURM_TIME, "-o", str(tmp_path / "out.txt"), str(script),
                    env=job_env, cwd=tmp_path)
        assert out.returncode == 0, (out.stdout, out.stderr, (tmp_path / "out.txt").read_text(errors="replace"))
        job = re.search(r"Submitted batch job (\d+)", out.stdout).group(1)
        written = home / name
        assert written.read_text() == f"job {job}\n"
        assert written.stat().st_uid == os.getuid()      # yours, as any file you write
    finally:
        (home / name).unlink(missing_ok=True)


def _job_cgroup(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        out[ctrls] = path
    return out


def _parse_cgroups(text: str) -> dict[str, str]:
    """/proc/PID/cgroup's lines: controllers -> path."""
    return dict(line.split(":", 2)[1:] for line in text.splitlines() if line.count(":") >= 2)


@pytest.mark.vm      # and on cgroup v2, where the step's cgroup is .../slurmstepd.scope/job_J/step_S/...
def test_container_stays_in_the_job_step_cgroup_and_cpuset(job_env):
    """-c1 gives the step one core (task/cgroup, ConstrainCores): the container sees the same one,
    and its process is in the step's own cgroups, even with ROOTLESS_CGROUP_PARENT naming
    delegated cgroups (the submitting shell's setting, ignored in a job)."""
    env = dict(job_env)
    if os.environ.get("ROOTLESS_TEST_CGROUPS"):
        env["ROOTLESS_CGROUP_PARENT"] = os.environ["ROOTLESS_TEST_CGROUPS"]
    rl = rootless_cmd()
    name = f"slurm-cg-{uuid.uuid4().hex[:8]}"
    script = (f"grep Cpus_allowed_list /proc/self/status; "
              f"{rl} run --rm busybox sh -c 'grep Cpus_allowed_list /proc/self/status; nproc'; "
              f"{rl} run -d --name {name} busybox sleep 60 >/dev/null || exit 3; "
              f"pid=$({rl} inspect -f '{{{{.State.Pid}}}}' {name}); echo step $$; echo container $pid; "
              f"sleep 0.5; cat /proc/$$/cgroup /proc/$pid/cgroup > /dev/null; "
              f"echo ---; cat /proc/$$/cgroup; echo ---; cat /proc/$pid/cgroup; "
              f"{rl} rm -f {name} > /dev/null")
    out = slurm("srun", "-n1", "-c1", "-t", SLURM_TIME, "sh", "-c", script, env=env)
    assert out.returncode == 0, (out.stdout, out.stderr)
    lines = out.stdout.splitlines()
    step_cpus, container_cpus, nproc = lines[0], lines[1], lines[2]
    assert step_cpus.startswith("Cpus_allowed_list:") and container_cpus == step_cpus, out.stdout
    assert nproc == "1", out.stdout
    _, step_cg, container_cg = out.stdout.split("---\n")
    step, cont = _parse_cgroups(step_cg), _parse_cgroups(container_cg)
    in_job = {k: v for k, v in step.items() if re.search(r"/job_\d+/step_", v)}
    assert in_job, f"the step is in no Slurm cgroup: {step}"
    for ctrls, path in in_job.items():
        assert cont.get(ctrls) == path, f"the container left the step's {ctrls} cgroup: {cont.get(ctrls)} != {path}"
    for ctrls, path in step.items():     # nor was it moved in any other hierarchy
        assert cont.get(ctrls) == path, (ctrls, step, cont)


def test_two_steps_of_one_job_at_once(job_env, tmp_path):
    """Two job steps (one core each, --exact) run containers that each wait for the other's."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    rl = rootless_cmd()
    step = ("{rl} run --rm -v {d}:/shared busybox sh -c "
            "'touch /shared/{me}; i=0; while [ ! -e /shared/{other} ]; do i=$((i+1)); "
            "[ $i -gt 600 ] && exit 7; sleep 0.1; done; echo {me} saw {other}'")
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n"
                      f"srun -n1 --exact {step.format(rl=rl, d=shared, me='a', other='b')} &\n"
                      f"srun -n1 --exact {step.format(rl=rl, d=shared, me='b', other='a')} &\n"
                      "wait %1 || exit 1\nwait %2 || exit 2\n")
    out_file = tmp_path / "out.txt"
    out = slurm("sbatch", "--wait", "-n2", "-t", SLURM_TIME, "-o", str(out_file), str(script),
                env=job_env, cwd=tmp_path)
    text = out_file.read_text(errors="replace") if out_file.exists() else ""
    assert out.returncode == 0, (out.stdout, out.stderr, text)
    assert sorted(text.split("\n")[:2]) == ["a saw b", "b saw a"] or \
        {"a saw b", "b saw a"} <= set(text.splitlines()), text


# --- scancel ---------------------------------------------------------------------------------

def _my_processes() -> dict[int, str]:
    """pid -> start time, of every process of ours and of our containers that /proc shows us."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = (d / "stat").read_text().rsplit(")", 1)[1].split()[19]
            except (OSError, IndexError):
                pass
    return out


def _belongs(pid: int, job: str, cid: list[str]) -> bool:
    """Whether process ``pid`` is the job's: in its cgroup, started with its environment, or
    naming one of its containers (a FUSE daemon's mount point, a monitor)."""
    try:
        if any(re.search(rf"/job_{job}(/|$)", p) for p in _job_cgroup(pid).values()):
            return True
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if any(c in cmd for c in cid):
            return True
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return f"SLURM_JOB_ID={job}".encode() in env
    except OSError:          # gone, or another user's (a container's process as a sub-id)
        return False


def _alive(pid: int, start: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[19] == start and stat[0] != "Z"


def _mounts_naming(cid: list[str]) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                text = (d / "mountinfo").read_text()
            except OSError:
                continue
            found += [f"{d.name}: {line}" for line in text.splitlines() if any(c in line for c in cid)]
    return found


def test_scancel_leaves_no_process_or_mount(rl, job_env, tmp_path):
    """A job with a detached container (its monitor) and a foreground one (slirp4netns, the
    FUSE daemons): after scancel none of their processes runs and nothing of them is mounted."""
    tag = uuid.uuid4().hex[:8]
    names = [f"slurm-kill-d-{tag}", f"slurm-kill-f-{tag}"]
    rlc = rootless_cmd()
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n"
                      f"{rlc} run -d --name {names[0]} busybox sleep 300 || exit 3\n"
                      f"exec {rlc} run --rm --name {names[1]} busybox sleep 300\n")
    # The job shares a run-time directory where a container run outside any job has left the
    # per-user fork server running: the job must not hand its FUSE daemons or monitors to it
    # (they would be outside the job's cgroup, and survive scancel).  A short path: sockets
    # below it hold 108 bytes.
    run = Path(tempfile.mkdtemp(prefix="rl-slurm-", dir="/tmp"))
    env = {**job_env, "XDG_RUNTIME_DIR": str(run)}
    rl("run", "--rm", "busybox", "true", check=True, env={"XDG_RUNTIME_DIR": str(run)})
    before = _my_processes()
    out = slurm("sbatch", "--parsable", "-t", SLURM_TIME, "-o", str(tmp_path / "out.txt"), str(script),
                env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 60
        cids: list[str] = []
        while time.monotonic() < deadline:
            ps = rl("ps", "-q", "--filter", f"name=-{tag}")
            cids = ps.stdout.split()
            if len(cids) == 2:
                break
            time.sleep(0.2)
        assert len(cids) == 2, (cids, (tmp_path / "out.txt").read_text(errors="replace"))
        time.sleep(1)    # both sleeps started (ps lists a container once it runs)
        theirs = {pid: start for pid, start in _my_processes().items()
                  if pid not in before and pid != os.getpid() and _belongs(pid, job, cids)}
        cmds = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for pid in theirs
                if Path(f"/proc/{pid}/cmdline").exists()}
        assert len(theirs) >= 4, cmds       # the job's shell or run, a monitor, containers, helpers
        assert _mounts_naming(cids), "the containers' mounts were not found while they ran"
        out = slurm("scancel", job, env=job_env, timeout=30)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            q = slurm("squeue", "-h", "-j", job, "-o", "%T", env=job_env, timeout=30)
            left = [pid for pid, start in theirs.items() if _alive(pid, start)]
            if not q.stdout.strip() and not left:
                break
            time.sleep(0.2)
        left = {pid: cmds.get(pid) for pid, start in theirs.items() if _alive(pid, start)}
        assert not left, f"processes of job {job} outlived scancel: {left}"
        assert not _mounts_naming(cids), _mounts_naming(cids)
    finally:
        slurm("scancel", job, env=job_env, timeout=30)
        rl("rm", "-f", *names, timeout=60)
        stop_background(run)
        shutil.rmtree(run, ignore_errors=True)


def _wait_gone(job: str, env: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not slurm("squeue", "-h", "-j", job, "-o", "%T", env=env, timeout=30).stdout.strip():
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job} still in the queue after {timeout} s")


@pytest.mark.skipif(not (shutil.which("mksquashfs") and shutil.which("squashfuse")),
                    reason="squashfs-tools and squashfuse are not installed")
def test_squashfs_mount_is_each_jobs_own(rl, job_env, tmp_path):
    """Two jobs of one user on one node run containers of the same squashfs file; cancelling the
    first leaves the second's container reading its image (the mount is not shared between
    jobs: the first job's end would have taken it away)."""
    sqfs = tmp_path / "bb.sqfs"
    rl("save", "--format", "squashfs", "busybox", "-o", str(sqfs), check=True, timeout=120)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    rlc = rootless_cmd()
    jobs = {}
    for me, body in (("a", "touch /shared/a-up; exec sleep 300"),
                     ("b", "touch /shared/b-up; i=0; while [ ! -e /shared/go ]; do i=$((i+1)); "
                           "[ $i -gt 900 ] && exit 7; sleep 0.1; done; "
                           "cat /bin/busybox > /dev/null && echo b-read-ok")):
        script = tmp_path / f"{me}.sh"
        script.write_text(f"#!/bin/sh\nexec {rlc} run --rm --network none -v {shared}:/shared {sqfs} sh -c '{body}'\n")
        out = slurm("sbatch", "--parsable", "-t", SLURM_TIME, "-o", str(tmp_path / f"{me}.out"), str(script),
                    env=job_env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        jobs[me] = out.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not ((shared / "a-up").exists() and (shared / "b-up").exists()):
            time.sleep(0.2)
        assert (shared / "a-up").exists() and (shared / "b-up").exists(), \
            [(tmp_path / f"{m}.out").read_text(errors="replace") for m in "ab" if (tmp_path / f"{m}.out").exists()]
        assert slurm("scancel", jobs["a"], env=job_env, timeout=30).returncode == 0
        _wait_gone(jobs["a"], job_env)
        time.sleep(1)
        (shared / "go").touch()
        _wait_gone(jobs["b"], job_env, timeout=90)
        assert (tmp_path / "b.out").read_text(errors="replace").strip() == "b-read-ok"
    finally:
        for j in jobs.values():
            slurm("scancel", j, env=job_env, timeout=30)


@pytest.mark.vm
def test_memory_limit_of_the_job_applies(job_env):
    """srun --mem: a container that needs more is killed by the job's memory limit.  Needs a
    cluster that confines memory (ConstrainRAMSpace, cgroup/v2): not the CI host, whose memory
    hierarchy belongs to its supervisor."""
    probe = slurm("srun", "-n1", "--mem=64M", "-t", SLURM_TIME, "sh", "-c",
                  # the limit is on the job's or the step's cgroup, above the task's
                  "p=$(sed -n 's/^0:://p' /proc/self/cgroup); while [ -n \"$p\" ]; do "
                  "v=$(cat /sys/fs/cgroup$p/memory.max 2>/dev/null); case $v in [0-9]*) echo $v; exit;; esac; "
                  "p=${p%/*}; done; echo none", env=job_env)
    limit = probe.stdout.strip()
    if probe.returncode != 0 or not limit.isdigit():
        detail = (f"no memory.max in the job's cgroup v2: {limit}" if probe.returncode == 0
                  else "srun --mem refused: " + (probe.stderr.strip().splitlines() or ["?"])[0][:200])
        pytest.skip(f"Slurm confines no memory on this cluster ({detail})")
    # dd's one block is a buffer of that size, filled: 16 MB fit in the job's 64 MB, 400 MB do not
    ok = slurm("srun", "-n1", "--mem=64M", "-t", SLURM_TIME, *rootless_cmd().split(), "run", "--rm", "busybox",
               "sh", "-c", "dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null && echo fits", env=job_env)
    assert ok.returncode == 0 and ok.stdout.strip() == "fits", (limit, ok.stdout, ok.stderr)
    big = slurm("srun", "-n1", "--mem=64M", "-t", SLURM_TIME, *rootless_cmd().split(), "run", "--rm", "busybox",
                "sh", "-c", "dd if=/dev/zero of=/dev/null bs=400M count=1 2>/dev/null && echo fits", env=job_env)
    assert big.returncode != 0 and "fits" not in big.stdout, (limit, big.stdout, big.stderr)
