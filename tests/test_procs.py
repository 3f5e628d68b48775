"""rootless/container/procs.py: killing a process tree from inside it."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

from rootless.container import procs

pytestmark = pytest.mark.both_modes


def test_kill_tree_from_a_descendant_never_stops_the_caller():
    """A monitor's child that records a container's end and removes it kills the owner's tree
    (``records.remove``): it must not SIGSTOP itself, found among the owner's descendants (it
    then stayed stopped for ever: 20 'docker run --rm' at once hung)."""
    r, w = os.pipe()
    owner = os.fork()
    if owner == 0:                                    # the owner: forks the remover, then waits
        os.close(r)
        remover = os.fork()
        if remover == 0:
            me = os.getppid()
            is_ancestor = procs.is_ancestor(me, procs.start_time(me))
            procs.kill_tree(me, procs.start_time(me), timeout=5)
            os.write(w, b"done %d %d\n" % (os.getpid(), is_ancestor))
            os._exit(0)
        os.write(w, b"remover %d\n" % remover)
        while True:
            time.sleep(1)
    os.close(w)
    got = b""
    deadline = time.monotonic() + 20
    try:
        while b"done" not in got and time.monotonic() < deadline:
            if select.select([r], [], [], 0.5)[0]:
                chunk = os.read(r, 100)
                if not chunk:
                    break
                got += chunk
        assert b"done" in got, f"the remover stopped itself: {got!r}"
        assert got.split(b"done")[1].split()[1] == b"1"        # the owner is its ancestor
        assert os.waitpid(owner, 0)[1] != 0                    # the owner was killed
    finally:
        os.close(r)
        _kill_all([int(line.split()[1]) for line in got.splitlines()] + [owner], reap=owner)


def test_is_ancestor():
    assert procs.is_ancestor(os.getppid())
    assert not procs.is_ancestor(os.getpid())
    assert not procs.is_ancestor(os.getppid(), start=1)      # another process with that pid


def test_a_fork_server_whose_socket_was_replaced_ends(tmp_path):
    """Two commands starting the fork server at once: the second binds the socket path anew,
    and the first, which no client can reach any more, ends instead of idling on (it was left
    running for its whole idle time: a process the tests had not stopped)."""
    import subprocess
    import sys
    path = str(tmp_path / "fs.sock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "rootless.container.forkserver", path, "--idle", "600"],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def bound_by(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if int(open(path + ".pid").read()) == proc.pid:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError("the server did not listen")

    first = start()
    second = None
    try:
        bound_by(first)
        second = start()
        bound_by(second)
        first.wait(timeout=15)                       # ends by itself, within a second or two
        assert second.poll() is None                 # the one clients reach serves on
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


def test_kill_tree_kills_descendants_in_other_process_groups():
    """Descendants are found by their parent, not their process group: a container's PID 1 and
    any daemon it starts call setsid (the tree was searched by process group, and missed them)."""
    r, w = os.pipe()
    root = os.fork()
    if root == 0:                                     # os.setpgid(0, 0): a group of its own
        os.setpgid(0, 0)
        os.close(r)
        child = os.fork()
        if child == 0:
            os.setsid()                               # another session and group
            grandchild = os.fork()
            if grandchild == 0:
                os.setpgid(0, 0)
                while True:
                    time.sleep(1)
            os.write(w, b"%d %d\n" % (os.getpid(), grandchild))
            while True:
                time.sleep(1)
        while True:
            time.sleep(1)
    os.close(w)
    kids: list[int] = []
    try:
        with os.fdopen(r, "rb") as f:
            kids = [int(p) for p in f.readline().split()]
        assert procs.kill_tree(root, procs.start_time(root), timeout=5)
        os.waitpid(root, 0)
        time.sleep(0.2)
        alive = [p for p in kids if procs._stat(p) and procs._stat(p)[0] not in ("Z", "X")]
        assert not alive, f"descendants in other groups survived: {alive}"
    finally:
        _kill_all([*kids, root], reap=root)


def _kill_all(pids: list[int], reap: int) -> None:
    """SIGKILL what a test forked (by pid), and reap its own child ``reap``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(reap, 0)
    except ChildProcessError:
        pass
