"""The command line's thin client: a container command handed to the per-user fork server.

``rootless run --rm IMG true`` spent more time importing the engine and click (about 90 ms)
than starting the container.  The fork server (container/forkserver.py) has them imported
already; for the commands in ``HANDED`` this process only connects to it and sends what it
is — its arguments, environment, working directory, umask, soft rlimits, groups, namespaces
and cgroups — with its stdin, stdout and stderr and one end of a socket pair.  The server's
child (``served.serve_command``) takes all of that on and runs the very same command line
code; this process forwards the signals it gets to that child and ends with its exit status.

The child is this process's stand-in, and behaves as one:

* its exit status is ours; one killed by a signal we forwarded ends us with that signal; one
  killed otherwise (``rm -f`` kills a foreground container's owner when it does not end) ends
  us as killed (SIGKILL);
* if we die (even by SIGKILL), it sees the socket pair close and kills itself at once, as
  the engine in this process would have died with us (and the container with it);
* a command it cannot stand in for — ``-t`` (the terminal's job control and window size are
  ours), ``--preserve-fds``, other namespaces, groups or security context (capabilities,
  no_new_privs, seccomp, LSM label), a cgroup, resource limit, CPU affinity, nice value or
  OOM score it cannot take on — it declines before doing anything, and the command runs here as before.

No server answering: the command runs here, and ``run``/``create``/``exec``/``start`` start
one in the background for the next command.  ``ROOTLESS_HANDOVER=0`` runs every command
here; ``ROOTLESS_FORKSERVER=0`` disables the server altogether.
Imports here are the standard library's cheapest and ``paths``/``services`` only.
"""

from __future__ import annotations

import marshal      # not json: it imports re, 5 ms of a 25 ms command (fuse_overlay/server.py reads both)
import os
import _signal as signal  # not signal.py: it imports enum (1.3 ms); the same functions and numbers
import sys

import _socket      # not socket.py: it imports selectors and math, 5 ms of a 30 ms command

HANDED = frozenset({"run", "create", "start", "stop", "restart", "kill", "rm", "exec", "ps", "logs", "inspect",
                    "wait", "pause", "unpause", "port", "top"})
STARTS_SERVER = frozenset({"run", "create", "start", "exec"})
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")
# Lines of /proc/self/status that must be the same in the child (it cannot take them on)
SECURITY = ("NoNewPrivs:", "Seccomp:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:")


def security_context() -> list[str]:
    """What the kernel enforces on this process beyond its ids: no_new_privs, a seccomp
    filter, capabilities, an LSM label.  A child of the server with another one would give
    the container what the caller has not (or take away what it has)."""
    with open("/proc/self/status") as f:
        lines = [line.strip() for line in f if line.startswith(SECURITY)]
    try:
        with open("/proc/self/attr/current") as f:
            lines.append(f.read().strip("\0\n "))
    except OSError:
        pass
    return lines


def handed_over(argv: list[str]) -> int | None:
    """Run ``argv`` in a child of the fork server: its exit status; None: run it here."""
    if not argv or argv[0] not in HANDED or "0" in (os.environ.get("ROOTLESS_FORKSERVER"),
                                                     os.environ.get("ROOTLESS_HANDOVER")):
        return None
    try:
        from .. import paths, slurm
        from ..container import forkserver, services
        if slurm.current() is not None:
            return None         # a job step's commands stay in it (services.ensure, docs/hpc.md)
        run_dir = paths.runtime_dir()
        path = services.socket_path(run_dir)
    except Exception:  # noqa: BLE001 - the command run here words the problem
        return None
    import array
    try:
        request = _request(argv)
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return None
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        if argv[0] in STARTS_SERVER:
            try:
                services.start_in_background(run_dir)
            except Exception:  # noqa: BLE001 - only a later command's speed is at stake
                pass
        return None
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        try:
            fds = array.array("i", [0, 1, 2, theirs.fileno()])
            conn.sendmsg([marshal.dumps(request)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            conn.settimeout(forkserver.START_TIMEOUT)
            reply = marshal.loads(conn.recv(65536) or marshal.dumps({}))
        finally:
            conn.close()
            theirs.close()
        pid = int(reply["pid"])
    except (OSError, ValueError, KeyError, EOFError, TypeError):
        ours.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        return None
    return _follow(ours, pid)


def _request(argv: list[str]) -> dict:
    from ..container.forkserver import caller_state

    def stdio(stream) -> list | None:
        if stream is None:
            return None
        return [stream.encoding, stream.errors, stream.line_buffering, getattr(stream, "write_through", False)]
    with open("/proc/self/cgroup") as f:
        cgroups = f.read()
    try:
        with open("/proc/self/oom_score_adj") as f:
            oom = int(f.read())
    except (OSError, ValueError):
        oom = None
    return {**caller_state(), "entry": "cli", "argv": argv, "groups": os.getgroups(), "cgroups": cgroups,
            "ns": {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in NAMESPACES},
            "security": security_context(), "cpus": sorted(os.sched_getaffinity(0)),
            "nice": os.getpriority(os.PRIO_PROCESS, 0), "oom_score_adj": oom, "limits": _limits(),
            "stdio": [stdio(sys.stdin), stdio(sys.stdout), stdio(sys.stderr)]}


def _limits() -> dict[str, list[int]]:
    """Every resource limit of ours, soft and hard (ulimit -v in a batch job, say)."""
    import resource
    out = {}
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            try:
                out[name] = list(resource.getrlimit(getattr(resource, name)))
            except (OSError, ValueError):
                pass
    return out


def _follow(sock, pid: int) -> int | None:
    """Forward our signals to ``pid`` until it reports; its exit status (None: run it here)."""
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    old = {s: signal.signal(s, forward) for s in FORWARDED}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    try:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            msg = marshal.loads(data)
            if "local" in msg:
                for s, h in old.items():
                    signal.signal(s, h)
                return None
            if "exit" in msg:
                return int(msg["exit"])
    finally:
        sock.close()
    # It ended without a word: killed.  By a signal of ours, so are we; else as by SIGKILL.
    signum = forwarded[-1] if forwarded else signal.SIGKILL
    sys.stdout.flush()
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signum,))
    return 128 + signum
