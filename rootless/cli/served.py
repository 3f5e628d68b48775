"""The fork server's side of cli/client.py: a child of the server runs a command for the CLI.

``serve_command`` (the server's ``cli`` entry, container/services.py) runs in a child forked
by the server, which has this module, click and the engine imported.  It first checks that
it can stand in for the CLI (same namespaces, groups and security context; the CLI's cgroups,
resource limits, CPU affinity, nice value and OOM score adjustment taken on; no ``-t`` nor ``--preserve-fds``);
if not it says ``local`` and the CLI runs the command itself.  Else
it takes on the CLI's stdin, stdout and stderr, environment, working directory, umask,
rlimits and standard streams' settings, runs ``commands.main`` as the CLI would, flushes,
runs what runs at exit, and reports the exit status.  A thread kills it (SIGKILL) if the CLI
goes away first: the engine dies with the CLI, as when it ran in the CLI's process.
"""

from __future__ import annotations

import json
import marshal
import os
import signal
import socket
import sys


def serve_command(request: dict, fds: list[int]) -> int:
    stdin, stdout, stderr, report = fds
    sock = socket.socket(fileno=report)
    sock.set_inheritable(False)
    try:
        why = _why_not(request)
    except Exception as e:  # noqa: BLE001 - declining is always safe
        why = f"{type(e).__name__}: {e}"
    if why:
        _send(sock, {"local": why})
        return 0
    for target, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, target)
        os.close(fd)
    from ..container.forkserver import take_caller_state
    take_caller_state(request)
    done = _watch(sock)
    from ..container import records
    records.deferred_removals = later = []
    code = _run(request)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):              # the caller may wait for the end of our output: here it is
        os.dup2(null, fd)
    os.close(null)
    done.append(True)
    _send(sock, {"exit": code})
    sock.close()
    for work in later:                # the CLI has returned: what it need not wait for
        try:
            work()
        except Exception:  # noqa: BLE001 - a tree left in tmp/ goes with the next clean_stale
            pass
    return code


def _why_not(request: dict) -> str:
    """Why this child cannot run the command for the CLI ("" if it can)."""
    from .client import NAMESPACES
    for kind in NAMESPACES:
        if os.readlink(f"/proc/self/ns/{kind}") != request["ns"][kind]:
            return f"another {kind} namespace"
    if sorted(os.getgroups()) != sorted(request["groups"]):
        return "other groups"
    from .client import security_context
    if security_context() != request["security"]:
        return "another security context"
    argv = request["argv"]
    from .commands import cli
    command = cli.commands.get(argv[0])
    if command is None:
        return "not a command"
    try:
        params = command.make_context(argv[0], list(argv[1:]), resilient_parsing=True).params
    except Exception:  # noqa: BLE001 - a wrong flag: the command itself words it
        params = {}
    if params.get("tty") or params.get("preserve_fds") or (argv[0] == "start" and params.get("attach")):
        return "a terminal or descriptors of the caller's own"
    try:
        os.chdir(request["cwd"])
    except OSError:
        return "no working directory"
    return _join_cgroups(request["cgroups"]) or _take_scheduling(request)


def _take_scheduling(request: dict) -> str:
    """The CLI's resource limits (soft and hard), CPU affinity (a Slurm task's binding,
    taskset), nice value and OOM score adjustment, which the container's processes inherit."""
    import resource
    try:
        for name, (soft, hard) in request["limits"].items():
            limit = getattr(resource, name, None)
            if limit is not None and resource.getrlimit(limit) != (soft, hard):
                resource.setrlimit(limit, (soft, hard))
        if set(request["cpus"]) != os.sched_getaffinity(0):
            os.sched_setaffinity(0, request["cpus"])
        if request["nice"] != os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
        if request["oom_score_adj"] is not None:
            with open("/proc/self/oom_score_adj") as f:
                mine = int(f.read())
            if mine != request["oom_score_adj"]:
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write(str(request["oom_score_adj"]))
    except (OSError, ValueError) as e:
        return f"cannot take on the caller's scheduling: {e}"
    return ""


def _join_cgroups(theirs: str) -> str:
    """Move into the CLI's cgroups (containers' cgroups are placed next to the engine's)."""
    with open("/proc/self/cgroup") as f:
        mine = set(f.read().splitlines())
    moves = [line for line in theirs.splitlines() if line and line not in mine]
    if not moves:
        return ""
    from ..cgroups.mounts import cgroup_mounts, mount_for
    mounts = cgroup_mounts()
    for line in moves:
        _id, ctrls, path = line.split(":", 2)
        mount = mount_for(mounts, frozenset(c for c in ctrls.split(",") if c))
        directory = mount.dir_for(path) if mount is not None else None
        if directory is None:
            return f"cgroup {line} is not mounted here"
        try:
            with open(os.path.join(directory, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as e:
            return f"cannot join cgroup {directory}: {e.strerror}"
    return ""


def _watch(sock: socket.socket) -> list:
    """Kill this process when the CLI's end of ``sock`` closes before we are done."""
    from ..sandbox.spawn import quiet_thread
    done: list = []

    def watch() -> None:
        try:
            sock.recv(1)
        except OSError:
            pass
        if not done:
            os.kill(os.getpid(), signal.SIGKILL)
    quiet_thread(watch, name="cli-watch")
    return done


def _run(request: dict) -> int:
    import atexit
    import threading
    from ..sandbox import libc
    libc.set_process_name("rootless")
    _streams(request["stdio"])
    sys.argv = ["rootless", *request["argv"]]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    atexit._clear()                   # the server's own: not ours to run
    try:
        from .commands import main
        code = main(request["argv"])
    except SystemExit as e:
        code = e.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
    code = 0 if code is None else int(code)
    try:
        threading._shutdown()         # non-daemon threads, as at an interpreter's exit
    except Exception:  # noqa: BLE001
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def _streams(spec: list) -> None:
    """sys.stdin/stdout/stderr on fds 0-2 with the CLI's encoding and buffering."""
    import io
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        s = spec[fd]
        if s is None:
            setattr(sys, name, None)
            continue
        encoding, errors, line_buffering, write_through = s
        raw = io.FileIO(fd, "rb" if fd == 0 else "wb", closefd=False)
        buffered = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        setattr(sys, name, io.TextIOWrapper(buffered, encoding=encoding, errors=errors,
                                            line_buffering=line_buffering, write_through=write_through))


def _send(sock: socket.socket, msg: dict) -> None:
    try:
        sock.send(marshal.dumps(msg))     # cli/client.py reads it without json
    except OSError:
        pass
