"""Detached containers and their life: run -d, ps, logs, exec, stop, kill, wait, rm -f."""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import time

import pytest

from .conftest import RANGE_MODE, ROOTLESS, read_until

pytestmark = pytest.mark.both_modes

TICKER = 'trap "echo bye; exit 0" TERM; echo started; echo oops >&2; while true; do sleep 0.1; done'


def _ps(rl) -> dict[str, dict]:
    return {r["Names"]: r for r in json.loads(rl("ps", "-a", "--format", "json").stdout)}


def _until(predicate, timeout: float = 20, what=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time" + (f": {what()}" if what else ""))
        time.sleep(0.05)


@pytest.fixture
def detached(rl):
    names = []

    def start(name: str, *args: str) -> str:
        proc = rl("run", "-d", "--network", "none", "--name", name, *args)
        assert proc.returncode == 0, proc.stderr
        names.append(name)
        return proc.stdout.strip()
    yield start
    for name in names:
        rl("rm", "-f", name)


def test_run_d_outlives_the_cli_and_logs_are_kept(rl, detached):
    cid = detached("ticker", "busybox", "sh", "-c", TICKER)
    assert len(cid) == 64
    assert _ps(rl)["ticker"]["Status"].startswith("Up ")
    _until(lambda: "started" in rl("logs", "ticker").stdout)
    logs = rl("logs", "ticker")
    assert logs.stdout.startswith("started") and logs.stderr == "oops\n"
    assert rl("logs", "-t", "ticker").stdout[:2] == "20"  # RFC 3339 time first
    assert rl("stop", "ticker").returncode == 0
    assert "Exited (0)" in _ps(rl)["ticker"]["Status"]
    assert rl("logs", "--tail", "1", "ticker").stdout == "bye\n"


def test_logs_follow_until_the_end(rl, detached):
    detached("counter", "busybox", "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done")
    follow = rl("logs", "-f", "counter", timeout=30)
    assert follow.stdout.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert rl("wait", "counter").stdout.strip() == "0"


def test_exec(rl, detached):
    detached("target", "-e", "FROM_RUN=1", "busybox", "sh", "-c", TICKER)
    out = rl("exec", "target", "sh", "-c", "echo $$ $FROM_RUN; hostname; cat /proc/1/cmdline | tr '\\0' ' '")
    pid, from_run = out.stdout.split()[:2]
    assert pid != "1" and from_run == "1"
    assert "trap" in out.stdout  # PID 1 seen from the exec'd process is the container's command
    assert rl("exec", "target", "sh", "-c", "exit 7").returncode == 7
    missing = rl("exec", "target", "nosuch")
    assert missing.returncode == 127 and "executable file not found" in missing.stderr
    assert rl("exec", "-e", "X=y", "-w", "/tmp", "target", "sh", "-c", "echo $X $(pwd)").stdout == "y /tmp\n"
    assert rl("exec", "-i", "target", "cat", input="piped\n").stdout == "piped\n"


def test_exec_with_a_tty(rl, detached):
    detached("ttytarget", "busybox", "sh", "-c", TICKER)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 77, 0, 0))
    p = rl.popen("exec", "-it", "ttytarget", "sh", stdin=slave, stdout=slave, stderr=slave,
                 start_new_session=True)
    os.close(slave)
    buf = b""
    try:
        deadline = time.monotonic() + 20
        while b"# " not in buf and time.monotonic() < deadline:   # the shell's prompt
            if select.select([master], [], [], 0.2)[0]:
                buf += os.read(master, 4096)
        os.write(master, b"stty size; tty; exit 3\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
        assert p.wait(timeout=20) == 3
        assert b"24 77" in buf and b"/dev/pts/" in buf
    finally:
        p.kill()
        p.wait()
        os.close(master)


def test_stop_kills_after_the_grace_period(rl, detached):
    detached("stubborn", "busybox", "sleep", "60")  # PID 1 without a handler ignores SIGTERM
    t0 = time.monotonic()
    assert rl("stop", "-t", "1", "stubborn").returncode == 0
    assert time.monotonic() - t0 < 15
    assert "Exited (137)" in _ps(rl)["stubborn"]["Status"]


def test_kill_sends_a_signal(rl, detached):
    detached("killme", "busybox", "sh", "-c", 'trap "exit 42" USR1; while true; do sleep 0.1; done')
    time.sleep(0.5)
    assert rl("kill", "-s", "USR1", "killme").returncode == 0
    assert rl("wait", "killme").stdout.strip() == "42"
    assert rl("kill", "killme").returncode == 125  # not running any more


def test_a_killed_monitor_leaves_no_container_running(rl, detached):
    detached("orphan", "busybox", "sleep", "60")
    record = json.loads((rl.container_dir("orphan") / "config.json").read_text())
    monitor, pid1 = record["config"]["monitor"], record["init_pid"]
    assert record["pid"] == pid1   # the monitor waits for PID 1 itself (no intermediate process stays)
    assert int(open(f"/proc/{pid1}/stat").read().rsplit(")", 1)[1].split()[1]) == monitor
    os.kill(monitor, signal.SIGKILL)
    _until(lambda: not _ps(rl)["orphan"]["Status"].startswith("Up"))
    assert "Exited" in _ps(rl)["orphan"]["Status"]
    def gone(pid: int) -> bool:
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True
    _until(lambda: gone(pid1))   # the container's PID 1 (and so its namespace) is gone


def test_many_containers_at_once(rl):
    def start(i: int) -> subprocess.CompletedProcess:
        return rl("run", "-d", "--network", "none", "busybox", "sleep", "30")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(start, range(12)))
    ids = [r.stdout.strip() for r in results]
    try:
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        names = [r["Names"] for r in json.loads(rl("ps", "--format", "json").stdout) if r["Id"] in
                 {i[:12] for i in ids}]
        assert len(names) == 12 and len(set(names)) == 12
    finally:
        for cid in ids:
            if cid:
                rl("rm", "-f", cid)


