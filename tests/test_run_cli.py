"""``rootless run`` as a user meets it: exit codes, signals, stdin, ttys, image config, errors."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import tarfile
import termios
import time
from pathlib import Path

import pytest

from .conftest import RANGE_MODE, ROOTLESS, needs_range, subid_range, wait_for_fork_server

pytestmark = pytest.mark.both_modes


@pytest.mark.parametrize("script, code", [("exit 0", 0), ("exit 3", 3), ("exit 255", 255)])
def test_exit_status_is_the_commands(rl, script, code):
    assert rl("run", "--rm", "busybox", "sh", "-c", script).returncode == code


def test_command_not_found_is_127(rl):
    proc = rl("run", "--rm", "busybox", "nosuchcommand")
    assert proc.returncode == 127
    assert 'exec: "nosuchcommand": executable file not found in $PATH' in proc.stderr


def test_command_not_executable_is_126(rl):
    proc = rl("run", "--rm", "busybox", "/etc/passwd")
    assert proc.returncode == 126
    assert "permission denied" in proc.stderr


def test_missing_image_is_125_with_fix(rl):
    proc = rl("run", "--rm", "no-such-image", "true")
    assert proc.returncode == 125
    assert "image 'no-such-image:latest' is not in the local store" in proc.stderr
    assert "rootless import" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_flag_is_125(rl):
    proc = rl("run", "--no-such-flag", "busybox", "true")
    assert proc.returncode == 125
    assert "No such option" in proc.stderr and "--no-such-flag" in proc.stderr


def test_flags_after_the_image_belong_to_the_command(rl):
    proc = rl("run", "--rm", "busybox", "echo", "-e", "--rm")
    assert proc.stdout == "--rm\n" or proc.stdout.strip() == "-e --rm"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _engine_pid(rl, launcher: subprocess.Popen, name: str, timeout: float = 20) -> int:
    """The process that runs the engine for ``launcher`` (a ``run --name NAME``): the CLI itself,
    or the fork server's child it handed the command to (cli/client.py): the record's owner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            owner = json.loads((rl.container_dir(name) / "config.json").read_text()).get("owner_pid")
        except (LookupError, OSError, ValueError):
            owner = None
        if owner:
            return int(owner)
        time.sleep(0.02)
    raise AssertionError(f"no record of {name} names its owner (launcher {launcher.pid})")


