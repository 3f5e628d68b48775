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
        for line in got.splitlines():
            pid = int(line.split()[1])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.kill(owner, signal.SIGKILL)
            os.waitpid(owner, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_is_ancestor():
    assert procs.is_ancestor(os.getppid())
    assert not procs.is_ancestor(os.getpid())
    assert not procs.is_ancestor(os.getppid(), start=1)      # another process with that pid
