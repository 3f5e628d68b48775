"""Logs, attach and exec through the API, end to end with Docker's own clients: ``docker
run`` in the foreground (create, attach, wait, start), ``docker logs``, ``docker exec``,
``docker attach``, and docker-py.  A terminal for ``-t`` comes from util-linux's ``script``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from tests.api.conftest import DOCKER, needs_docker
from tests.conftest import needs_range, read_until

pytestmark = [pytest.mark.both_modes, needs_docker]

SCRIPT = shutil.which("script")
needs_script = pytest.mark.skipif(SCRIPT is None, reason="util-linux's script is not installed")


def _name(what: str) -> str:
    return f"st-{what}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def names(api):
    made: list[str] = []

    def make(what: str) -> str:
        made.append(_name(what))
        return made[-1]
    yield make
    for n in made:
        api.docker("rm", "-f", n)


def _until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _exited(api, name: str) -> int:
    state = _until(lambda: (lambda s: s if s.get("Status") != "running" else None)(
        json.loads(api.docker("inspect", "--format", "{{json .State}}", name, check=True).stdout)),
        f"{name} to exit")
    return state["ExitCode"]


def _in_terminal(api, command: str, input: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
    """``command`` (a shell line running docker) with a terminal, through ``script``."""
    return subprocess.run([SCRIPT, "-qefc", command, "/dev/null"], input=input, capture_output=True,
                          timeout=timeout, env=api.docker_env())


def _log_fds(api) -> int:
    """How many of the service's descriptors are containers' logs (open while a stream reads one)."""
    fd_dir = f"/proc/{api.proc.pid}/fd"
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)).endswith("ctr.log"):
                count += 1
        except OSError:
            pass
    return count


# --- docker run in the foreground: create, attach, wait, start ------------------------------

def _without_create_warnings(stderr: str) -> str:
    """docker prints create's Warnings as 'WARNING: ...' (single-uid mode has one)."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("WARNING: "))


def test_run_prints_stdout_and_stderr_apart_and_exits_with_the_code(api, names):
    proc = api.docker("run", "--name", names("run"), "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "out\n"
    assert _without_create_warnings(proc.stderr) == "err\n"


def test_run_rm_prints_the_output_and_exits_with_the_code(api):
    proc = api.docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert proc.stdout == "out\n"
    assert _without_create_warnings(proc.stderr) == "err\n"
    assert proc.returncode == 3, proc.stderr


def test_run_output_written_at_once_is_not_lost(api, names):
    name = names("fast")
    proc = api.docker("run", "--name", name, "busybox", "seq", "1", "2000")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(i) for i in range(1, 2001)]


def test_run_i_passes_stdin_and_its_end(api):
    proc = api.docker("run", "-i", "--rm", "busybox", "cat", input="hi\nthere\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\nthere\n"


@needs_script
def test_run_t_has_a_terminal(api):
    proc = _in_terminal(api, f"{DOCKER} run -t --rm busybox sh -c 'tty; echo done'")
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
    assert "/dev/pts/" in out and "done" in out


@needs_script
def test_run_it_sends_keys_to_the_terminal(api, names):
    name = names("it")
    proc = _in_terminal(api, f"{DOCKER} run -it --name {name} busybox sh -c 'read x; echo got-$x; exit 4'",
                        input=b"abc\n")
    out = proc.stdout.decode(errors="replace")
    assert "got-abc" in out, out + proc.stderr.decode(errors="replace")
    assert _exited(api, name) == 4
    assert proc.returncode == 4, out


def _read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    return read_until(fd, needle, timeout)


@pytest.mark.parametrize("how", ["run", "exec"])
def test_the_terminal_gets_the_clients_window_size(api, names, how):
    """docker resizes the container's (or the exec's) terminal to its own once it runs."""
    import fcntl
    import pty
    import struct
    import termios
    wait_for_size = "while [ \"$(stty size)\" != '31 97' ]; do sleep 0.1; done; echo resized-ok"
    if how == "run":
        args = ["run", "-it", "--name", names("size"), "busybox", "sh", "-c", wait_for_size]
    else:
        name = names("esize")
        api.docker("run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
        args = ["exec", "-it", name, "sh", "-c", wait_for_size]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 31, 97, 0, 0))
    p = subprocess.Popen([DOCKER, *args], stdin=slave, stdout=slave, stderr=slave, env=api.docker_env(),
                         start_new_session=True)
    os.close(slave)
    try:
        out = _read_until(master, b"resized-ok")
        assert b"resized-ok" in out, out
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