def test_rm_f_removes_a_running_container(rl, detached):
    cid = detached("doomed", "busybox", "sleep", "60")
    assert rl("rm", "doomed").returncode == 1  # running: refused without -f
    assert rl("rm", "-f", "doomed").returncode == 0
    assert not (rl.root / "containers" / cid).exists()


def test_data_survives_stop_start_and_restart(rl, detached):
    detached("keeper", "busybox", "sh", "-c",
             'trap "exit 0" TERM; echo run >> /data.txt; while true; do sleep 0.1; done')
    _until(lambda: rl("exec", "keeper", "cat", "/data.txt").stdout == "run\n")
    assert rl("stop", "keeper").returncode == 0
    assert rl("start", "keeper").stdout == "keeper\n"
    _until(lambda: rl("exec", "keeper", "cat", "/data.txt").stdout == "run\nrun\n")
    assert rl("restart", "-t", "1", "keeper").returncode == 0
    _until(lambda: rl("exec", "keeper", "cat", "/data.txt").stdout == "run\nrun\nrun\n")


def test_restart_policy_on_failure(rl, detached):
    detached("flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "echo attempt; exit 3")
    _until(lambda: rl("logs", "flaky").stdout.count("attempt") == 3 and "Exited (3)" in _ps(rl)["flaky"]["Status"])
    time.sleep(0.5)
    assert rl("logs", "flaky").stdout.count("attempt") == 3


def test_restart_always_stops_when_stopped(rl, detached):
    detached("phoenix", "--restart", "always", "busybox", "sh", "-c",
             'echo up; trap "exit 0" TERM; sleep 0.3; exit 1')
    _until(lambda: rl("logs", "phoenix").stdout.count("up") >= 3)
    assert rl("stop", "-t", "2", "phoenix").returncode == 0
    _until(lambda: _ps(rl)["phoenix"]["Status"].startswith("Exited"))
    count = rl("logs", "phoenix").stdout.count("up")
    time.sleep(1)
    assert rl("logs", "phoenix").stdout.count("up") == count


def test_restart_and_rm_conflict(rl):
    proc = rl("run", "--rm", "--restart", "always", "busybox", "true")
    assert proc.returncode == 125 and "conflict" in proc.stderr
    assert rl("run", "--restart", "sometimes", "busybox", "true").returncode == 125


def test_top_rename_prune(rl, detached):
    detached("topme", "busybox", "sh", "-c", "sleep 30 & wait")
    out = rl("top", "topme").stdout.splitlines()
    assert out[0].split() == ["PID", "USER", "COMMAND"] and any("sleep 30" in line for line in out[1:])
    assert rl("rename", "topme", "renamed").returncode == 0
    assert "renamed" in _ps(rl)
    assert rl("run", "--name", "exited-one", "busybox", "true").returncode == 0
    pruned = rl("container", "prune", "-f").stdout
    assert len(pruned.split()) >= 1 and "exited-one" not in _ps(rl)
    assert "renamed" in _ps(rl)  # running: kept
    rl("rm", "-f", "renamed")


def test_cp_both_ways_running_and_stopped(rl, detached, tmp_path):
    detached("cpc", "busybox", "sh", "-c",
             'trap "exit 0" TERM; mkdir -p /data; echo inside > /data/x; ln -s /etc /data/etc-link; '
             'while true; do sleep 0.1; done')
    _until(lambda: rl("exec", "cpc", "cat", "/data/x").stdout == "inside\n")
    out = tmp_path / "out"
    out.mkdir()
    assert rl("cp", "cpc:/data", str(out)).returncode == 0
    assert (out / "data" / "x").read_text() == "inside\n"
    assert (out / "data" / "x").stat().st_uid == os.getuid()
    assert os.readlink(out / "data" / "etc-link") == "/etc"          # a link, not followed
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("hello")
    assert rl("cp", str(src), "cpc:/tmp/").returncode == 0
    listing = rl("exec", "cpc", "sh", "-c", "ls -ln /tmp/in; cat /tmp/in/sub/f").stdout
    assert " 0        0 " in listing and listing.endswith("hello")     # root's inside, as docker cp
    streamed = rl("cp", "cpc:/data/x", "-")
    assert streamed.returncode == 0 and b"inside" in streamed.stdout.encode()
    assert rl("stop", "cpc").returncode == 0
    assert rl("cp", "cpc:/data/x", str(out / "x-after-stop")).returncode == 0
    assert (out / "x-after-stop").read_text() == "inside\n"
    assert rl("cp", str(src / "sub" / "f"), "cpc:/f2").returncode == 0
    assert rl("start", "cpc").returncode == 0
    _until(lambda: rl("exec", "cpc", "cat", "/f2").stdout == "hello")
    missing = rl("cp", "cpc:/nonexistent", str(out))
    assert missing.returncode == 125 and "does not exist" in missing.stderr
    assert rl("cp", str(src), str(out)).returncode == 125



def test_cp_of_a_tar_from_stdin_keeps_modes_and_times(rl, detached):
    """``cp - CONTAINER:DIR`` unpacks the archive as it is.  In single-uid mode an entry owned
    by another id becomes root's, with its mode and time (tarfile skipped both after the
    failed chown)."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"#!/bin/sh\necho tool\n"
        info = tarfile.TarInfo("tool")
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o2755, 0, 42, 1234567890
        tar.addfile(info, io.BytesIO(data))
    detached("cpstdin", "busybox", "sleep", "60")
    assert rl("cp", "-", "cpstdin:/tmp", input=buf.getvalue()).returncode == 0
    out = rl("exec", "cpstdin", "stat", "-c", "%a %u %g %Y", "/tmp/tool").stdout
    assert out == ("2755 0 42 1234567890\n" if RANGE_MODE else "2755 0 0 1234567890\n")


def test_attach_follows_and_forwards_signals(rl, detached):
    detached("attachme", "busybox", "sh", "-c",
             'trap "echo caught; exit 5" INT; while true; do echo beat; sleep 0.2; done')
    p = rl.popen("attach", "attachme", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)                  # forwarded to the container's PID 1
        out, _ = p.communicate(timeout=20)
        assert p.returncode == 5
        assert b"beat" in out and out.rstrip().endswith(b"caught")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_stop_signal_and_ps_filters(rl, detached):
    detached("sigstop", "--stop-signal", "USR1", "busybox", "sh", "-c",
             'trap "exit 9" USR1; while true; do sleep 0.1; done')
    assert rl("run", "--name", "done-one", "busybox", "true").returncode == 0
    try:
        assert rl("ps", "-q", "-f", "status=running", "-f", "name=sigstop").stdout.strip() != ""
        names = {r["Names"] for r in json.loads(rl("ps", "-f", "status=exited", "--format", "json").stdout)}
        assert "done-one" in names and "sigstop" not in names
        assert rl("ps", "-f", "bogus=1").returncode == 125
        assert rl("stop", "sigstop").returncode == 0
        assert rl("wait", "sigstop").stdout.strip() == "9"        # USR1, not TERM, reached it
        assert rl("run", "--rm", "--stop-signal", "NOPE", "busybox", "true").returncode == 125
    finally:
        rl("rm", "done-one")


def test_a_detached_web_server_with_a_volume_and_a_published_port(rl):
    """The whole story: run -d with a volume and -p, logs, exec, stop, start, data kept."""
    import shutil
    import socket
    import urllib.request
    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = ('[ -f /site/index.html ] || echo "first page" > /site/index.html; echo serving; '
           'trap "exit 0" TERM; httpd -f -v -p 8080 -h /site & wait')
    assert rl("run", "-d", "--name", "site", "-v", "sitedata:/site", "-p", f"127.0.0.1:{port}:8080",
              "busybox", "sh", "-c", web).returncode == 0

    def page() -> bytes:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    return r.read()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    try:
        assert page() == b"first page\n"
        assert "serving" in rl("logs", "site").stdout
        assert rl("exec", "site", "sh", "-c", "echo changed > /site/index.html").returncode == 0
        assert rl("stop", "site").returncode == 0 and rl("start", "site").returncode == 0
        assert page() == b"changed\n"                               # the volume kept it
        assert rl("restart", "site").returncode == 0
        assert page() == b"changed\n"
    finally:
        rl("rm", "-f", "site")
    assert rl("volume", "ls", "-q").stdout.split().count("sitedata") == 1   # survives the container
    rl("volume", "rm", "sitedata")


def test_a_dead_root_filesystem_daemon_is_reported(rl, detached):
    detached("fragile", "--storage-driver", "fuse-overlay", "busybox", "sleep", "60")
    record = json.loads((rl.container_dir("fragile") / "config.json").read_text())
    server = record["config"]["rootfs_server"]
    assert server > 0
    # Only once sleep sleeps: a page of busybox it faults in after the daemon died is SIGBUS,
    # and the container would end (run -d returns at exec, before the program has started).
    _until(lambda: _asleep(record["init_pid"]))
    os.kill(server, signal.SIGKILL)                   # the daemon serving its files dies
    seen = []

    def lost() -> bool:
        seen.append(_ps(rl)["fragile"]["Status"])
        return "root filesystem lost" in seen[-1]
    _until(lost, what=lambda: f"status {seen[-1]!r}; PID 1 {_state(record['init_pid'])}; record "
                              f"{(rl.container_dir('fragile') / 'config.json').read_text()}")
    proc = rl("exec", "fragile", "true")
    assert proc.returncode == 125 and "root filesystem daemon" in proc.stderr and "restart" in proc.stderr
    assert rl("restart", "-t", "1", "fragile").returncode == 0    # and restarting brings it back
    _until(lambda: rl("exec", "fragile", "true").returncode == 0)


def _wchan(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/wchan").read()
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _asleep(pid: int) -> bool:
    """Whether ``pid`` sleeps in nanosleep.  Its wchan tells, as the container's processes are
    ours to trace (our uid, or sub-ids in a user namespace we own); "0" is a task that runs, and a
    FUSE request (a page of busybox faulted in) waits in state S too, so only the name will do."""
    return "nanosleep" in _wchan(pid)


def _ppid(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_what_stays_per_container_is_a_monitor_and_a_daemon_from_the_fork_server(rl, detached, run_dir):
    """No intermediate process stays: PID 1's parent is the monitor; the monitor and the
    fuse-overlay daemon are children of the per-user fork server (sharing its memory), and the
    daemon holds no reference to the mount, so it ends when the container does."""
    detached("lean", "--storage-driver", "fuse-overlay", "busybox", "sleep", "60")
    record = json.loads((rl.container_dir("lean") / "config.json").read_text())
    monitor, pid1, daemon = record["config"]["monitor"], record["init_pid"], record["config"]["rootfs_server"]
    server = _ppid(monitor)
    assert "rootless.container.forkserver" in open(f"/proc/{server}/cmdline").read()
    assert record["pid"] == pid1 and _ppid(pid1) == monitor
    assert _ppid(monitor) == server and _ppid(daemon) == server
    rootfs = str(rl.container_dir("lean") / "rootfs")
    assert rootfs not in open(f"/proc/{daemon}/mountinfo").read()   # it sees no mount of its own
    assert rootfs in open(f"/proc/{pid1}/mountinfo").read() or "fuse-overlay" in open(
        f"/proc/{pid1}/mountinfo").read()
    assert rl("stop", "-t", "1", "lean").returncode == 0
    _until(lambda: _gone(daemon))      # the mount ended with the container's last process


def test_an_idle_container_is_waited_for_by_a_lean_monitor(rl, detached):
    """No network helper, no console: the process that planned and started the container has
    ended; PID 1's parent, the record's owner and its monitor is the fork server's child that
    forked it (detached.LeanMonitor), which holds little of its own."""
    proc = rl("run", "-d", "--network", "none", "--name", "idle-lean", "busybox", "sleep", "60")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((rl.container_dir("idle-lean") / "config.json").read_text())
    monitor, pid1 = record["config"]["monitor"], record["init_pid"]
    assert record["owner_pid"] == monitor and _ppid(pid1) == monitor
    assert "rootless.container.forkserver" in open(f"/proc/{_ppid(monitor)}/cmdline").read()
    _until(lambda: open(f"/proc/{monitor}/task/{monitor}/children").read().split() == [str(pid1)])
    assert rl("exec", "idle-lean", "true").returncode == 0
    assert rl("stop", "-t", "1", "idle-lean").returncode == 0
    assert _ps(rl)["idle-lean"]["Status"].startswith("Exited (137)")
    _until(lambda: _gone(monitor))
    assert rl("rm", "idle-lean").returncode == 0


def test_a_container_with_network_helpers_is_waited_for_by_a_lean_monitor(rl):
    """Network helpers (slirp4netns or pasta, a port forwarder) follow the death of the process
    that started them: that process stays, but as 'sleep infinity' (~0.1 MiB, not the megabytes
    of a Python monitor), a child of the lean monitor, which ends it — and with it the helpers —
    once the container has ended."""
    from .registry_server import free_port
    port = free_port()
    proc = rl("run", "-d", "--name", "net-lean", "-p", f"127.0.0.1:{port}:80", "busybox",
              "httpd", "-f", "-p", "80", "-h", "/etc")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((rl.container_dir("net-lean") / "config.json").read_text())
    monitor, pid1 = record["config"]["monitor"], record["init_pid"]
    try:
        assert record["owner_pid"] == monitor and _ppid(pid1) == monitor
        kids = [int(p) for p in open(f"/proc/{monitor}/task/{monitor}/children").read().split()]
        holder = [p for p in kids if p != pid1]
        assert len(holder) == 1, kids
        argv = lambda: open(f"/proc/{holder[0]}/cmdline").read().split("\0")
        _until(lambda: argv()[0].endswith("sleep") and argv()[1] == "infinity", what=argv)   # once handed over
        helpers = [int(p) for p in open(f"/proc/{holder[0]}/task/{holder[0]}/children").read().split()]
        assert helpers, "no network helper under the sleeping starter"
        _until(lambda: "root:x:0:0" in _http_get(port, "/passwd"))      # through the published port
        assert rl("stop", "-t", "1", "net-lean").returncode == 0
        _until(lambda: all(_gone(p) for p in [holder[0], *helpers]))
        assert _ps(rl)["net-lean"]["Status"].startswith("Exited (137)")
        assert rl("start", "net-lean").returncode == 0                   # and again, handed over again
        _until(lambda: "root:x:0:0" in _http_get(port, "/passwd"))
    finally:
        assert rl("rm", "-f", "net-lean").returncode == 0
    _until(lambda: _gone(monitor))


def _http_get(port: int, path: str) -> str:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            return b"".join(iter(lambda: s.recv(65536), b"")).decode(errors="replace")
    except OSError:
        return ""


def test_a_lean_monitor_records_the_end_when_the_container_cannot_be_planned_again(rl, tmp_path):
    """The starter that records a lean monitor's round plans the container again, which fails
    once its bind source is gone: the end is recorded all the same (it was 137, "its process
    is gone")."""
    source = tmp_path / "source"
    source.mkdir()
    proc = rl("run", "-d", "--network", "none", "--name", "unplannable", "-v", f"{source}:/x", "busybox",
              "sh", "-c", "sleep 1; exit 4")
    assert proc.returncode == 0, proc.stderr
    source.rmdir()
    assert rl("wait", "unplannable").stdout.strip() == "4"
    assert _ps(rl)["unplannable"]["Status"].startswith("Exited (4)")
    assert rl("rm", "unplannable").returncode == 0


def test_a_container_with_a_network_helper_keeps_one_monitor(rl):
    """slirp4netns ends with the process that started it: that process stays the monitor."""
    if not shutil.which("slirp4netns"):
        pytest.skip("slirp4netns is not installed")
    proc = rl("run", "-d", "--network", "slirp4netns", "--name", "helped", "busybox", "sleep", "60")
    try:
        assert proc.returncode == 0, proc.stderr
        record = json.loads((rl.container_dir("helped") / "config.json").read_text())
        monitor, pid1 = record["config"]["monitor"], record["init_pid"]
        assert record["owner_pid"] == monitor and _ppid(pid1) == monitor
        assert "rootless.container.forkserver" in open(f"/proc/{_ppid(monitor)}/cmdline").read()
        assert rl("exec", "helped", "true").returncode == 0
    finally:
        rl("rm", "-f", "helped")


def test_without_the_fork_server_the_cli_forks_the_monitor(rl):
    env = {"ROOTLESS_FORKSERVER": "0"}
    proc = rl("run", "-d", "--network", "none", "--name", "own-monitor", "busybox", "sleep", "60", env=env)
    try:
        assert proc.returncode == 0, proc.stderr
        assert _ps(rl)["own-monitor"]["Status"].startswith("Up ")
        assert rl("exec", "own-monitor", "echo", "hi", env=env).stdout == "hi\n"
        bad = rl("run", "-d", "--network", "none", "busybox", "no-such-command", env=env)
        assert bad.returncode == 127 and "no-such-command" in bad.stderr
    finally:
        rl("rm", "-f", "own-monitor", env=env)
        rl("container", "prune", "-f")


def test_a_monitor_from_the_fork_server_reports_errors_and_gets_the_callers_environment(rl, tmp_path):
    bad = rl("run", "-d", "--network", "none", "busybox", "no-such-command")
    assert bad.returncode == 127 and "no-such-command" in bad.stderr
    (tmp_path / "vars").write_text("FROM_FILE=from the caller's cwd\n")
    # a relative --env-file and a variable taken from the environment resolve as in the caller
    proc = subprocess.run([*ROOTLESS, "run", "-d",
                           "--network", "none", "--name", "envcheck", "--env-file", "vars", "-e", "FROM_CALLER",
                           "busybox", "sh", "-c", 'echo "$FROM_FILE"; echo "$FROM_CALLER"; sleep 60'],
                          cwd=tmp_path, env={**rl.env, "FROM_CALLER": "yes"}, capture_output=True, text=True,
                          timeout=60)
    try:
        assert proc.returncode == 0, proc.stderr
        _until(lambda: rl("logs", "envcheck").stdout == "from the caller's cwd\nyes\n")
    finally:
        rl("rm", "-f", "envcheck")
        rl("container", "prune", "-f")


_read_until = read_until


def test_run_dit_attach_types_into_the_shell_and_ctrl_p_ctrl_q_detaches(rl, detached):
    detached("console", "-it", "busybox", "sh")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 31, 97, 0, 0))
    p = rl.popen("attach", "console", stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        time.sleep(0.5)
        os.write(master, b"echo sum-$((40+2)); stty size\r")
        out = _read_until(master, b"31 97")
        assert b"sum-42" in out and b"31 97" in out, out     # our input, and our window size
        os.write(master, b"\x10\x11")                          # Ctrl-P Ctrl-Q
        assert p.wait(timeout=20) == 0
    finally:
        p.kill()
        p.wait()
        os.close(master)
    assert _ps(rl)["console"]["Status"].startswith("Up ")                # detaching left it running
    assert "sum-42" in rl("logs", "console").stdout
    assert rl("exec", "console", "true").returncode == 0


def test_run_di_attach_sends_input_and_returns_the_exit_status(rl, detached):
    detached("reader", "-i", "busybox", "sh", "-c", 'read line; echo "got $line"; echo to-stderr >&2; exit 4')
    proc = rl("attach", "reader", input="a line\n", timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (4, "got a line\n", "to-stderr\n")
    assert "Exited (4)" in _ps(rl)["reader"]["Status"]


def test_start_ai_sends_input_again(rl, detached):
    detached("again", "-i", "busybox", "sh", "-c", 'read line; echo "got $line"')
    assert rl("attach", "again", input="first\n", timeout=30).stdout == "got first\n"
    proc = rl("start", "-ai", "again", input="second\n", timeout=30)
    assert (proc.returncode, proc.stdout) == (0, "got second\n"), proc.stderr
    assert rl("start", "-i", "again").returncode == 125          # -i needs -a
    detached("plain", "busybox", "true")
    _until(lambda: "Exited" in _ps(rl)["plain"]["Status"])
    refused = rl("start", "-ai", "plain")
    assert refused.returncode == 125 and "not created with -i or -t" in refused.stderr


def test_monitor_is_named_in_ps(rl):
    """The monitor's process name used to be read from freed memory (often empty)."""
    import json as _json
    rl("run", "-d", "--name", "named-monitor", "busybox", "sleep", "30", check=True)
    try:
        cfg = _json.loads((rl.container_dir("named-monitor") / "config.json").read_text())
        with open(f"/proc/{cfg['config']['monitor']}/comm") as f:
            assert f.read().strip() == "rootless-mon"
    finally:
        rl("rm", "-f", "named-monitor")


def test_create_then_start_a_behaves_like_run(rl, tmp_path):
    """'create' records a container (no process yet); 'start -a' runs it as 'run' would."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("from the host\n")
    script = 'cat /data/f; echo "$GREETING"; echo to-stderr >&2; exit 3'
    args = ["--network", "none", "-e", "GREETING=hello", "-v", "./data:/data", "busybox", "sh", "-c", script]
    ran = subprocess.run([*ROOTLESS, "run", "--rm", *args], cwd=tmp_path, env=rl.env, capture_output=True,
                         text=True, timeout=60)
    # relative -v resolved at create time, against the caller's directory (as run does)
    created = subprocess.run([*ROOTLESS, "create", "--name", "made", *args], cwd=tmp_path, env=rl.env,
                             capture_output=True, text=True, timeout=60)
    try:
        assert created.returncode == 0, created.stderr
        cid = created.stdout.strip()
        assert len(cid) == 64 and "Traceback" not in created.stderr
        assert _ps(rl)["made"]["Status"] == "Created"
        assert rl("inspect", "--format", "{{.State.Status}}", "made").stdout.strip() == "created"
        assert rl("logs", "made").stdout == ""                   # nothing ran yet: empty, as Docker
        assert rl("wait", "made", timeout=10).stdout == "0\n"    # not running: Docker answers at once
        exported = rl("export", "-o", str(tmp_path / "made.tar"), "made")   # its image's files, as Docker
        assert exported.returncode == 0 and (tmp_path / "made.tar").stat().st_size > 100000, exported.stderr
        started = rl("start", "-a", "made", timeout=60)
        assert (started.returncode, started.stdout) == (ran.returncode, ran.stdout) == (3, "from the host\nhello\n")
        assert "to-stderr" in started.stderr
        assert "Exited (3)" in _ps(rl)["made"]["Status"]
        again = rl("start", "-a", "made", timeout=60)           # and again, as any stopped container
        assert (again.returncode, again.stdout) == (3, "from the host\nhello\n")
    finally:
        rl("rm", "-f", "made")


def test_create_checks_everything_before_recording(rl):
    before = set(_ps(rl))
    for args, why in ((["no-such-image"], "no-such-image"), (["--restart", "always", "--rm", "busybox"], "conflict"),
                      (["-w", "relative", "busybox", "true"], "absolute"), (["--memory", "lots", "busybox"], "lots")):
        proc = rl("create", *args)
        assert proc.returncode == 125 and why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert set(_ps(rl)) == before
    assert rl("create", "--name", "once", "busybox", "true").returncode == 0
    try:
        taken = rl("create", "--name", "once", "busybox", "true")
        assert taken.returncode == 125 and "already in use" in taken.stderr
        assert rl("rm", "once").returncode == 0              # a created container is not running
    finally:
        rl("rm", "-f", "once")


def test_create_i_then_start_ai_and_create_rm(rl):
    assert rl("create", "-i", "--network", "none", "--name", "asks", "busybox", "sh", "-c",
              'read line; echo "got $line"').returncode == 0
    try:
        proc = rl("start", "-ai", "asks", input="typed\n", timeout=30)
        assert (proc.returncode, proc.stdout) == (0, "got typed\n"), proc.stderr
    finally:
        rl("rm", "-f", "asks")
    assert rl("create", "--rm", "--network", "none", "--name", "brief", "busybox", "echo", "bye").returncode == 0
    assert rl("start", "-a", "brief", timeout=30).stdout == "bye\n"
    _until(lambda: "brief" not in _ps(rl))                     # --rm: gone once it ended


def test_a_wait_that_read_the_record_before_its_monitor_recorded_the_end_gets_the_code(rl):
    """A lean monitor ends milliseconds after its starter records the end: a waiter holding a
    copy read before that write, which then finds the monitor gone, must read the record again
    rather than answer 137 (a CI run saw 137 from one of 20 containers started at once)."""
    from rootless.container.lifecycle import Waiter
    from rootless.container.records import Containers
    from rootless.image.store import Store
    assert rl("run", "--name", "ended3", "busybox", "sh", "-c", "exit 3").returncode == 3
    gone = subprocess.Popen(["true"])
    gone.wait()                                   # a pid that has ended: the monitor, and PID 1
    records = Containers(Store(str(rl.root)))
    stale = records.find("ended3")
    stale.state, stale.pid, stale.exit_code = "running", gone.pid, None
    stale.config["monitor"] = gone.pid
    waiter = Waiter(Store(str(rl.root)), "ended3")
    waiter.records.all = lambda: [stale]          # the copy read just before the end was written
    assert waiter.poll() == 3


def test_a_rm_container_whose_run_was_killed_is_removed_by_the_next_run(rl):
    """SIGKILL of 'run --rm' (or a Slurm job cancelled past its grace time) ends the container
    with its owner, which never removes it: the next run does, as dockerd removes the
    auto-remove containers it finds stopped.  Not a 'create --rm' waiting for its start."""
    assert rl("create", "--rm", "--name", "waits-for-start", "busybox", "true").returncode == 0
    proc = rl.popen("run", "--rm", "--network", "none", "--name", "orphaned", "busybox", "sleep", "60",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: _ps(rl).get("orphaned", {}).get("Status", "").startswith("Up"))
        proc.kill()
        proc.wait()
        _until(lambda: not _ps(rl)["orphaned"]["Status"].startswith("Up"))
        # As recorded by another node on a shared store (or before a reboot): its pids mean
        # nothing here, and it may well run there: it stays.
        config = rl.container_dir("orphaned") / "config.json"
        record = json.loads(config.read_text())
        ours = record["config"]["boot_id"]
        record["config"]["boot_id"] = "another-machine"
        config.write_text(json.dumps(record))
        assert rl("run", "--rm", "--network", "none", "busybox", "true").returncode == 0
        assert "orphaned" in _ps(rl)
        record["config"]["boot_id"] = ours
        config.write_text(json.dumps(record))
        assert rl("run", "--rm", "--network", "none", "busybox", "true").returncode == 0
        listed = _ps(rl)
        assert "orphaned" not in listed and "waits-for-start" in listed
    finally:
        proc.kill()
        rl("rm", "-f", "orphaned", "waits-for-start")


def test_a_container_of_another_machine_sharing_the_store_is_left_alone(rl):
    """A store on a filesystem shared by several nodes (single-uid mode on NFS 4.2) holds the
    containers other nodes run: their pids mean nothing here.  Judged by them, such a container
    was "Exited (unknown)" here, and 'container prune' or 'rm' removed its files while it ran.
    The record below is as another node's 'run -d' leaves it (this machine has no second node)."""
    assert rl("create", "--name", "far", "busybox", "sleep", "60").returncode == 0
    path = rl.container_dir("far") / "config.json"
    gone = subprocess.Popen(["true"])
    gone.wait()                                       # a pid that runs nothing here
    rec = json.loads(path.read_text())
    rec.update(state="running", pid=gone.pid, init_pid=gone.pid, init_start=12345, owner_pid=gone.pid,
               owner_start=12340)
    rec["config"].update(node="node-b.cluster", boot_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                         started=time.time(), monitor=gone.pid)
    path.write_text(json.dumps(rec))
    try:
        far = _ps(rl)["far"]
        assert far["State"] == "running" and far["Status"].endswith("(on node-b.cluster)"), far
        for args in (["rm", "far"], ["rm", "-f", "far"], ["stop", "far"], ["kill", "far"], ["start", "far"],
                     ["exec", "far", "true"], ["restart", "far"], ["wait", "far"]):
            proc = rl(*args, timeout=30)
            assert proc.returncode != 0 and "runs on node-b.cluster" in proc.stderr, (args, proc.stderr)
            assert "Traceback" not in proc.stderr
        assert "there" in rl("rm", "-f", "far").stderr
        assert rl("container", "prune", "-f").returncode == 0
        assert "far" in _ps(rl) and path.exists()
    finally:
        rec["config"].pop("node")                     # this machine's again: removable here
        path.write_text(json.dumps(rec))
        assert rl("rm", "-f", "far").returncode == 0
