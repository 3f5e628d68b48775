"""Commands handed to the fork server (cli/client.py, cli/served.py) behave as if run by the CLI:
its environment, working directory, umask, exit status and output; ``--rm`` leaves nothing that
``ps -a`` or a name could see once the command has returned."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from .conftest import ROOTLESS, wait_for_fork_server

pytestmark = pytest.mark.both_modes


@pytest.mark.parametrize("handover", ["1", "0"])
def test_caller_environment_cwd_and_umask(rl, tmp_path, handover):
    wait_for_fork_server(rl)
    (tmp_path / "vars").write_text("FROM_FILE=yes\n")
    env = {**rl.env, "ROOTLESS_HANDOVER": handover, "PASSED": "from-the-caller", "TZ": "UTC"}
    script = 'echo "$PASSED $FROM_FILE"; cat /w/marker'
    (tmp_path / "marker").write_text("cwd\n")
    proc = subprocess.run([*ROOTLESS, "run", "--rm", "-e", "PASSED", "--env-file", "vars", "-v", ".:/w",
                           "busybox", "sh", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from-the-caller yes\ncwd\n"


@pytest.mark.parametrize("handover", ["1", "0"])
def test_exit_status_and_output_order(rl, handover):
    wait_for_fork_server(rl)
    proc = rl("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 7",
              env={"ROOTLESS_HANDOVER": handover, "ROOTLESS_NO_SINGLE_UID_WARNING": "1"})
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    bad = rl("run", "--rm", "--no-such-flag", "busybox", env={"ROOTLESS_HANDOVER": handover})
    assert bad.returncode == 125 and "no-such-flag" in bad.stderr


def test_removed_container_is_gone_when_run_returns(rl):
    """``run --rm`` may finish removing the files after it has answered, never the record."""
    wait_for_fork_server(rl)
    for _ in range(3):
        assert rl("run", "--rm", "--name", "handed-rm", "busybox", "true").returncode == 0
        assert "handed-rm" not in rl("ps", "-a", "--format", "{{.Names}}").stdout.split()
    created = rl("run", "-d", "--name", "handed-rm", "busybox", "sleep", "30")
    assert created.returncode == 0, created.stderr
    assert rl("rm", "-f", "handed-rm").returncode == 0
    assert rl("run", "--rm", "--name", "handed-rm", "busybox", "true").returncode == 0


def test_terminal_commands_run_in_the_cli(rl):
    """-t needs the caller's terminal (job control, window size): the CLI keeps the command."""
    import pty
    wait_for_fork_server(rl)
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([*ROOTLESS, "run", "--rm", "-t", "--name", "handed-tty", "busybox", "sleep", "2"],
                             env=rl.env, stdin=slave, stdout=slave, stderr=slave)
        deadline = time.monotonic() + 20
        owner = 0
        while time.monotonic() < deadline and not owner:
            try:
                owner = json.loads((rl.container_dir("handed-tty") / "config.json").read_text())["owner_pid"]
            except (LookupError, OSError, ValueError, KeyError):
                time.sleep(0.05)
        assert owner == p.pid
        assert p.wait(timeout=20) == 0
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("handover", ["1", "0"])
def test_cpu_affinity_and_nice_value_are_the_callers(rl, handover):
    """A Slurm task's CPU binding (taskset here), nice value and limits reach the container."""
    wait_for_fork_server(rl)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: no binding to tell apart")
    script = "grep Cpus_allowed_list /proc/self/status | cut -f2; cut -d' ' -f19 /proc/self/stat; ulimit -H -c"
    prlimit = ["prlimit", "--core=0:0"] if shutil.which("prlimit") else []
    proc = subprocess.run(["taskset", "-c", str(cpus[-1]), "nice", "-n", "7", *prlimit, *ROOTLESS, "run", "--rm",
                           "--network", "none", "busybox", "sh", "-c", script],
                          env={**rl.env, "ROOTLESS_HANDOVER": handover}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    assert out[:2] == [str(cpus[-1]), str(os.getpriority(os.PRIO_PROCESS, 0) + 7)]
    if prlimit:
        assert out[2] == "0"        # a hard limit the caller lowered