# --- logs -----------------------------------------------------------------------------------

def test_logs_streams_tail_timestamps_since(api, names):
    name = names("logs")
    api.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
               "echo one; echo two; echo oops >&2; echo three", check=True)
    assert _exited(api, name) == 0
    proc = api.docker("logs", name, check=True)
    assert proc.stdout == "one\ntwo\nthree\n" and proc.stderr == "oops\n"
    quiet = names("tail")      # one stream only: lines of two streams are logged in either order
    api.docker("run", "-d", "--name", quiet, "busybox", "sh", "-c", "echo one; echo two; echo three", check=True)
    assert _exited(api, quiet) == 0
    proc = api.docker("logs", "--tail", "1", quiet, check=True)
    assert proc.stdout == "three\n" and proc.stderr == ""
    proc = api.docker("logs", "--timestamps", name, check=True)
    first = proc.stdout.splitlines()[0]
    stamp, _, text = first.partition(" ")
    assert text == "one" and stamp.endswith("Z") and "T" in stamp
    assert api.docker("logs", "--since", "2000-01-01T00:00:00Z", name, check=True).stdout == "one\ntwo\nthree\n"
    assert api.docker("logs", "--since", "2100-01-01T00:00:00Z", name, check=True).stdout == ""
    assert api.docker("logs", "--until", "2000-01-01T00:00:00Z", name, check=True).stdout == ""


def test_logs_of_a_terminal_are_raw(api, names):
    name = names("ttylogs")
    api.docker("run", "-dt", "--name", name, "busybox", "sh", "-c", "echo a; echo b >&2", check=True)
    assert _exited(api, name) == 0
    r = api.http().get(f"/containers/{name}/logs?stdout=1&stderr=1")
    assert r.content == b"a\r\nb\r\n"
    assert api.docker("logs", name, check=True).stdout == "a\nb\n"     # (text mode reads \r\n as \n)