def _container_pid1(engine: int, command: str, timeout: float = 20) -> int:
    """The host pid of the container's PID 1 once it runs ``command``: a child of the engine's
    process (``_engine_pid``) once the intermediate process has exited (a grandchild while that
    one lives)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in _children(engine):
            for kid in [c, *_children(c)]:
                try:
                    argv0 = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                if argv0.decode() == command:
                    return kid
        time.sleep(0.02)
    raise AssertionError("the container's PID 1 did not appear")


# The engine runs in the CLI's process (ROOTLESS_HANDOVER=0), or in the fork server's child the
# CLI handed the command to: the process model and the CLI's behaviour must be the same.
HANDOVER = pytest.mark.parametrize("handover", ["1", "0"])


def _handover_ready(rl, handover: str) -> None:
    """With ``handover`` "1": a fork server answers, so that the next command is handed to it."""
    if handover != "0":
        wait_for_fork_server(rl)


def _wait_for_line(stream, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            if text.encode() in buf:
                return
    raise AssertionError(f"did not see {text!r}; got {buf!r}")


def _sleeping(rl, name: str, handover: str) -> subprocess.Popen:
    """``run --rm --name NAME busybox sleep 60`` in the background, handed over or not."""
    return rl.popen("run", "--rm", "--name", name, "busybox", "sleep", "60", stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env={"ROOTLESS_HANDOVER": handover})


@HANDOVER
def test_killed_by_signal_is_128_plus_n(rl, handover):
    _handover_ready(rl, handover)
    name = f"killed-{handover}"
    p = _sleeping(rl, name, handover)
    try:
        engine = _engine_pid(rl, p, name)
        assert (engine == p.pid) == (handover == "0")
        pid1 = _container_pid1(engine, "sleep")
        # no intermediate process stays: the engine (a child subreaper) is PID 1's parent
        assert int(Path(f"/proc/{pid1}/stat").read_text().rsplit(")", 1)[1].split()[1]) == engine
        os.kill(pid1, signal.SIGKILL)
        assert p.wait(timeout=20) == 128 + signal.SIGKILL
    finally:
        p.kill()
        p.wait()


@HANDOVER
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_user_signals_reach_the_container(rl, sig, handover):
    _handover_ready(rl, handover)
    script = f'trap "echo got {sig.name}; exit 42" {sig.name[3:]}; echo ready; while true; do sleep 0.1; done'
    p = rl.popen("run", "--rm", "busybox", "sh", "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 env={"ROOTLESS_HANDOVER": handover})
    try:
        _wait_for_line(p.stdout, "ready")
        p.send_signal(sig)
        assert p.wait(timeout=20) == 42
        assert f"got {sig.name}" in p.stdout.read().decode()
    finally:
        p.kill()
        p.wait()


@HANDOVER
def test_only_the_main_thread_may_take_forwarded_signals(rl, handover):
    """The foreground run's helper threads (log pumps) block the signals it forwards: a signal
    sent to the process while the main thread still blocks them (the container just started)
    must wait for its handler, never be taken by a thread with the default action (SIGHUP's
    ends the process: 'run' died with -1 instead of forwarding it)."""
    import signal as _signal
    _handover_ready(rl, handover)
    name = f"threads-{handover}"
    p = rl.popen("run", "--rm", "--name", name, "busybox", "sleep", "30", stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, env={"ROOTLESS_HANDOVER": handover})
    try:
        engine = _engine_pid(rl, p, name)
        _container_pid1(engine, "sleep")
        tasks = [t for t in os.listdir(f"/proc/{engine}/task") if int(t) != engine]
        assert tasks, "the foreground run has no helper thread to check"
        wanted = 0
        for sig in (_signal.SIGHUP, _signal.SIGINT, _signal.SIGTERM, _signal.SIGQUIT, _signal.SIGUSR1):
            wanted |= 1 << (sig - 1)
        for tid in tasks:
            status = Path(f"/proc/{engine}/task/{tid}/status").read_text()
            blocked = int(status.split("SigBlk:")[1].split()[0], 16)
            assert blocked & wanted == wanted, f"thread {tid} takes forwarded signals (SigBlk {blocked:x})"
    finally:
        p.kill()
        p.wait()


@HANDOVER
def test_killing_the_cli_ends_the_container(rl, handover):
    _handover_ready(rl, handover)
    name = f"killed-cli-{handover}"
    p = _sleeping(rl, name, handover)
    pid1 = _container_pid1(_engine_pid(rl, p, name), "sleep")
    p.kill()
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid1}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid1}")


def test_stdin_pipes_with_i(rl):
    proc = rl("run", "--rm", "-i", "busybox", "sh", "-c", "tr a-z A-Z; echo done >&2", input="hello pipe\n")
    assert proc.returncode == 0
    assert proc.stdout == "HELLO PIPE\n"
    assert proc.stderr.endswith("done\n")


def test_stdin_is_empty_without_i(rl):
    proc = rl("run", "--rm", "busybox", "cat", input="ignored\n")
    assert proc.returncode == 0 and proc.stdout == ""


def test_binary_output_passes_through(rl):
    proc = rl("run", "--rm", "-i", "busybox", "cat", input=bytes(range(256)) * 64)
    assert proc.stdout == bytes(range(256)) * 64


def _read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and needle not in buf:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_tty_session(rl):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    p = rl.popen("run", "--rm", "-it", "busybox", "sh", stdin=slave, stdout=slave, stderr=slave,
                 start_new_session=True)
    os.close(slave)
    try:
        assert b"# " in _read_until(master, b"# ")  # busybox's prompt: the shell reads its terminal
        os.write(master, b"tty; echo TERM=$TERM; stty size; [ -t 0 ] && echo STDIN-IS-TTY-$((6*7))\n")
        out = _read_until(master, b"STDIN-IS-TTY-42")
        assert b"/dev/pts/0" in out
        assert b"TERM=xterm" in out
        assert b"33 101" in out
        # The window size follows the user's terminal.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.kill(p.pid, signal.SIGWINCH)
        time.sleep(0.3)
        os.write(master, b"stty size; echo SIZE-$((6*7))\n")
        out = _read_until(master, b"SIZE-42")
        assert b"40 120" in out
        # Ctrl-C goes to the container's foreground job, not to rootless.
        os.write(master, b"sleep 30\n")
        time.sleep(0.5)
        os.write(master, b"\x03")
        os.write(master, b"echo after-$((6*7)); exit 7\n")
        assert b"after-42" in _read_until(master, b"after-42")
        assert p.wait(timeout=20) == 7
    finally:
        p.kill()
        p.wait()
        os.close(master)


def test_tty_input_typed_before_the_shell_is_ready_is_kept(rl):
    """Typed ahead, as a user pasting a command or a script feeding a terminal: nothing is lost
    (the terminal used to be put in raw mode with a flush of its pending input)."""
    master, slave = pty.openpty()
    p = rl.popen("run", "--rm", "-it", "busybox", "sh", stdin=slave, stdout=slave, stderr=slave,
                 start_new_session=True)
    os.write(master, b"echo typed-ahead-$((6*7)); exit 3\n")    # before rootless even started
    os.close(slave)
    try:
        assert b"typed-ahead-42" in _read_until(master, b"typed-ahead-42")
        assert p.wait(timeout=20) == 3
    finally:
        p.kill()
        p.wait()
        os.close(master)


def test_tty_window_size_is_set_before_the_command_starts(rl):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 27, 93, 0, 0))
    p = rl.popen("run", "--rm", "-t", "busybox", "stty", "size", stdin=slave, stdout=slave, stderr=slave,
                 start_new_session=True)
    os.close(slave)
    try:
        assert b"27 93" in _read_until(master, b"27 93")
        assert p.wait(timeout=20) == 0
    finally:
        p.kill()
        p.wait()
        os.close(master)


def test_it_without_a_terminal_is_refused(rl):
    proc = rl("run", "--rm", "-it", "busybox", "true", input="")
    assert proc.returncode == 125
    assert "the input device is not a TTY" in proc.stderr


def test_env_flags_and_env_file(rl, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n  FROM_FILE=yes\nOVERRIDDEN=file\n\n")
    proc = rl("run", "--rm", "--env-file", str(env_file), "-e", "OVERRIDDEN=flag", "-e", "PASSED",
              "-e", "UNSET_ON_HOST", "busybox", "sh", "-c",
              'echo "$FROM_FILE $OVERRIDDEN $PASSED ${UNSET_ON_HOST-unset} $HOME $PATH"',
              env={"PASSED": "from-host"})
    assert proc.stdout.split() == ["yes", "flag", "from-host", "unset", "/root",
                                   "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    proc = rl("run", "--rm", "--env-file", str(tmp_path / "missing"), "busybox", "true")
    assert proc.returncode == 125 and "cannot read env file" in proc.stderr


def test_workdir_is_created(rl):
    assert rl("run", "--rm", "-w", "/srv/app", "busybox", "pwd").stdout == "/srv/app\n"
    proc = rl("run", "--rm", "-w", "relative", "busybox", "pwd")
    assert proc.returncode == 125 and "needs to be an absolute path" in proc.stderr


def test_entrypoint_override_resets_cmd(rl):
    assert rl("run", "--rm", "--entrypoint", "echo", "busybox", "a", "b").stdout == "a b\n"
    # busybox's CMD is /bin/sh: with an entrypoint of echo and no command, echo prints an empty line.
    assert rl("run", "--rm", "--entrypoint", "echo", "busybox").stdout == "\n"


def test_image_config_is_honoured(rl, busybox_tar):
    changes = ['ENTRYPOINT ["/bin/sh", "-c"]', 'CMD ["echo $GREETING from $(pwd) as $(id -u) on $HOSTNAME"]',
               "ENV GREETING=hello HOSTNAME=from-image", "WORKDIR /work"]
    if RANGE_MODE:
        changes.append("USER 1000")
    args = [a for c in changes for a in ("-c", c)]
    assert rl("import", *args, str(busybox_tar), "configured", check=True).returncode == 0
    expected_uid = "1000" if RANGE_MODE else "0"
    assert rl("run", "--rm", "configured").stdout == f"hello from /work as {expected_uid} on from-image\n"
    # Flags override the image.
    assert rl("run", "--rm", "-u", "0", "-w", "/", "-e", "GREETING=hi", "configured").stdout \
        == "hi from / as 0 on from-image\n"


def test_image_without_command(rl, busybox_tar):
    rl("import", str(busybox_tar), "nocmd", check=True)
    proc = rl("run", "--rm", "nocmd")
    assert proc.returncode == 125 and "no command specified" in proc.stderr


def test_ps_shows_why_a_start_failed(rl):
    assert rl("run", "--name", "failed-start", "busybox", "nosuchcommand").returncode == 127
    try:
        assert "Exited (127)" in rl("ps", "-a", "--format", "json").stdout
    finally:
        rl("rm", "failed-start")


def test_name_must_be_unique(rl):
    assert rl("run", "--name", "unique1", "busybox", "true").returncode == 0
    proc = rl("run", "--name", "unique1", "busybox", "true")
    assert proc.returncode == 125 and "already in use" in proc.stderr
    ps = rl("ps", "-a", "--format", "json").stdout
    assert "unique1" in ps and "Exited (0)" in ps
    assert rl("rm", "unique1").returncode == 0
    assert "unique1" not in rl("ps", "-a").stdout


def test_rm_removes_the_container(rl):
    before = set(os.listdir(rl.root / "containers"))
    assert rl("run", "--rm", "busybox", "sh", "-c", "mkdir -p /a/b; touch /a/b/c").returncode == 0
    assert set(os.listdir(rl.root / "containers")) == before


def test_userns_disabled_is_explained(rl, tmp_path):
    # A user namespace of our own whose user.max_user_namespaces is 0: exactly what an
    # administrator's switch does, without touching the host.
    script = ('echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"')
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh",
                           *ROOTLESS,
                           "run", "--rm", "busybox", "true"],
                          capture_output=True, text=True, timeout=60,
                          env={**rl.env, "XDG_RUNTIME_DIR": str(tmp_path)})
    assert proc.returncode == 125, proc.stderr
    assert "user.max_user_namespaces is 0" in proc.stderr
    assert "sysctl -w user.max_user_namespaces" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_range
def test_owner_outside_the_subuid_range_is_refused(rl, tmp_path):
    count = subid_range("uid")[1]
    tar_path = tmp_path / "big-uid.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("far-away")
        info.uid = count + 10
        tar.addfile(info)
    proc = rl("import", str(tar_path), "biguid")
    assert proc.returncode == 125
    assert f"owned by uid {count + 10}" in proc.stderr and "/etc/subuid" in proc.stderr
    assert not any(n.startswith(".tmp") for n in os.listdir(rl.root / "layers"))


def test_runtime_dir_fallback_without_xdg(rl):
    env = {k: v for k, v in rl.env.items() if k != "XDG_RUNTIME_DIR"}
    env["ROOTLESS_STORAGE_DRIVER"] = "overlay"  # no fuse-overlay server left behind in that directory,
    env["ROOTLESS_FORKSERVER"] = "0"            # nor one started for the next command (cli/client.py)
    path = Path(f"/tmp/rootless-run-{os.getuid()}")
    proc = subprocess.run([*ROOTLESS,
                           "run", "--rm", "busybox", "true"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    st = path.stat()
    assert st.st_uid == os.getuid() and (st.st_mode & 0o777) == 0o700
    os.chmod(path, 0o755)
    try:
        proc = subprocess.run([*ROOTLESS,
                               "run", "--rm", "busybox", "true"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 125
        assert f"chmod 700 {path}" in proc.stderr
    finally:
        os.chmod(path, 0o700)