def test_logs_follow_ends_when_the_container_does(api, names):
    name = names("follow")
    api.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
               "echo first; while [ ! -f /tmp/go ]; do sleep 0.1; done; echo last", check=True)
    follow = subprocess.Popen([DOCKER, "logs", "-f", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=api.docker_env(), text=True)
    try:
        assert follow.stdout.readline() == "first\n"
        api.docker("exec", name, "touch", "/tmp/go", check=True)
        out, err = follow.communicate(timeout=60)
        assert out == "last\n", err
        assert follow.returncode == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()


def test_logs_of_a_missing_container_is_404(api):
    r = api.http().get("/containers/no-such-container-xyz/logs?stdout=1")
    assert r.status_code == 404
    r = api.http().get("/containers/no-such-container-xyz/logs")
    assert r.status_code in (400, 404)


def test_a_client_leaving_logs_follow_frees_the_reader(api, names):
    name = names("quiet")
    api.docker("run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
    before = _log_fds(api)
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(api.socket))
    s.sendall(f"GET /v1.41/containers/{name}/logs?stdout=1&stderr=1&follow=1 HTTP/1.1\r\nHost: d\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    _until(lambda: _log_fds(api) > before, "the log to be followed")
    s.close()
    _until(lambda: _log_fds(api) == before, "the follower to end after the client left")


# --- exec -----------------------------------------------------------------------------------

def test_exec_output_input_and_exit_codes(api, names):
    name = names("exec")
    api.docker("run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
    proc = api.docker("exec", name, "sh", "-c", "echo hi; echo there >&2")
    assert proc.returncode == 0 and proc.stdout == "hi\n" and proc.stderr == "there\n"
    assert api.docker("exec", name, "sh", "-c", "exit 7").returncode == 7
    proc = api.docker("exec", "-i", name, "cat", input="in\nput\n")
    assert proc.returncode == 0 and proc.stdout == "in\nput\n"
    proc = api.docker("exec", "-e", "X=1", "-w", "/tmp", name, "sh", "-c", "echo $X $(pwd)")
    assert proc.stdout == "1 /tmp\n", proc.stderr
    proc = api.docker("exec", name, "no-such-command")
    assert proc.returncode in (126, 127) and "no-such-command" in proc.stdout + proc.stderr
    api.docker("exec", "-d", name, "sh", "-c", "echo bg > /tmp/bg", check=True)
    _until(lambda: api.docker("exec", name, "cat", "/tmp/bg").stdout == "bg\n", "the detached exec")


@needs_range
def test_exec_as_another_user(api, names):
    name = names("user")
    api.docker("run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
    proc = api.docker("exec", "-u", "1:1", name, "id", "-u")
    assert proc.stdout == "1\n", proc.stderr


def test_a_client_leaving_an_exec_ends_its_input(api, names):
    """The connection was the process's stdin: when the client goes, cat reads EOF and ends."""
    name = names("execleave")
    api.docker("run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
    c = api.http()
    exec_id = c.post(f"/containers/{name}/exec", json={"Cmd": ["cat"], "AttachStdin": True,
                                                      "AttachStdout": True}).json()["Id"]
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(api.socket))
    body = b'{"Detach": false, "Tty": false}'
    s.sendall(f"POST /v1.41/exec/{exec_id}/start HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode() + body)
    assert s.recv(4096).startswith(b"HTTP/1.1 101")
    s.sendall(b"ping\n")
    assert _demux(s.recv(4096)) == [(1, b"ping\n")]
    assert c.get(f"/exec/{exec_id}/json").json()["Running"] is True
    s.close()
    _until(lambda: c.get(f"/exec/{exec_id}/json").json()["Running"] is False, "the exec to end")


def test_exec_on_a_stopped_container_is_409(api, names):
    name = names("stopped")
    api.docker("run", "--name", name, "busybox", "true", check=True)
    r = api.http().post(f"/containers/{name}/exec", json={"Cmd": ["true"]})
    assert r.status_code == 409, r.text
    r = api.http().post("/exec/0000000000000000/start", json={})
    assert r.status_code == 404


@needs_script
def test_exec_t_has_a_terminal(api, names):
    name = names("exect")
    api.docker("run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
    proc = _in_terminal(api, f"{DOCKER} exec -t {name} sh -c 'tty; stty size; exit 5'")
    out = proc.stdout.decode(errors="replace")
    assert "/dev/pts/" in out, out + proc.stderr.decode(errors="replace")
    assert proc.returncode == 5
    proc = _in_terminal(api, f"{DOCKER} exec -it {name} sh -c 'read x; echo got-$x'", input=b"xyz\n")
    assert "got-xyz" in proc.stdout.decode(errors="replace")


# --- attach ---------------------------------------------------------------------------------

def _hijacks(api) -> int:
    return api.log.read_text(errors="replace").count("/attach?") if api.log.exists() else 0


def test_attach_to_a_running_container(api, names):
    name = names("attach")
    api.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
               "while [ ! -f /tmp/go ]; do sleep 0.1; done; echo attached-out; echo attached-err >&2; exit 2",
               check=True)
    seen = _hijacks(api)
    attach = subprocess.Popen([DOCKER, "attach", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=api.docker_env(), text=True)
    try:
        _until(lambda: _hijacks(api) > seen and "hijacked" in api.log.read_text(errors="replace"), "the attach")
        api.docker("exec", name, "touch", "/tmp/go", check=True)
        out, err = attach.communicate(timeout=60)
        assert out == "attached-out\n" and "attached-err\n" in err
        assert attach.returncode == 2
    finally:
        if attach.poll() is None:
            attach.kill()
            attach.wait()


@needs_script
def test_attach_to_a_dit_container_types_into_its_shell(api, names):
    name = names("dit")
    api.docker("run", "-dit", "--name", name, "busybox", "sh", check=True)
    proc = _in_terminal(api, f"{DOCKER} attach {name}", input=b"echo sum-$((40+2)); exit 3\n")
    out = proc.stdout.decode(errors="replace")
    assert "sum-42" in out, out + proc.stderr.decode(errors="replace")
    assert _exited(api, name) == 3
    assert proc.returncode == 3


def test_ctrl_p_ctrl_q_detaches_from_a_dit_container(api, names):
    import pty
    name = names("detach")
    api.docker("run", "-dit", "--name", name, "busybox", "sh", check=True)
    master, slave = pty.openpty()
    p = subprocess.Popen([DOCKER, "attach", name], stdin=slave, stdout=slave, stderr=slave, env=api.docker_env(),
                         start_new_session=True)
    os.close(slave)
    try:
        seen = b""
        for _ in range(20):     # the shell may still be setting up its line editor (it flushes input)
            os.write(master, b"echo ready-$((40+2))\n")
            seen += _read_until(master, b"ready-42", timeout=3)
            if b"ready-42" in seen:
                break
        assert b"ready-42" in seen                                       # attached: the shell answers
        os.write(master, b"\x10\x11")
        p.wait(timeout=60)              # docker says "read escape sequence" (status 1, its own choice)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    state = json.loads(api.docker("inspect", "--format", "{{json .State}}", name, check=True).stdout)
    assert state["Running"]                                          # it runs on


def _demux(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while data:
        size = int.from_bytes(data[4:8], "big")
        frames.append((data[0], data[8:8 + size]))
        data = data[8 + size:]
    return frames


def test_attach_logs_without_stream_gives_what_was_written(api, names):
    name = names("alogs")
    api.docker("run", "-d", "--name", name, "busybox", "sh", "-c", "echo one; echo two; sleep 300", check=True)
    _until(lambda: api.docker("logs", name).stdout == "one\ntwo\n", "the output")
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(api.socket))
    s.settimeout(60)
    s.sendall(f"POST /v1.41/containers/{name}/attach?logs=1&stream=0&stdout=1 HTTP/1.1\r\nHost: d\r\n"
              "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert b"".join(d for kind, d in _demux(body) if kind == 1) == b"one\ntwo\n"


def test_a_client_leaving_attach_frees_the_reader(api, names):
    name = names("leave")
    api.docker("run", "-d", "--name", name, "busybox", "sleep", "300", check=True)
    before = _log_fds(api)
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(api.socket))
    s.sendall(f"POST /v1.41/containers/{name}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: d\r\n"
              "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 101")
    _until(lambda: _log_fds(api) > before, "the attach to follow the log")
    s.close()
    _until(lambda: _log_fds(api) == before, "the attach to end after the client left")


# --- docker-py --------------------------------------------------------------------------------

@pytest.fixture
def client(api):
    docker = pytest.importorskip("docker")
    c = docker.DockerClient(base_url=api.url, version="1.41", timeout=120)
    yield c
    c.close()


def test_docker_py_logs_exec_and_run(api, client, names):
    name = names("py")
    c = client.containers.run("busybox", ["sh", "-c", "echo a; echo b; sleep 300"], name=name, detach=True)
    lines = c.logs(stream=True, follow=True)
    assert next(lines) == b"a\n" and next(lines) == b"b\n"
    lines.close()
    result = c.exec_run(["sh", "-c", "echo out; echo err >&2; exit 9"])
    assert result.exit_code == 9 and b"out\n" in result.output and b"err\n" in result.output
    result = c.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
    assert result.exit_code == 0 and result.output == (b"out\n", b"err\n")
    out = client.containers.run("busybox", ["sh", "-c", "echo from-run"], remove=True)
    assert out == b"from-run\n"
